"""Brief full-batch training, so the default demo analyses a trained network, not a random one."""

from __future__ import annotations

import torch

from .operator import HessianOperator


def train_full_batch(op: HessianOperator, steps: int, lr: float) -> list[float]:
    """Adam on the exact full-data gradient (one reduction per step); returns the loss history.

    Every rank applies the same reduced gradient to the same weights, so the model stays
    identical across ranks and the result does not depend on how the data is sharded.
    """
    params = op.parameters
    optimizer = torch.optim.Adam(params, lr=lr)
    history = []
    for _ in range(steps):
        loss, gradient = op.loss_and_gradient()
        history.append(loss)
        for param, part in zip(params, op.layout.split(gradient.to(op.device))):
            param.grad = part.to(param.dtype).clone()
        optimizer.step()
    for param in params:
        param.grad = None
    return history
