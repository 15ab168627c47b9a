"""Fully connected network, the default model (small enough for a dense-Hessian check)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
                "softplus": nn.Softplus}


class MLP(nn.Module):
    """``input → [Linear → activation]* → Linear``; inputs are flattened per sample."""

    def __init__(self, input_dim: int, output_dim: int, hidden: Sequence[int] = (32, 32),
                 activation: str = "tanh") -> None:
        super().__init__()
        widths = [input_dim, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(widths[-1], output_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(start_dim=1))
