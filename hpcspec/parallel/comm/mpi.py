"""Communicators: the only place that knows how vectors and decisions move between ranks.

Every function in hpcspec that needs to talk to other ranks takes a :class:`Communicator`
argument; nothing reaches for ``MPI.COMM_WORLD`` except :func:`world` at the entry point.
:class:`SingleProcess` turns every collective into a no-op, so the numerics run and are tested
without ``mpirun``. Vectors move with mpi4py's buffer methods on contiguous arrays; only small
control messages (error strings, decisions) are pickled.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from ...errors import InputError

BACKENDS = ("auto", "mpi", "torch", "horovod", "single")


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

    def abort(self, code: int = 1) -> None:
        """End every process of the world now (used on uncaught exceptions)."""

    @property
    def description(self) -> str:
        """Backend name and library version, for provenance."""


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

    def abort(self, code: int = 1) -> None:
        os._exit(code)

    @property
    def description(self) -> str:
        return "single process (no MPI)"


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

    def abort(self, code: int = 1) -> None:
        self._comm.Abort(code)

    @property
    def description(self) -> str:
        version = self._MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0]
        return f"mpi4py {_mpi4py_version()} / {version}"


def _pickled(obj: Any) -> bytes:
    """A small control object as bytes (decisions, names, error strings)."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


class TorchDistributedCommunicator:
    """``torch.distributed``: gloo on CPU tensors, NCCL when every rank has a GPU.

    Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``,
    ``LOCAL_RANK``), or by ``mpirun`` with ``MASTER_ADDR``/``MASTER_PORT`` exported: the rank and
    world size are then read from the MPI launcher's variables. Reductions run on the tensor's own
    device with NCCL (GPU-resident, no host staging) and on the host with gloo.
    """

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        if not dist.is_initialized():
            rank, size = _launcher_rank_and_size()
            backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
            try:
                dist.init_process_group(backend=backend, rank=rank, world_size=size)
            except (ValueError, RuntimeError) as exc:  # e.g. MASTER_ADDR unset, port taken, peer gone
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise InputError(f"torch.distributed ({backend}) could not start: {first}") from None
        self.rank: int = dist.get_rank()
        self.size: int = dist.get_world_size()
        self.local_rank, self.local_size = _launcher_local_rank_and_size(self.rank, self.size)
        self._nccl = dist.get_backend() == "nccl"

    def allreduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return tensor
        wire = self._on_wire(tensor)
        self._dist.all_reduce(wire, op=self._dist.ReduceOp.SUM)
        return tensor if wire is tensor else tensor.copy_(wire)

    def _on_wire(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor itself when the backend can move it where it is, else a copy where it can:
        NCCL moves only GPU tensors, gloo host ones."""
        if self._nccl and tensor.device.type != "cuda":
            return tensor.to(torch.device("cuda", torch.cuda.current_device()))
        if not self._nccl and tensor.device.type != "cpu":
            return tensor.cpu()
        return tensor

    def reduce_scatter_rows(self, tensor: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        # gloo has no uneven reduce-scatter: reduce everything, keep this rank's rows
        lo, hi = bounds[self.rank]
        return self.allreduce_sum_(tensor.clone())[lo:hi].clone()

    def allgather_rows(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        widest = max(hi - lo for lo, hi in bounds)
        padded = self._on_wire(torch.zeros((widest, *rows.shape[1:]), dtype=rows.dtype))
        padded[: len(rows)] = rows
        pieces = [torch.empty_like(padded) for _ in bounds]
        self._dist.all_gather(pieces, padded)
        return torch.cat([piece[: hi - lo] for piece, (lo, hi) in zip(pieces, bounds)]).to(rows.device)

    def gather_rows(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]], root: int = 0) -> torch.Tensor | None:
        full = self.allgather_rows(rows, bounds)
        return full if self.rank == root else None

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=root)
        return box[0]

    def allgather_object(self, obj: Any) -> list[Any]:
        found: list[Any] = [None] * self.size
        self._dist.all_gather_object(found, obj)
        return found

    def close(self) -> None:
        """Leave the process group together (every rank, at a normal exit): a gloo group torn
        down by interpreter shutdown while a peer still works can kill the process (SIGABRT)."""
        self._dist.barrier()
        self._dist.destroy_process_group()

    def abort(self, code: int = 1) -> None:
        # torch.distributed has no abort: exiting breaks every peer's pending collective, and a
        # torchrun launcher then stops the other workers.
        os._exit(code)

    @property
    def description(self) -> str:
        return f"torch.distributed {self._dist.get_backend()} (torch {torch.__version__})"


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


def _horovod() -> Any:
    """The ``horovod.torch`` module, imported only when the horovod backend is asked for."""
    try:
        import horovod.torch as hvd
    except ImportError as exc:  # not installed, or built against another torch (undefined symbols)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"the horovod backend needs horovod, which is not installed or does not import "
                         f"({first}); pip install horovod (built with PyTorch and MPI support)") from None
    return hvd


def _launcher_rank_and_size() -> tuple[int, int]:
    for rank_var, size_var in (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                               ("PMI_RANK", "PMI_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_var in os.environ and size_var in os.environ:
            return int(os.environ[rank_var]), int(os.environ[size_var])
    raise InputError("the torch backend needs RANK and WORLD_SIZE (torchrun sets them) or an MPI launcher")


def _launcher_local_rank_and_size(rank: int, size: int) -> tuple[int, int]:
    for rank_var, size_var in (("LOCAL_RANK", "LOCAL_WORLD_SIZE"),
                               ("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
                               ("SLURM_LOCALID", "SLURM_NTASKS_PER_NODE")):
        if rank_var in os.environ and size_var in os.environ:
            return int(os.environ[rank_var]), int(os.environ[size_var].split("(")[0])
    return rank, size  # one node


def launched_by_torchrun() -> bool:
    """True when torchrun (torch.distributed.run) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "MASTER_ADDR" in os.environ)


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


def _full_like(rows: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
    """An empty float64 CPU tensor with all ranks' rows (``bounds[-1][1]`` of them)."""
    if rows.dtype != torch.float64:
        raise ValueError("row collectives move float64 tensors")
    return torch.empty((bounds[-1][1], *rows.shape[1:]), dtype=torch.float64)


def _mpi4py_version() -> str:
    import mpi4py

    return mpi4py.__version__


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (so MPI must be initialised)."""
    markers = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "SLURM_STEP_ID")
    return any(name in os.environ for name in markers)


def world(backend: str = "auto") -> Communicator:
    """The world communicator for this process; called once, at the entry point.

    ``auto`` uses MPI when an MPI launcher started us (and mpi4py imports), ``torch.distributed``
    when torchrun did, and a single-process world otherwise — without initialising MPI — so
    ``python -m hpcspec`` runs on a laptop with no MPI installed. ``torch`` forces
    ``torch.distributed`` (gloo on CPU, NCCL on GPUs), also under mpirun; ``horovod`` uses Horovod
    (only when asked for: ``auto`` never picks it, and hpcspec does not need it installed).
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown communication backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "horovod":
        return HorovodCommunicator(_horovod())
    if backend == "torch" or (backend == "auto" and launched_by_torchrun() and not launched_by_mpi()):
        return TorchDistributedCommunicator()
    if backend == "single" or (backend == "auto" and not launched_by_mpi()):
        return SingleProcess()
    try:
        from mpi4py import MPI
    except ImportError as exc:
        # Under a launcher, R independent single-process runs would each write the same output.
        raise InputError(f"MPI needs mpi4py, which does not import ({exc}); pip install mpi4py, "
                         "or run without mpirun / with --backend single") from None
    return MPICommunicator(MPI.COMM_WORLD)
