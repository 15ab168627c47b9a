"""What the collective watchdog costs: CPU of a rank waiting in a collective, and allreduce latency.

Run under ``mpirun -n 2``. Rank 1 sleeps ``--wait`` seconds before joining an allreduce; rank 0's
CPU time (user + system of the whole process, all threads, from ``resource.getrusage``) over that
wait is printed for a blocking ``MPI_Allreduce`` (Open MPI busy-polls) and for hpcspec's watched
non-blocking one. Then the median time of each kind of allreduce on vectors of several lengths.

    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -n 2 python benchmarks/collective_watchdog.py
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Callable

import torch
from mpi4py import MPI

from hpcspec.parallel.comm import MPICommunicator


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def waiting_cost(reduce: Callable[[torch.Tensor], None], rank: int, wait: float) -> tuple[float, float]:
    """(wall seconds, CPU seconds) rank 0 spends in ``reduce`` while rank 1 arrives ``wait`` s late."""
    MPI.COMM_WORLD.Barrier()
    if rank == 1:
        time.sleep(wait)
    cpu, wall = _cpu_seconds(), time.monotonic()
    reduce(torch.zeros(4, dtype=torch.float64))
    return time.monotonic() - wall, _cpu_seconds() - cpu


def latency(reduce: Callable[[torch.Tensor], None], n: int, repeats: int) -> float:
    """Median seconds of ``reduce`` on n float64 after a barrier (the first 10 discarded)."""
    vector = torch.ones(n, dtype=torch.float64)
    times = []
    for _ in range(repeats + 10):
        MPI.COMM_WORLD.Barrier()
        started = time.perf_counter()
        reduce(vector)
        times.append(time.perf_counter() - started)
    return statistics.median(times[10:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=10.0, help="seconds rank 1 arrives late")
    parser.add_argument("--repeats", type=int, default=50, help="allreduces timed per length and kind")
    args = parser.parse_args()
    world = MPI.COMM_WORLD
    watched = MPICommunicator(world)
    kinds = {"blocking": lambda t: world.Allreduce(MPI.IN_PLACE, t.numpy(), op=MPI.SUM),
             "watched": watched.allreduce_sum_}
    for name, reduce in kinds.items():
        wall, cpu = waiting_cost(reduce, world.rank, args.wait)
        if world.rank == 0:
            print(f"{name:>8}: waited {wall:.2f} s, {cpu:.3f} CPU s = {cpu / wall:.4f} CPU s per wall s", flush=True)
    for n in (4, 270_000, 2_700_000):
        found = {name: latency(reduce, n, args.repeats) for name, reduce in kinds.items()}
        if world.rank == 0:
            print(f"allreduce of {n:>9,} float64: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in found.items()),
                  flush=True)


if __name__ == "__main__":
    main()
