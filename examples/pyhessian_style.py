"""What a PyHessian user writes, run through hpcspec: their own model, DataLoader and criterion.

    python examples/pyhessian_style.py                  # one process
    mpirun -n 2 python examples/pyhessian_style.py      # the same script, the same numbers

The PyHessian lines are the three calls after ``hpcspec.hessian``; everything else is the user's
own code (a small MLP on scikit-learn's digits, trained briefly) and a check of every number
against the dense Hessian, which a model this small allows.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hpcspec
from hpcspec.curvature.dense import dense_hessian

torch.manual_seed(0)  # the same model on every rank
digits = load_digits()
x = torch.tensor(digits.data / 16.0, dtype=torch.float64)
y = torch.tensor(digits.target)
loader = DataLoader(TensorDataset(x, y), batch_size=128)  # no shuffling: the Hessian does not depend on order
model = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10)).double()
criterion = nn.CrossEntropyLoss()

optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # a little training, as a user would
for epoch in range(20):
    for inputs, targets in DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True):
        optimizer.zero_grad()
        criterion(model(inputs), targets).backward()
        optimizer.step()

start = time.perf_counter()
h = hpcspec.hessian(model, criterion, dataloader=loader, cuda=False)   # PyHessian: hessian(model, criterion, dataloader=…)
top_eigenvalues, top_eigenvectors = h.eigenvalues(top_n=5)
trace_values = h.trace()
eigen_list_full, weight_list_full = h.density(iter=100, n_v=4)
seconds = time.perf_counter() - start

H = dense_hessian(h.operator).numpy()  # collective: every rank takes part
rank0 = h.comm.rank == 0


def say(*args: object) -> None:
    if rank0:
        print(*args, flush=True)


lam, U = np.linalg.eigh(H)
order = np.argsort(-np.abs(lam), kind="stable")[:5]
say(f"ranks {h.comm.size}, parameters {h.operator.size}, samples {int(h.operator.total_count)}, "
    f"mean loss {h.operator.mean_loss():.6f}, PyHessian calls took {seconds:.1f} s")
say("top eigenvalues   ", " ".join(f"{v:.10f}" for v in top_eigenvalues))
say("dense eigenvalues ", " ".join(f"{v:.10f}" for v in lam[order]))
say(f"  max relative error {np.max(np.abs(np.array(top_eigenvalues) - lam[order])) / abs(lam[order][0]):.1e}, "
    f"{h.eigen_result.num_matvecs} products, largest relative residual "
    f"{np.max(h.eigen_result.residuals) / abs(top_eigenvalues[0]):.1e}")
cosines = [abs(torch.cat([t.reshape(-1) for t in v]).numpy() @ U[:, j]) for v, j in zip(top_eigenvectors, order)]
say("  |cos| with the dense eigenvectors", " ".join(f"{c:.12f}" for c in cosines))
estimate = h.trace_result
say(f"trace: mean of {len(trace_values)} Hutchinson terms {np.mean(trace_values):.6f} ± {estimate.stderr:.6f} "
    f"(standard error); dense trace {np.trace(H):.6f}; off by {abs(np.mean(trace_values) - np.trace(H)) / estimate.stderr:.2f} stderr")
better = hpcspec.trace(h.operator, matvecs=100)  # hpcspec's default estimator (krylov), for comparison
say(f"  hpcspec.trace(h.operator, matvecs=100): {better.estimate:.6f} ± {better.stderr:.2e}")
nodes = np.concatenate(eigen_list_full)
weights = np.concatenate(weight_list_full) / len(weight_list_full)
say(f"density: {len(eigen_list_full)} probes × {[len(e) for e in eigen_list_full]} nodes, weight sums "
    f"{', '.join(f'{sum(w):.15f}' for w in weight_list_full)}")
say(f"  nodes in [{nodes.min():.6f}, {nodes.max():.6f}], dense spectrum [{lam[0]:.6f}, {lam[-1]:.6f}]")
near_zero = float(weights[np.abs(nodes) < 1e-3 * abs(lam[-1])].sum())
say(f"  mass within 1e-3·λmax of 0: SLQ {near_zero:.3f}, dense {np.mean(np.abs(lam) < 1e-3 * abs(lam[-1])):.3f}; "
    f"mean eigenvalue SLQ {np.sum(weights * nodes):.6f}, dense {lam.mean():.6f}")
say(f"model still in train mode: {model.training}")
error = np.max(np.abs(np.array(top_eigenvalues) - lam[order])) / abs(lam[order][0])
raise SystemExit(0 if error < 1e-8 and min(cosines) > 1 - 1e-8 and model.training else 1)
