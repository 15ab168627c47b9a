"""How much of the gradient lies in the top eigenspace of the Hessian (Ghorbani, Krishnan & Xiao 2019, §4).

Ghorbani et al. observed that during training the full-data gradient g concentrates in the span of
the few outlier eigenvectors of the Hessian (Gur-Ari, Roberts & Dyer 2018 made the same point). For
the top-k Ritz vectors V = [v_1 … v_k] (orthonormal) the measure is

    fraction = ‖P_k g‖² / ‖g‖² = ‖Vᵀ g‖² / ‖g‖² = Σ_i (v_i·g)² / ‖g‖²,

with the per-vector overlaps (v_i·g)²/‖g‖² beside it. It is exact for an orthonormal V; Ritz vectors
are orthonormal to rounding (Lanczos reorthogonalises fully, the power iteration deflates), so the
fraction is too. Pure numerics on tensors: the caller passes the gradient and the vectors (whole,
or this rank's rows of sharded ones with the communicator that holds the others).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..parallel.comm import Communicator


@dataclass(frozen=True)
class GradientOverlap:
    """The gradient's share of the eigenspace the eigen task found.

    Attributes:
        fraction: ‖Vᵀg‖²/‖g‖² in [0, 1] (NaN when g = 0).
        norm: ‖g‖, the Euclidean norm of the full-data mean-loss gradient.
        overlaps: (k,) (v_i·g)²/‖g‖², in the order of the eigenpairs; they sum to ``fraction``.
        eigenvalues: (k,) the eigenvalues of the vectors, in the same order.
    """

    fraction: float
    norm: float
    overlaps: np.ndarray
    eigenvalues: np.ndarray


def gradient_overlap(gradient: torch.Tensor, vectors: torch.Tensor, eigenvalues: np.ndarray, *,
                     comm: Communicator | None = None, rows: tuple[int, int] | None = None) -> GradientOverlap:
    """Project the gradient onto orthonormal eigenvectors.

    Args:
        gradient: (P,) the whole flat gradient (the same on every rank).
        vectors: (P, k) orthonormal eigenvectors, or with ``rows = (lo, hi)`` this rank's rows
            [lo, hi) of them (a sharded run): the inner products are then summed over ``comm``
            (one allreduce of k numbers; collective).
        eigenvalues: (k,) their eigenvalues, carried into the result.
        comm: the ranks holding the other rows (needed only with ``rows``).
        rows: this rank's row range of ``vectors``; None when they are whole.
    """
    g = gradient.to(torch.float64).reshape(-1)
    block = vectors.to(torch.float64)
    if block.ndim == 1:
        block = block[:, None]
    if rows is not None:
        lo, hi = rows
        if comm is None:
            raise ValueError("gradient_overlap: sharded vectors (rows given) need the communicator")
        projections = comm.allreduce_sum_((block.T @ g[lo:hi]).contiguous())
    else:
        if block.shape[0] != g.shape[0]:
            raise ValueError(f"gradient of length {g.shape[0]} and vectors of shape {tuple(block.shape)} differ in P")
        projections = block.T @ g
    squared_norm = float(g @ g)
    norm = float(np.sqrt(squared_norm))
    if squared_norm == 0.0:
        overlaps = np.full(block.shape[1], np.nan)
    else:
        overlaps = (projections.numpy() ** 2) / squared_norm
    fraction = float(np.sum(overlaps)) if squared_norm else float("nan")
    return GradientOverlap(fraction=fraction, norm=norm, overlaps=overlaps,
                           eigenvalues=np.asarray(eigenvalues, dtype=np.float64).copy())
