"""Per-rank peak memory, time per HVP and pipeline bubble of the pipelined operator (docs/pipeline.md).

Every rank builds the same transformer from the seed (float32, on the CPU), keeps its stage in
float64 and drops the rest; the peak resident set (VmHWM) is then reset (``/proc/self/clear_refs``)
so the figure is what the products take, not the one-off whole-model build. Two products are
timed after one warm-up. Rank 0 prints one JSON line per rank.

    OMP_NUM_THREADS=1 mpirun -n S python benchmarks/pipeline_memory.py S [EMBED LAYERS CONTEXT SAMPLES BATCH]
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

import torch

from hpcspec.curvature.pipeline import pipelined
from hpcspec.parallel.comm import world
from hpcspec.parallel.grid import make_grid
from hpcspec.problem.models.transformer import TransformerLM
from hpcspec.problem.tokens import markov_tokens


def rss_mib(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    stages = int(sys.argv[1])
    embed, layers, context, samples, batch = (int(a) for a in (sys.argv[2:7] or (192, 8, 64, 64, 32)))
    comm = world("auto")
    grid = make_grid(comm, stages)
    vocab = 256
    x, y = markov_tokens(samples, context, vocab, seed=0)
    lo, hi = grid.shard * samples // grid.shards, (grid.shard + 1) * samples // grid.shards
    torch.manual_seed(0)
    model = TransformerLM(vocab, context, embed=embed, layers=layers, heads=4)
    op = pipelined(model, grid, "cross_entropy", (x[lo:hi], y[lo:hi]), batch_size=batch, dtype=torch.float64)
    del model
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: measure the products, not the build
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    op.space.apply(op, v)  # warm-up
    times, bubbles = [], []
    for _ in range(2):
        started = time.perf_counter()
        op.space.apply(op, v)
        times.append(time.perf_counter() - started)
        bubbles.append(op.bubble)
    record = {"rank": comm.rank, "stage": grid.stage, "stages": stages, "params": op.size,
              "stage_params": op.hi_stage - op.lo_stage, "peak_rss_mib": round(rss_mib("VmHWM")),
              "seconds_per_hvp": round(min(times), 2), "bubble": round(min(bubbles), 3)}
    for entry in comm.allgather_object(record):
        if comm.rank == 0:
            print(json.dumps(entry))


if __name__ == "__main__":
    main()
