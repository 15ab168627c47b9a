"""Which device and how many threads a rank uses."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .comm import Communicator


def select_device(comm: Communicator) -> torch.device:
    """``cuda:<local rank mod GPUs>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        device = torch.device("cuda", comm.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)  # NCCL collectives and CUDA-staged buffers use the current device
        return device
    return torch.device("cpu")


@dataclass(frozen=True)
class Threads:
    """The intra-op thread count a rank runs with and where it came from (for the start-up log: a
    rank count that starves or oversubscribes the cores should be visible at a glance)."""

    count: int
    source: str

    def __str__(self) -> str:
        return f"{self.count} thread(s) per rank ({self.source})"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (what ``taskset``, cgroups cpusets and
    ``srun --cpu-bind`` leave it), else every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def choose_threads(local_size: int, requested: int = 0) -> Threads:
    """The thread count for one of ``local_size`` ranks sharing a node: ``requested`` when positive;
    with 0, ``OMP_NUM_THREADS`` when it is set to a positive integer (a batch system or the user
    chose it: not ours to override), else the usable cores divided by the node's ranks, at least 1
    (every rank taking all cores makes R ranks on C cores run R·C threads that fight for them)."""
    if requested > 0:
        return Threads(requested, "threads setting")
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return Threads(int(omp), f"OMP_NUM_THREADS={int(omp)}")
    cores, ranks = usable_cores(), max(1, local_size)
    return Threads(max(1, cores // ranks), f"{cores} affinity core(s) / {ranks} rank(s) on this node")


def set_threads(comm: Communicator, requested: int = 0) -> Threads:
    """Set torch's intra-op threads as :func:`choose_threads` decides for this rank's node."""
    threads = choose_threads(comm.local_size, requested)
    torch.set_num_threads(threads.count)
    return threads


def set_matmul_precision(tf32: bool, device: torch.device) -> str:
    """Allow TF32 in CUDA matmuls and cuDNN convolutions exactly when ``tf32`` (``hessian.dtype =
    "tf32"``), and forbid it otherwise: torch lets cuDNN convolutions use TF32 by default, so a
    "float32" ResNet on an Ampere-or-newer GPU would silently round its convolution inputs to 10
    mantissa bits. Process-wide switches, set once by the command entry. Returns a line for the
    start-up log."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if not tf32:
        return "float32 matmuls and convolutions in full float32 (TF32 off)"
    if device.type != "cuda":
        return f"tf32 on {device.type}: TF32 is a CUDA tensor-core format, so this computes in plain float32"
    return "tf32: CUDA matmuls and cuDNN convolutions round their inputs to TF32 (10-bit mantissa), accumulate in float32"
