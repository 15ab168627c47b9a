"""``krylov`` (Hutch++ with a block-Krylov basis; cf. Persson, Cortinovis & Kressner 2022 and the

Krylov-aware estimator of Chen & Hallman 2023)
Q is a block Lanczos basis (Golub & Underwood 1977) of ``span{Ω, HΩ, …, H^{d−1}Ω}`` with full
reorthogonalisation (classical Gram–Schmidt twice). Every product ``H Q_j`` the recurrence needs
also gives that block's exact trace ``tr(Q_jᵀ H Q_j)``, so k basis vectors cost k products, not
2k as in Hutch++, and the Krylov space captures the dominant eigenspace far better than one
range-finder pass (Musco & Musco 2015). Default: k = matvecs/2 in about ``KRYLOV_DEPTH`` passes
of width ⌈k / KRYLOV_DEPTH⌉ (at 100 products: plain Lanczos, 50 one-vector passes), the other
half on residual Hutchinson samples in one pass. Wider blocks mean fewer data passes but a
worse basis per product (width 5 at 100 products: RMS error 0.70 % instead of 0.60 % on the
digits MLP). ``samples``: the residual terms; ``deflated``: ``tr(QᵀHQ)``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..base import LinearOperator
from ..orthogonal import project_out_
from ..probes import probe_block
from .base import RANK_TOL, SKETCH_STREAM

#: Target number of block-Krylov passes (the block width is ⌈k / KRYLOV_DEPTH⌉): depth buys
#: accuracy per product, width buys fewer data passes.
KRYLOV_DEPTH = 50


def block_width(sketch: int) -> int:
    """Vectors per pass for a basis of ``sketch`` vectors: about ``KRYLOV_DEPTH`` passes."""
    return math.ceil(sketch / min(KRYLOV_DEPTH, sketch))


def start_block(size: int, seed: int, width: int, distribution: str) -> torch.Tensor:
    """The orthonormal first block: ``width`` probes of the ``SKETCH_STREAM``."""
    return torch.linalg.qr(probe_block(size, seed, SKETCH_STREAM, range(width), distribution)).Q


def next_krylov_block(op: LinearOperator, products: torch.Tensor, basis: torch.Tensor, scale: float,
                      room: int) -> torch.Tensor:
    """Orthonormal directions of ``products`` outside ``basis`` (at most ``room``), largest first.

    Directions below ``RANK_TOL·scale`` after reorthogonalisation are dropped: there the Krylov
    space is invariant. The count kept is rank 0's, broadcast, so all ranks keep the same block.
    """
    project_out_(products, basis)
    left, singular, _ = torch.linalg.svd(products, full_matrices=False)
    keep = int(min(room, int((singular > RANK_TOL * scale).sum())))
    keep = op.comm.bcast_object(keep)
    block = left[:, :keep].contiguous()
    project_out_(block, basis)  # SVD's rounding re-introduces tiny components along the basis
    return torch.linalg.qr(block).Q if keep else block


def krylov_pass(op: LinearOperator, apply: Callable[[torch.Tensor], torch.Tensor], block: torch.Tensor,
                basis: torch.Tensor, scale: float, sketch: int,
                width: int) -> tuple[float, float, torch.Tensor, torch.Tensor | None]:
    """One pass of the recurrence: ``block``'s products (one data pass), their exact trace, the
    grown basis and the next block. Returns ``(tr(blockᵀ H block), scale, basis, next)``, where
    ``next`` is None once the basis holds ``sketch`` vectors or the Krylov space became invariant."""
    products = apply(block)
    exact = float((block * products).sum())
    scale = max(scale, float(torch.linalg.vector_norm(products, dim=0).max()))
    basis = torch.cat([basis, block], dim=1)
    room = sketch - basis.shape[1]
    if room <= 0:
        return exact, scale, basis, None
    following = next_krylov_block(op, products, basis, scale, min(room, width))
    return exact, scale, basis, following if following.shape[1] else None
