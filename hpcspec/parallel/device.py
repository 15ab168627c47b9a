"""Which device and how many threads a rank uses."""

from __future__ import annotations

import os

import torch

from .comm import Communicator


def select_device(comm: Communicator) -> torch.device:
    """``cuda:<local rank mod GPUs>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        device = torch.device("cuda", comm.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)  # NCCL collectives and CUDA-staged buffers use the current device
        return device
    return torch.device("cpu")


def set_threads(comm: Communicator, requested: int = 0) -> int:
    """Set torch's intra-op threads: ``requested``; with 0, ``OMP_NUM_THREADS`` when it is set to a
    positive integer (a batch system or the user chose it: not ours to override), else the usable
    cores shared among the node's ranks."""
    if requested <= 0:
        omp = os.environ.get("OMP_NUM_THREADS", "").strip()
        if omp.isdigit() and int(omp) > 0:
            torch.set_num_threads(int(omp))
            return int(omp)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        requested = max(1, cores // max(1, comm.local_size))
    torch.set_num_threads(requested)
    return requested
