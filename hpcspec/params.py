"""The flat parameter vector: one contiguous buffer for all selected parameters.

Solvers and reductions see one vector of length P; the offsets table maps it back to named
parameters (and is stored in results.h5 as ``/params``), so a reduction is one message and an
eigenvector can be read per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of the parameters in the flat vector; ``excluded`` are the
    parameters left out because they do not require gradients (frozen)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    excluded: tuple[str, ...] = ()

    @classmethod
    def of(cls, model: nn.Module) -> "ParamLayout":
        names, shapes, offsets, excluded = [], [], [0], []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                excluded.append(name)
                continue
            names.append(name)
            shapes.append(tuple(param.shape))
            offsets.append(offsets[-1] + param.numel())
        return cls(tuple(names), tuple(shapes), tuple(offsets), tuple(excluded))

    @property
    def size(self) -> int:
        """P, the length of the flat vector."""
        return self.offsets[-1]

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of a flat vector, one per parameter, in parameter shapes."""
        return [flat[begin:end].view(shape) for begin, end, shape
                in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]
