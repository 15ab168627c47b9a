"""Lanczos with full reorthogonalisation for a few extreme eigenpairs of a symmetric operator.

The Krylov basis is kept and every new vector is orthogonalised against all of it twice by
classical Gram–Schmidt ("twice is enough", Giraud et al. 2005), as one batched product ``Qᵀw`` per
pass. Without it, float32 Lanczos returns ghost copies of converged eigenvalues (Ghorbani et al.
2019, appendix; Paige 1971). Convergence is judged by Ritz residuals ``|β_m s_{m,i}|`` — the exact
norm ``‖H y_i − θ_i y_i‖`` in exact arithmetic — never by how much an estimate moved.

SPMD: every rank runs this loop on identical replicated vectors; rank 0 decides convergence and
breakdown and broadcasts the decision, so all ranks stop together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from ..operator import LinearOperator

WHICH = ("largest", "smallest", "largest_magnitude", "both_ends")


@dataclass(frozen=True)
class LanczosResult:
    """Eigenpairs found by :func:`lanczos`.

    Attributes:
        eigenvalues: (k,) Ritz values, ordered as ``which`` asks (largest first for "largest",
            "largest_magnitude" and "both_ends"; smallest first for "smallest").
        eigenvectors: (P, k) float64 Ritz vectors, unit norm, sign fixed so that the entry of
            largest magnitude is positive.
        residuals: (k,) Ritz residual norms ``‖H y − θ y‖`` (exact-arithmetic estimates).
        converged: whether every residual met the tolerance (or the Krylov space was exhausted).
        alpha, beta: the Lanczos tridiagonal (β after reorthogonalisation; 0 marks a restart
            after an invariant subspace was found).
    """

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor
    residuals: np.ndarray
    converged: bool
    iterations: int
    num_matvecs: int
    alpha: np.ndarray
    beta: np.ndarray


class _Basis:
    """Orthonormal Krylov vectors as rows of a buffer that doubles when full."""

    def __init__(self, n: int, capacity: int) -> None:
        self._rows = torch.empty(max(capacity, 1), n, dtype=torch.float64)
        self.count = 0

    def append(self, vector: torch.Tensor) -> None:
        if self.count == self._rows.shape[0]:
            grown = torch.empty(2 * self.count, self._rows.shape[1], dtype=torch.float64)
            grown[: self.count] = self._rows
            self._rows = grown
        self._rows[self.count] = vector
        self.count += 1

    @property
    def rows(self) -> torch.Tensor:
        return self._rows[: self.count]

    def orthogonalise_(self, w: torch.Tensor) -> torch.Tensor:
        """Remove from ``w`` (in place) its components along the basis; return the coefficients."""
        coefficients = self.rows @ w
        w -= self.rows.T @ coefficients
        return coefficients


def select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices of the k wanted Ritz values among ``theta`` (ascending), in reporting order."""
    k = min(k, len(theta))
    if which == "largest":
        return np.arange(len(theta))[::-1][:k]
    if which == "smallest":
        return np.arange(k)
    if which == "largest_magnitude":
        return np.argsort(-np.abs(theta), kind="stable")[:k]
    if which == "both_ends":
        top, bottom = (k + 1) // 2, k // 2
        ends = list(range(len(theta) - 1, len(theta) - 1 - top, -1)) + list(range(bottom))[::-1]
        return np.array(sorted(set(ends), key=lambda i: -theta[i]), dtype=int)
    raise ValueError(f"which must be one of {', '.join(WHICH)}, got {which!r}")


def _ritz(alpha: list[float], beta: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal T (LAPACK stemr)."""
    if len(alpha) == 1:
        return np.array(alpha), np.ones((1, 1))
    return eigh_tridiagonal(np.array(alpha), np.array(beta[: len(alpha) - 1]))


def lanczos(op: LinearOperator, k: int = 5, *, which: str = "largest", tol: float = 1e-8,
            maxiter: int | None = None, seed: int = 0, v0: torch.Tensor | None = None,
            callback: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> LanczosResult:
    """k extreme eigenpairs of the symmetric operator ``op`` (Lanczos 1950, full reorthogonalisation).

    Args:
        op: symmetric operator on float64 vectors of length ``op.size``; ``op.comm`` carries the
            ranks' decisions.
        k: number of eigenpairs wanted.
        which: ``largest`` (algebraic, default), ``smallest``, ``largest_magnitude`` or
            ``both_ends`` (⌈k/2⌉ largest and ⌊k/2⌋ smallest).
        tol: stop when every wanted Ritz residual ≤ ``tol · max|θ|`` (relative to the estimated
            spectral norm). Eigenvalue errors are about residual²/gap, so they are far smaller.
        maxiter: maximum Krylov dimension (default ``min(P, max(200, 30 k))``).
        seed: seeds the start vector (and any restart vector); identical on every rank.
        v0: start vector instead of a random one.
        callback: ``callback(iteration, wanted_ritz_values, residuals)`` after each check.

    Returns:
        :class:`LanczosResult`; ``converged`` is False if ``maxiter`` ran out first (the partial
        eigenpairs are still returned, with their residuals).
    """
    n = op.size
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the operator size {n}, got {k}")
    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    maxiter = min(n, maxiter if maxiter else max(200, 30 * k))
    if maxiter < k:
        raise ValueError(f"maxiter ({maxiter}) must be at least k ({k})")
    generator = torch.Generator().manual_seed(seed)
    basis = _Basis(n, min(maxiter, 64))
    q = v0.to(torch.float64).clone() if v0 is not None else torch.randn(n, generator=generator, dtype=torch.float64)
    q /= torch.linalg.vector_norm(q)
    alpha: list[float] = []
    beta: list[float] = []
    num_matvecs = 0
    converged = False
    theta = residuals = np.zeros(0)
    s = np.zeros((0, 0))
    wanted = np.zeros(0, dtype=int)
    for step in range(maxiter):
        basis.append(q)
        w = op.apply(q)
        num_matvecs += 1
        a = basis.orthogonalise_(w)
        a += basis.orthogonalise_(w)
        alpha.append(float(a[-1]))
        b = float(torch.linalg.vector_norm(w))
        m = step + 1
        theta, s = _ritz(alpha, beta)
        scale = max(float(np.max(np.abs(theta))), np.finfo(float).tiny)
        invariant = b <= 1e-12 * scale
        last_beta = 0.0 if invariant else b
        wanted = select(theta, k, which)
        residuals = np.abs(last_beta * s[-1, wanted])
        if callback is not None:
            callback(m, theta[wanted], residuals)
        done = m == n or (m >= k and bool(np.all(residuals <= tol * scale)))
        done, invariant = op.comm.bcast_object((done, invariant))
        if done:
            converged = True
            break
        if invariant:  # an invariant subspace: continue from a fresh direction
            q = torch.randn(n, generator=generator, dtype=torch.float64)
            basis.orthogonalise_(q)
            basis.orthogonalise_(q)
            q /= torch.linalg.vector_norm(q)
            beta.append(0.0)
        else:
            q = w / b
            beta.append(b)
    vectors = basis.rows.T @ torch.from_numpy(np.ascontiguousarray(s[:, wanted]))
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(dim=0, keepdim=True)))
    vectors *= torch.where(signs == 0, torch.ones_like(signs), signs)
    return LanczosResult(eigenvalues=theta[wanted].copy(), eigenvectors=vectors, residuals=residuals,
                         converged=converged, iterations=len(alpha), num_matvecs=num_matvecs,
                         alpha=np.array(alpha), beta=np.array(beta[: len(alpha) - 1]))
