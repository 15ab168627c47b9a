"""The world communicator of this process, chosen once at the entry point."""

from __future__ import annotations

from ...choices import BACKENDS
from ...errors import InputError
from .base import Communicator
from .horovod import HorovodCommunicator, import_horovod
from .launch import launched_by_mpi, launched_by_torchrun
from .mpi import MPICommunicator
from .single import SingleProcess
from .torch_dist import TorchDistributedCommunicator


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
        return HorovodCommunicator(import_horovod())
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
