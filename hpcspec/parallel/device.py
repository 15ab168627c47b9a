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
