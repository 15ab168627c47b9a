"""A world of one rank (:class:`SingleProcess`): every collective is a no-op.

So the numerics run, and are tested, without ``mpirun`` or any MPI library.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch


class SingleProcess:
    """A world of one rank: every collective returns its input unchanged."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    def allreduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def reduce_scatter_rows(self, tensor: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        return tensor

    def allgather_rows(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        return rows

    def gather_rows(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]], root: int = 0) -> torch.Tensor | None:
        return rows

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def split(self, color: int, key: int) -> "SingleProcess":
        return self

    def send_tensor(self, tensor: torch.Tensor, dest: int) -> None:
        raise ValueError(f"a single process has no rank {dest} to send to")

    def recv_tensor(self, source: int) -> torch.Tensor:
        raise ValueError(f"a single process has no rank {source} to receive from")

    def abort(self, code: int = 1) -> None:
        os._exit(code)

    @property
    def description(self) -> str:
        return "single process (no MPI)"
