"""Run under mpirun by test_ggn_mpi.py: the Gauss-Newton operator on uneven shards
(rank r takes a share that grows with r) against its dense float64 form on the whole data set.

Usage: python mpi_ggn.py OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from hpcspec.curvature.ggn import GaussNewtonOperator
from hpcspec.parallel.comm import world

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from helpers import classification_data, dense_ggn, mlp  # noqa: E402


def main() -> None:
    comm = world("mpi")
    model, (x, y) = mlp(sizes=(5, 7, 3)), classification_data()
    weights = [r + 1 for r in range(comm.size)]  # uneven: rank r holds (r + 1) parts
    edges = [round(len(y) * sum(weights[:r]) / sum(weights)) for r in range(comm.size + 1)]
    mine = slice(edges[comm.rank], edges[comm.rank + 1])
    op = GaussNewtonOperator(model, "cross_entropy", (x[mine], y[mine]), comm, batch_size=4)
    dense = dense_ggn(model, "cross_entropy", x, y)
    vectors = torch.randn(op.size, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    expected = dense @ vectors
    whole = op.apply(vectors)
    rows = op.apply_sharded(vectors, op.space.bounds) if op.space.sharded else whole
    lo, hi = op.space.lo, op.space.hi
    scale = float(expected.abs().max())
    record = {"rank": comm.rank, "whole": float((whole - expected).abs().max()) / scale,
              "rows": float((rows - expected[lo:hi]).abs().max()) / scale, "samples": mine.stop - mine.start}
    records = comm.allgather_object(record)
    if comm.rank == 0:
        Path(sys.argv[1]).write_text(json.dumps(records))


if __name__ == "__main__":
    main()
