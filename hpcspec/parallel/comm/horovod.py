"""The Horovod backend (``horovod.torch``), imported only when asked for.

hpcspec does not need Horovod installed: :func:`import_horovod` turns a missing or broken
installation into a clear :class:`~hpcspec.errors.InputError`.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from ...errors import InputError


class HorovodCommunicator:
    """Horovod (``horovod.torch``), normally under ``mpirun``: Horovod's own MPI (or Gloo) controller.

    Collectives are matched across ranks by name, so each gets a fresh one from a per-process
    counter; every rank issues the same collectives in the same order, so the names agree. Vectors
    travel as float64 CPU tensors: CUDA tensors are staged through host memory, as with mpi4py
    (Horovod's GPU reductions depend on how it was built). Horovod has no uneven reduce-scatter, so
    :meth:`reduce_scatter_rows` reduces the whole tensor and keeps this rank's rows.
    """

    def __init__(self, hvd: Any) -> None:
        self._hvd = hvd
        try:
            hvd.init()
        except (ValueError, RuntimeError) as exc:  # e.g. launched by a foreign launcher
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"horovod could not start: {first}") from None
        self.rank: int = hvd.rank()
        self.size: int = hvd.size()
        self.local_rank: int = hvd.local_rank()
        self.local_size: int = hvd.local_size()
        self._calls = 0

    def _name(self, op: str) -> str:
        """A name no earlier collective of this process used (ranks agree: same calls, same order)."""
        self._calls += 1
        return f"hpcspec.{op}.{self._calls}"

    def allreduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return tensor
        if not tensor.is_contiguous():
            raise ValueError("collectives need a contiguous tensor")
        host = tensor.detach() if tensor.device.type == "cpu" else tensor.detach().cpu()
        self._hvd.allreduce_(host, op=self._hvd.Sum, name=self._name("allreduce"))
        if tensor.device.type != "cpu":
            tensor.copy_(host)
        return tensor

    def reduce_scatter_rows(self, tensor: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        lo, hi = bounds[self.rank]
        total = self.allreduce_sum_(tensor.detach().to("cpu", copy=True))
        return total[lo:hi].clone()

    def allgather_rows(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        if rows.dtype != torch.float64:
            raise ValueError("row collectives move float64 tensors")
        # hvd.allgather concatenates along dim 0 in rank order; ranks may send different row counts
        full = self._hvd.allgather(rows.detach().cpu().contiguous(), name=self._name("allgather"))
        if full.shape[0] != bounds[-1][1]:
            raise ValueError(f"gathered {full.shape[0]} rows, expected {bounds[-1][1]}")
        return full

    def gather_rows(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]], root: int = 0) -> torch.Tensor | None:
        full = self.allgather_rows(rows, bounds)
        return full if self.rank == root else None

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return self._hvd.broadcast_object(obj, root_rank=root, name=self._name("bcast_object"))

    def allgather_object(self, obj: Any) -> list[Any]:
        # an explicit name: Horovod's default is the object's type, which differs between ranks
        # that send None and ranks that send a message (see hpcspec.parallel.agree.agree_on_failure)
        return self._hvd.allgather_object(obj, name=self._name("allgather_object"))

    def split(self, color: int, key: int) -> "HorovodCommunicator":
        """Horovod has no sub-communicators hpcspec can use: pipeline stages need mpi or torch."""
        raise InputError("model.stages > 1 needs sub-communicators and point-to-point messages, which the "
                         "horovod backend does not offer: use --backend mpi or torch")

    def send_tensor(self, tensor: torch.Tensor, dest: int) -> None:
        raise InputError("the horovod backend has no point-to-point messages: use --backend mpi or torch")

    def recv_tensor(self, source: int) -> torch.Tensor:
        raise InputError("the horovod backend has no point-to-point messages: use --backend mpi or torch")

    def close(self) -> None:
        """Shut Horovod down together (every rank, at a normal exit) while the interpreter is whole,
        rather than from its atexit hook during interpreter teardown."""
        self._hvd.shutdown()

    def abort(self, code: int = 1) -> None:
        # MPI_Abort ends every rank; without MPI (Gloo controller) exiting breaks the peers' collectives
        if self._hvd.mpi_enabled():
            try:
                from mpi4py import MPI
            except ImportError:
                pass
            else:
                MPI.COMM_WORLD.Abort(code)
        os._exit(code)

    @property
    def description(self) -> str:
        import horovod

        controller = "MPI" if self._hvd.mpi_enabled() else "Gloo"
        return f"horovod {horovod.__version__} ({controller})"


def import_horovod() -> Any:
    """The ``horovod.torch`` module, imported only when the horovod backend is asked for."""
    try:
        import horovod.torch as hvd
    except ImportError as exc:  # not installed, or built against another torch (undefined symbols)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"the horovod backend needs horovod, which is not installed or does not import "
                         f"({first}); pip install horovod (built with PyTorch and MPI support)") from None
    return hvd
