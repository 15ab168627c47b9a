"""Run under mpirun by test_batches_mpi.py: each rank passes its own DataLoader (uneven batches over
its disjoint share of the samples) with a label-smoothing criterion; the products and the top
eigenvalues are written for comparison with the dense Hessian of the mean loss over all samples.

Usage: python mpi_batches.py OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Subset, TensorDataset

from hpcspec import HessianOperator, block_lanczos, shard_range, trace, world
from hpcspec.problem.params import ParamLayout

N = 53


def main() -> None:
    out = Path(sys.argv[1])
    comm = world("mpi")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=gen)
    torch.manual_seed(0)  # the same weights on every rank
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Dropout(0.2), nn.Linear(6, 3)).double().train()
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    lo, hi = shard_range(N, comm.rank, comm.size)  # disjoint shares that cover the data once
    loader = DataLoader(Subset(TensorDataset(x, y), range(lo, hi)), batch_size=7)  # uneven: a short last batch
    op = HessianOperator(model, criterion, loader, comm)
    vectors = torch.randn(op.size, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    product = op.apply(vectors)
    top = block_lanczos(op, k=3)
    estimate = trace(op, matvecs=60)

    layout = ParamLayout.of(model)
    model.eval()  # the dense reference, without dropout

    def mean_loss(flat: torch.Tensor) -> torch.Tensor:
        return criterion(functional_call(model, dict(zip(layout.names, layout.split(flat))), (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    dense = torch.func.hessian(mean_loss)(flat)
    expected = dense @ vectors
    exact = torch.linalg.eigvalsh(dense).flip(0)[:3]
    record = {"rank": comm.rank, "size": comm.size, "samples": hi - lo, "training_restored": model.training is False,
              "product_error": float(torch.linalg.matrix_norm(product - expected) / torch.linalg.matrix_norm(expected)),
              "eigen_error": float((torch.as_tensor(top.eigenvalues) - exact).abs().max() / exact.abs().max()),
              "eigenvalues": [float(v) for v in top.eigenvalues], "trace": float(estimate.estimate),
              "exact_trace": float(torch.trace(dense))}
    records = comm.allgather_object(record)
    if comm.rank == 0:
        out.write_text(json.dumps(records))


if __name__ == "__main__":
    main()
