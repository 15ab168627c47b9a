"""``hutchpp`` (Meyer, Musco, Musco & Woodruff 2021, "Hutch++")

A sketch ``Q = orth(H S)`` of k vectors (k products), its exact trace ``tr(QᵀHQ)`` (k more),
and Hutchinson on the rest: ``tr(H) = tr(QᵀHQ) + E[zᵀ(I−QQᵀ)H(I−QQᵀ)z]``. The probes z are
independent of Q, so the estimate is unbiased whatever Q is. Default split k = matvecs/3.
``samples``: the residual terms; ``deflated``: ``tr(QᵀHQ)``.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..probes import probe_block
from .base import SKETCH_STREAM


def sketch_basis(apply: Callable[[torch.Tensor], torch.Tensor], size: int, seed: int, sketch: int,
                 distribution: str) -> torch.Tensor:
    """``Q = orth(H S)`` for ``sketch`` probes S of the ``SKETCH_STREAM`` (one data pass of ``apply``)."""
    sketch_vectors = probe_block(size, seed, SKETCH_STREAM, range(sketch), distribution)
    return torch.linalg.qr(apply(sketch_vectors)).Q


def exact_trace(apply: Callable[[torch.Tensor], torch.Tensor], basis: torch.Tensor) -> float:
    """``tr(QᵀHQ)`` of an orthonormal basis Q (one data pass of ``apply``)."""
    return float((basis * apply(basis)).sum())
