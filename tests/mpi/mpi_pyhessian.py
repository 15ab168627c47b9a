"""Run under mpirun by test_pyhessian_mpi.py: PyHessian's call sequence with the WHOLE DataLoader
(and the whole ``(x, y)``) passed on every rank, as a PyHessian script does, and once with each
rank's own part (``sharded=True``); rank 0 writes every number for comparison across rank counts.

Usage: python mpi_pyhessian.py OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hpcspec

N = 53


def sequence(h: hpcspec.Hessian) -> dict:
    """PyHessian's documented calls, with the eigenvectors flattened for comparison."""
    eigenvalues, eigenvectors = h.eigenvalues(top_n=5)
    nodes, weights = h.density(iter=30, n_v=2)
    return {"eigenvalues": eigenvalues, "trace": h.trace(), "nodes": nodes, "weights": weights,
            "eigenvectors": [torch.cat([t.reshape(-1) for t in vector]).tolist() for vector in eigenvectors]}


def main() -> None:
    out = Path(sys.argv[1])
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=gen)
    torch.manual_seed(0)  # the same weights on every rank
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 3)).double().train()
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    loader = DataLoader(TensorDataset(x, y), batch_size=7)  # 8 uneven batches: 3 ranks get 3, 3 and 2
    h = hpcspec.hessian(model, criterion, dataloader=loader)  # comm: hpcspec.world(), MPI under mpirun
    comm = h.comm
    record = {"size": comm.size, "loader": sequence(h),
              "pair": sequence(hpcspec.hessian(model, criterion, data=(x, y), batch_size=5))}
    lo, hi = hpcspec.shard_range(N, comm.rank, comm.size)
    own = hpcspec.hessian(model, criterion, dataloader=DataLoader(TensorDataset(x[lo:hi], y[lo:hi]), batch_size=4),
                          sharded=True)
    record["sharded"] = sequence(own)
    record["training_restored"] = all(m.training for m in model.modules())
    records = comm.allgather_object(record)
    if comm.rank == 0:
        out.write_text(json.dumps(records))


if __name__ == "__main__":
    main()
