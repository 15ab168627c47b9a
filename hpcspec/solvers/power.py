"""Power iteration with deflation: PyHessian's top-eigenvalue method, with honest residuals.

This reproduces the semantics of PyHessian's ``hessian.eigenvalues(maxIter=100, tol=1e-3, top_n)``
(Yao et al. 2020) so published PyHessian numbers can be compared like with like: for each wanted
pair, a random unit start; every iteration orthogonalises the iterate against the eigenvectors
already found (deflation by projection), multiplies by H, takes the Rayleigh quotient and
normalises the product; the loop stops when the Rayleigh quotient's relative change is below
``tol``. That stopping rule is PyHessian's and is kept for parity only: a small change between
iterations says nothing about the distance to an eigenvalue when the spectral gap is small (the
iterate moves slowly), or when ±λ share the largest magnitude (the quotient stands still while the
vector oscillates). So each returned pair also carries its true residual ``‖H v − θ v‖``.

Power iteration converges to the eigenvalue of largest *magnitude* of the deflated operator, at
the rate ``|λ₂/λ₁|`` per product; use :func:`~hpcspec.solvers.lanczos.lanczos` for accurate pairs.

SPMD: every rank runs this loop on identical replicated vectors; rank 0 decides when to stop and
broadcasts the decision, so all ranks stop together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..operator import LinearOperator
from .orthogonal import project_out_
from .probes import probe

#: PyHessian adds this to ``|θ_prev|`` in its relative-change test (so θ ≈ 0 cannot divide by 0).
PYHESSIAN_EPS = 1e-6


@dataclass(frozen=True)
class PowerResult:
    """Eigenpairs found by :func:`power_iteration`, in the order found.

    Attributes:
        eigenvalues: (k,) Rayleigh quotients ``θ = vᵀ H v``, one per deflation step (usually, but
            not necessarily, in decreasing magnitude).
        eigenvectors: (P, k) float64 unit vectors, sign fixed so that the entry of largest
            magnitude is positive; each is orthogonal to the ones before it.
        residuals: (k,) true residual norms ``‖H v − θ v‖`` of the returned pairs (H itself, not
            the deflated operator); unlike PyHessian's stopping rule, an error measure.
        iterations: (k,) products spent on each pair.
        num_matvecs: total products (``iterations.sum()``).
        converged: whether every pair met PyHessian's relative-change rule before ``maxiter``
            (a statement about that rule, not about accuracy: read ``residuals``).
    """

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor
    residuals: np.ndarray
    iterations: np.ndarray
    num_matvecs: int
    converged: bool


def power_iteration(op: LinearOperator, k: int = 1, *, maxiter: int = 100, tol: float = 1e-3,
                    seed: int = 0) -> PowerResult:
    """k eigenpairs of largest magnitude of the symmetric ``op`` by power iteration with deflation.

    Args:
        op: symmetric operator on float64 vectors of length ``op.size``; ``op.comm`` carries the
            ranks' decisions.
        k: number of eigenpairs (PyHessian's ``top_n``).
        maxiter: products per pair at most (PyHessian's ``maxIter``, default 100).
        tol: PyHessian's rule: stop a pair once ``|θ − θ_prev| / (|θ_prev| + 1e-6) < tol``
            (default 1e-3). Not an error estimate — see ``residuals``.
        seed: seeds the start vectors (probe stream ``"power"``, index = pair number); identical
            on every rank.

    Each pair j starts from a Gaussian probe; each iteration does
    ``v ← orth(v) / ‖orth(v)‖`` (orthogonal to pairs 0…j−1), ``w = H v``, ``θ = vᵀ w``,
    then ``v ← w / ‖w‖`` for the next iteration. The pair returned is the last ``(θ, v)`` that
    was multiplied, so its residual ``‖w − θ v‖`` comes from the product already in hand (no extra
    product). PyHessian instead returns the previous iteration's θ with the next iterate ``w/‖w‖``;
    the products spent and the stopping decision are the same. A product that is exactly zero
    ends the pair with the exact pair ``(0, v)``.

    Returns:
        :class:`PowerResult`; ``converged`` is False if some pair used up ``maxiter`` (its last
        iterate is still returned, with its residual).
    """
    n = op.size
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the operator size {n}, got {k}")
    if maxiter < 1:
        raise ValueError(f"maxiter must be at least 1, got {maxiter}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    found = torch.zeros(n, k, dtype=torch.float64)
    eigenvalues = np.zeros(k)
    residuals = np.zeros(k)
    iterations = np.zeros(k, dtype=int)
    converged = True
    for j in range(k):
        previous = found[:, :j]
        v = probe(n, seed, "power", j, "gaussian")
        v /= torch.linalg.vector_norm(v)
        theta_prev: float | None = None
        stopped = False
        for step in range(maxiter):
            project_out_(v, previous)
            v /= torch.linalg.vector_norm(v)
            w = op.apply(v)
            theta = float(v @ w)
            norm = float(torch.linalg.vector_norm(w))
            iterations[j] = step + 1
            done = norm == 0.0 or (theta_prev is not None
                                   and abs(theta - theta_prev) / (abs(theta_prev) + PYHESSIAN_EPS) < tol)
            stopped = bool(op.comm.bcast_object(done))
            if stopped or step == maxiter - 1:
                break
            theta_prev = theta
            v = w / norm
        converged = converged and stopped
        eigenvalues[j] = theta
        residuals[j] = float(torch.linalg.vector_norm(w - theta * v))
        found[:, j] = v
    signs = torch.sign(found.gather(0, found.abs().argmax(dim=0, keepdim=True)))
    found *= torch.where(signs == 0, torch.ones_like(signs), signs)
    return PowerResult(eigenvalues=eigenvalues, eigenvectors=found, residuals=residuals, iterations=iterations,
                       num_matvecs=int(iterations.sum()), converged=converged)
