"""Communicators (see :mod:`hpcspec.parallel.comm.mpi` until the split)."""

from .mpi import *  # noqa: F401,F403  (temporary face: the next commit splits the module per backend)
from .mpi import BACKENDS, Communicator, MPICommunicator, SingleProcess, world  # noqa: F401
