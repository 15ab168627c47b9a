"""Eval-mode BatchNorm written as the per-channel affine map it is, for the products' graphs.

A BatchNorm layer normalising with its running statistics computes
``y = x · s + c`` with ``s = γ / √(σ² + ε)`` and ``c = β − μ · s`` per channel: an affine function
of x, γ and β. torch's ``native_batch_norm`` backward, differentiated a second time
(``NativeBatchNormBackwardBackward0``), runs the general batch-statistics formula, about ten full-size
products per layer; on ResNet-20 that was a fifth of a kept-graph Hessian-vector product
(docs/performance.md, "Where an HVP's time goes"). Written as ``x * s + c``, its first and second
derivatives are two or three elementwise products. The function is the same (its value differs
only in rounding), so H is the same; layers in training mode (batch statistics, ``bn_mode = "train"``)
keep torch's own forward, with their running statistics frozen (:func:`frozen_running_stats`).
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def affine_forward(norm: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``x · γ/√(σ²+ε) + (β − μ·γ/√(σ²+ε))`` per channel (dimension 1), from the running statistics."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = norm.weight * scale
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return x * scale.view(shape) + shift.view(shape)


def eval_norms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that normalise with running statistics right now."""
    return [module for module in model.modules()
            if isinstance(module, _BatchNorm) and not module.training and module.running_var is not None]


@contextmanager
def affine_norms(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside: every eval-mode BatchNorm layer of ``model`` runs :func:`affine_forward` (an
    instance attribute shadowing the class's ``forward``, removed on exit); a no-op when not
    ``enabled`` or when no layer qualifies."""
    norms = eval_norms(model) if enabled else []
    for norm in norms:
        norm.forward = types.MethodType(affine_forward, norm)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


@contextmanager
def frozen_running_stats(norms: list[torch.nn.Module]) -> Iterator[None]:
    """Forwards inside normalise the BatchNorm layers ``norms`` (in training mode: bn_mode "train")
    with each batch's statistics without updating any of their buffers: with
    ``track_running_stats`` off a layer leaves ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` alone (the functorch-compatible form). No-op for an empty list."""
    saved = [module.track_running_stats for module in norms]
    for module in norms:
        module.track_running_stats = False
    try:
        yield
    finally:
        for module, tracked in zip(norms, saved):
            module.track_running_stats = tracked
