"""The :class:`Communicator` protocol: what hpcspec needs from a group of ranks.

Every function in hpcspec that needs to talk to other ranks takes a :class:`Communicator`
argument; nothing reaches for ``MPI.COMM_WORLD`` except :func:`hpcspec.parallel.comm.world` at the
entry point. The backends (:mod:`.single`, :mod:`.mpi`, :mod:`.torch_dist`, :mod:`.horovod`)
implement it; this module holds the protocol alone, so it imports no communication library.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class Communicator(Protocol):
    """What the rest of hpcspec needs from a group of ranks."""

    rank: int
    size: int
    local_rank: int
    local_size: int

    def allreduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a contiguous tensor over all ranks, in place; returns the same tensor."""

    def reduce_scatter_rows(self, tensor: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Sum a contiguous (P, ...) tensor over all ranks; return this rank's rows ``bounds[rank]``."""

    def allgather_rows(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        """The (P, ...) tensor whose rows ``bounds[r]`` are rank r's ``rows``, on every rank."""

    def gather_rows(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]], root: int = 0) -> torch.Tensor | None:
        """As :meth:`allgather_rows`, but only on ``root`` (None elsewhere): for writing results."""

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        """Root's small picklable object, on every rank (decisions, names)."""

    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's small picklable object, in rank order, on every rank."""

    def split(self, color: int, key: int) -> "Communicator":
        """The sub-communicator of the ranks that passed the same ``color``, ordered by ``key``
        (collective over this communicator: every rank calls it, in the same order)."""

    def send_tensor(self, tensor: torch.Tensor, dest: int) -> None:
        """Send a contiguous tensor (its shape and dtype travel with it) to rank ``dest`` (point to point)."""

    def recv_tensor(self, source: int) -> torch.Tensor:
        """The tensor rank ``source`` sent with :meth:`send_tensor`, as a CPU tensor."""

    def abort(self, code: int = 1) -> None:
        """End every process of the world now (used on uncaught exceptions)."""

    @property
    def description(self) -> str:
        """Backend name and library version, for provenance."""
