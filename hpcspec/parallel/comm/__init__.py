"""Communicators: the only place that knows how vectors and decisions move between ranks.

Every function in hpcspec that needs to talk to other ranks takes a :class:`Communicator`
argument; nothing reaches for ``MPI.COMM_WORLD`` except :func:`world` at the entry point.
:class:`SingleProcess` turns every collective into a no-op, so the numerics run and are tested
without ``mpirun``. One module per backend (:mod:`.single`, :mod:`.mpi`, :mod:`.torch_dist`,
:mod:`.horovod`), the protocol in :mod:`.base`, launcher detection in :mod:`.launch` and the
choice of backend in :mod:`.world`. This package only re-exports their public names.
"""

from .base import Communicator
from .horovod import HorovodCommunicator
from .launch import launched_by_mpi, launched_by_torchrun
from .mpi import MPICommunicator
from .single import SingleProcess
from .torch_dist import TorchDistributedCommunicator
from .world import BACKENDS, world

__all__ = ["BACKENDS", "Communicator", "HorovodCommunicator", "MPICommunicator", "SingleProcess",
           "TorchDistributedCommunicator", "launched_by_mpi", "launched_by_torchrun", "world"]
