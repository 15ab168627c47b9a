"""Which launcher started this process, read from its environment variables (no library imported).

Used by :func:`hpcspec.parallel.comm.world` to pick a backend, and by the ``torch.distributed``
backend to find its rank and world size under ``mpirun``.
"""

from __future__ import annotations

import os

from ...errors import InputError


def launcher_rank_and_size() -> tuple[int, int]:
    """This process's rank and the world size, from torchrun's or an MPI launcher's variables."""
    for rank_var, size_var in (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                               ("PMI_RANK", "PMI_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_var in os.environ and size_var in os.environ:
            return int(os.environ[rank_var]), int(os.environ[size_var])
    raise InputError("the torch backend needs RANK and WORLD_SIZE (torchrun sets them) or an MPI launcher")


def launcher_local_rank_and_size(rank: int, size: int) -> tuple[int, int]:
    """This process's rank and the rank count on its node; ``(rank, size)`` when no launcher says (one node)."""
    for rank_var, size_var in (("LOCAL_RANK", "LOCAL_WORLD_SIZE"),
                               ("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
                               ("SLURM_LOCALID", "SLURM_NTASKS_PER_NODE")):
        if rank_var in os.environ and size_var in os.environ:
            return int(os.environ[rank_var]), int(os.environ[size_var].split("(")[0])
    return rank, size  # one node


def launched_by_torchrun() -> bool:
    """True when torchrun (torch.distributed.run) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "MASTER_ADDR" in os.environ)


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (so MPI must be initialised)."""
    markers = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "SLURM_STEP_ID")
    return any(name in os.environ for name in markers)
