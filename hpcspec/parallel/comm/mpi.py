"""The mpi4py backend: vectors move with mpi4py's buffer methods on contiguous arrays; only small
control messages (error strings, decisions) are pickled.
"""

from __future__ import annotations

import pickle
from typing import Any, Sequence

import numpy as np
import torch

from .wire import HEADER, header_of, payload, receive_buffer, restored


class MPICommunicator:
    """mpi4py communicator; vectors travel as contiguous host buffers.

    Every collective is non-blocking and waited on by a :class:`~hpcspec.parallel.watchdog.Watchdog`: a
    rank that never arrives ends the job (exit 4, naming it) instead of hanging it, and waiting
    ranks sleep instead of busy-polling a core. Small objects are pickled and moved as bytes
    (a length collective, then the bytes), so they are watched too.
    CUDA tensors are staged through host memory (a CUDA-aware MPI path is future work).
    """

    def __init__(self, mpi_comm: Any) -> None:
        from mpi4py import MPI

        from ..watchdog import Watchdog

        self._MPI = MPI
        self._comm = mpi_comm
        self.rank: int = mpi_comm.Get_rank()
        self.size: int = mpi_comm.Get_size()
        node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank: int = node.Get_rank()
        self.local_size: int = node.Get_size()
        node.Free()
        self.watchdog = Watchdog(mpi_comm.Dup(), self.abort)

    def allreduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return tensor
        host = _host_view(tensor)
        self.watchdog.wait(self._comm.Iallreduce(self._MPI.IN_PLACE, host, op=self._MPI.SUM), "allreduce")
        if tensor.device.type != "cpu":
            tensor.copy_(torch.from_numpy(host))
        return tensor

    def reduce_scatter_rows(self, tensor: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        counts, _ = _row_counts(tensor, bounds)
        lo, hi = bounds[self.rank]
        local = torch.empty((hi - lo, *tensor.shape[1:]), dtype=tensor.dtype)
        request = self._comm.Ireduce_scatter(_host_view(tensor), local.numpy(), recvcounts=counts, op=self._MPI.SUM)
        self.watchdog.wait(request, "reduce_scatter")
        return local

    def allgather_rows(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        full = _full_like(rows, bounds)
        counts, displacements = _row_counts(full, bounds)
        request = self._comm.Iallgatherv(_host_view(rows), [full.numpy(), counts, displacements, self._MPI.DOUBLE])
        self.watchdog.wait(request, "allgather")
        return full

    def gather_rows(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]], root: int = 0) -> torch.Tensor | None:
        _check_float64(rows)  # on every rank: a wrong dtype must fail everywhere, not on root alone
        full = _full_like(rows, bounds) if self.rank == root else None
        counts, displacements = _row_counts(rows, bounds)
        target = [full.numpy(), counts, displacements, self._MPI.DOUBLE] if full is not None else None
        self.watchdog.wait(self._comm.Igatherv(_host_view(rows), target, root=root), "gather")
        return full

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        payload = _pickled(obj) if self.rank == root else b""
        length = np.array([len(payload)], dtype=np.int64)
        self.watchdog.wait(self._comm.Ibcast(length, root=root), "bcast")
        buffer = bytearray(payload) if self.rank == root else bytearray(int(length[0]))
        self.watchdog.wait(self._comm.Ibcast(buffer, root=root), "bcast")
        return obj if self.rank == root else pickle.loads(bytes(buffer))

    def allgather_object(self, obj: Any) -> list[Any]:
        payload = _pickled(obj)
        lengths = np.zeros(self.size, dtype=np.int64)
        self.watchdog.wait(self._comm.Iallgather(np.array([len(payload)], dtype=np.int64), lengths), "allgather")
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        buffer = bytearray(int(lengths.sum()))
        request = self._comm.Iallgatherv(bytearray(payload), [buffer, lengths.tolist(), offsets.tolist(),
                                                              self._MPI.BYTE])
        self.watchdog.wait(request, "allgather")
        return [pickle.loads(bytes(buffer[o:o + n])) for o, n in zip(offsets.tolist(), lengths.tolist())]

    def split(self, color: int, key: int) -> "MPICommunicator":
        sub = MPICommunicator(self._comm.Split(color, key))
        sub.watchdog.configure(self.watchdog.timeout_s, self.watchdog.factor)
        return sub

    def send_tensor(self, tensor: torch.Tensor, dest: int) -> None:
        header = np.array(header_of(tensor), dtype=np.int64)
        host = _host_view(payload(tensor))
        self.watchdog.wait(self._comm.Isend(header, dest=dest, tag=_TAG), "send")
        self.watchdog.wait(self._comm.Isend(host, dest=dest, tag=_TAG), "send")

    def recv_tensor(self, source: int) -> torch.Tensor:
        header = np.empty(HEADER, dtype=np.int64)
        self.watchdog.wait(self._comm.Irecv(header, source=source, tag=_TAG), "recv")
        out, dtype = receive_buffer(header.tolist())
        self.watchdog.wait(self._comm.Irecv(out.numpy(), source=source, tag=_TAG), "recv")
        return restored(out, dtype)

    def abort(self, code: int = 1) -> None:
        self._comm.Abort(code)

    @property
    def description(self) -> str:
        version = self._MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0]
        return f"mpi4py {_mpi4py_version()} / {version}"


#: The tag of point-to-point tensor messages (:mod:`.wire`).
_TAG = 1801


def _pickled(obj: Any) -> bytes:
    """A small control object as bytes (decisions, names, error strings)."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _host_view(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous numpy array sharing memory with a CPU tensor, or a host copy of a GPU one."""
    if not tensor.is_contiguous():
        raise ValueError("collectives need a contiguous tensor")
    if tensor.device.type == "cpu":
        return tensor.detach().numpy()
    return tensor.detach().cpu().numpy()


def _row_counts(tensor: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Element counts and offsets of each rank's rows of a (P, ...) tensor, for the v-collectives."""
    row = int(np.prod(tensor.shape[1:]))
    return [(hi - lo) * row for lo, hi in bounds], [lo * row for lo, _ in bounds]


def _check_float64(rows: torch.Tensor) -> None:
    """Raise ValueError unless ``rows`` is float64: what the row collectives move (MPI.DOUBLE)."""
    if rows.dtype != torch.float64:
        raise ValueError("row collectives move float64 tensors")


def _full_like(rows: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
    """An empty float64 CPU tensor with all ranks' rows (``bounds[-1][1]`` of them)."""
    _check_float64(rows)
    return torch.empty((bounds[-1][1], *rows.shape[1:]), dtype=torch.float64)


def _mpi4py_version() -> str:
    import mpi4py

    return mpi4py.__version__
