"""A small convolutional network: two conv-ReLU-maxpool blocks and a linear head."""

from __future__ import annotations

import torch
from torch import nn


class CNN(nn.Module):
    """``[Conv3×3 → ReLU → MaxPool2]`` with ``width`` then ``2·width`` channels, then a linear layer
    on the flattened ``2·width × ⌊H/4⌋ × ⌊W/4⌋`` features (images of at least 4×4 pixels)."""

    def __init__(self, in_channels: int, height: int, width_px: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(2 * width * (height // 4) * (width_px // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(start_dim=1))
