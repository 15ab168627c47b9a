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


def select_parameters(model: nn.Module, patterns: str) -> list[str]:
    """Freeze every parameter whose name matches none of ``patterns``; return the selected names.

    ``patterns`` is a comma-separated list of :mod:`fnmatch` globs over
    ``model.named_parameters()`` names (e.g. ``"layer3.*"`` or ``"0.weight,2.*"``); empty selects
    every parameter and changes nothing. The Hessian over the selected parameters is then the
    diagonal block of the full Hessian for them (:class:`ParamLayout` leaves frozen parameters
    out and records them as ``excluded``). Parameters frozen already stay frozen. A tied parameter
    (one tensor under several names, e.g. ``lm_head.weight`` and ``transformer.wte.weight``) is
    selected when a glob matches any of its names, and enters the flat vector once, under its first.

    Raises:
        InputError: a pattern matches no parameter (the message lists some names to choose from).
    """
    from fnmatch import fnmatchcase

    from ..errors import InputError

    globs = [item.strip() for item in patterns.split(",") if item.strip()]
    named = list(model.named_parameters())
    if not globs:
        return [name for name, param in named if param.requires_grad]
    # a tied parameter (a language model's lm_head.weight sharing the embedding's tensor) is listed
    # once by named_parameters(), under its first name; a glob may name it by any of its names
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    for glob in globs:
        if not any(fnmatchcase(alias, glob) for alias_list in aliases.values() for alias in alias_list):
            shown = ", ".join(name for name, _ in named[:8]) + (", …" if len(named) > 8 else "")
            raise InputError(f"model.params pattern {glob!r} matches no parameter of the model "
                             f"({len(named)} parameters: {shown})")
    selected = []
    for name, param in named:
        if any(fnmatchcase(alias, glob) for alias in aliases[id(param)] for glob in globs):
            if param.requires_grad:
                selected.append(name)
        else:
            param.requires_grad_(False)
    return selected
