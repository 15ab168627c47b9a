"""A training script that asks hpcspec for the sharpness (the top Hessian eigenvalue) every 5 steps.

    python examples/training_sharpness.py

The model has BatchNorm and dropout, the loader shuffles, the criterion smooths labels. The run is
made twice, with and without the calls, and the training losses must be bitwise equal: the calls
leave the model's modes, ``requires_grad`` flags, BatchNorm statistics and torch's random stream
(which every DataLoader pass draws from) as they found them.
"""
from __future__ import annotations

import sys

import torch
from sklearn.datasets import load_digits
from torch import nn

import hpcspec


def train(probe_every: int) -> tuple[list[float], list[float]]:
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=128, shuffle=True,
                                         generator=torch.Generator().manual_seed(1))
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    losses, sharpness = [], []
    eval_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:512], y[:512]), batch_size=256)
    step = 0
    for epoch in range(3):
        for xb, yb in loader:
            model.train()
            opt.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if probe_every and step % probe_every == 0:
                h = hpcspec.hessian(model, criterion, dataloader=eval_loader)
                top, _ = h.eigenvalues(top_n=1)
                sharpness.append(top[0])
    return losses, sharpness


plain, _ = train(0)
probed, sharp = train(5)
print(f"steps {len(plain)}; sharpness every 5 steps: {' '.join(f'{s:.4f}' for s in sharp)}")
print("training losses bitwise equal with and without the calls:", plain == probed)
sys.exit(0 if plain == probed else 1)
