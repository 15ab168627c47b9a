"""CIFAR ResNets (He et al. 2016, §4.2): 6n+2 layers, option-A shortcuts, as in PyHessian's models.

A 3×3 convolution, then three stages of ``n`` basic blocks with ``width``, ``2·width`` and
``4·width`` channels (stride 2 at the start of the second and third stages), global average
pooling and a linear classifier. ResNet-20/32/38/56 have n = 3/5/6/9. Option A shortcuts
(subsample by 2 and zero-pad the new channels) have no parameters, so the Hessian is over the
same parameters with and without ``residual``. Switches, for loss-landscape studies of what
BatchNorm and skip connections do to the spectrum:

* ``batchnorm=False``: no BatchNorm layers at all; the convolutions get biases instead.
* ``residual=False``: a plain network of the same depth (no shortcut addition).

Global average pooling makes the network take any image size (≥ 4×4 keeps every stage's
feature map non-degenerate) and any number of input channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Zoo name → blocks per stage (depth = 6n + 2).
RESNET_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet38": 6, "resnet56": 9}


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3×3 conv(-BN) layers, ReLU between and after, plus (``residual``) the option-A shortcut:
    identity, or stride-2 subsampling with zero-padded channels where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, *, batchnorm: bool = True,
                 residual: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=not batchnorm)
        self.bn1 = _norm(planes, batchnorm)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=not batchnorm)
        self.bn2 = _norm(planes, batchnorm)
        self.stride = stride
        self.pad = planes - in_planes
        self.residual = residual

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: parameter-free (subsample, zero-pad channels half before, half after)."""
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """CIFAR ResNet of depth ``6·blocks + 2``: conv-BN-ReLU, three stages (``layer1..3``) of
    ``blocks`` basic blocks with ``width``, ``2·width``, ``4·width`` channels, global average
    pool, ``linear`` classifier. Parameter names follow PyHessian's models (``conv1``, ``bn1``,
    ``layer2.0.conv1``, ``linear``), so per-block globs carry over."""

    def __init__(self, blocks: int = 3, *, in_channels: int = 3, num_classes: int = 10, width: int = 16,
                 batchnorm: bool = True, residual: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=not batchnorm)
        self.bn1 = _norm(width, batchnorm)
        in_planes = width
        for index, (planes, stride) in enumerate(((width, 1), (2 * width, 2), (4 * width, 2)), start=1):
            stage = []
            for i in range(blocks):
                stage.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, batchnorm=batchnorm,
                                        residual=residual))
                in_planes = planes
            setattr(self, f"layer{index}", nn.Sequential(*stage))
        self.linear = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(out.mean(dim=(2, 3)))
