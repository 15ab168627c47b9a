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
broadcasts the decision, so all ranks stop together. :class:`PowerIteration` runs it one product
at a time and can be checkpointed between products (:mod:`hpcspec.solvers.base`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..choices import POWER_MAXITER, POWER_TOL
from ..parallel.finite import checked_apply
from .base import IterativeSolver, LinearOperator, State, as_operator, check_tol
from .orthogonal import project_out_
from .probes import probe

#: PyHessian adds this to ``|θ_prev|`` in its relative-change test (so θ ≈ 0 cannot divide by 0).
PYHESSIAN_EPS = 1e-6
STREAM = "power"


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


class PowerIteration(IterativeSolver[PowerResult]):
    """Power iteration with deflation as a resumable solver; see :func:`power_iteration` for the arguments.

    One :meth:`step` is one product. The state holds the pair being computed and the product
    within it, the current iterate ``v``, the previous Rayleigh quotient, the vectors found so far
    (as the rows of a (k, P) tensor, zero rows not yet found), the per-pair eigenvalues, residuals
    and product counts, and whether every finished pair met the stopping rule. A pair's start vector
    is the probe ``(seed, "power", j)``, generated when the pair begins.
    """

    kind = "power"

    def __init__(self, op: LinearOperator, k: int = 1, *, maxiter: int = POWER_MAXITER, tol: float = POWER_TOL,
                 seed: int = 0) -> None:
        op = as_operator(op)
        n = op.size
        if not 1 <= k <= n:
            raise ValueError(f"k must be between 1 and the operator size {n}, got {k}")
        if maxiter < 1:
            raise ValueError(f"maxiter must be at least 1, got {maxiter}")
        if not tol >= 0:
            raise ValueError(f"tol must be >= 0, got {tol}")
        self.op, self.k, self.maxiter, self.tol, self.seed = op, k, maxiter, tol, seed
        self.found = torch.zeros(n, k, dtype=torch.float64)  # column j: pair j's vector (sign fixed in result())
        self.eigenvalues = np.zeros(k)
        self.residuals = np.zeros(k)
        self.iterations = np.zeros(k, dtype=int)
        self.converged = True
        self.pair = 0  # the pair being computed
        self.pair_step = 0  # products already spent on it
        self.v = self._start(0)
        self.theta_prev: float | None = None
        self.num_matvecs = 0
        self.done = False

    def _start(self, j: int) -> torch.Tensor:
        v = probe(self.op.size, self.seed, STREAM, j, "gaussian")
        v /= torch.linalg.vector_norm(v)
        return v

    def step(self) -> None:
        j, step, v = self.pair, self.pair_step, self.v
        project_out_(v, self.found[:, :j])
        v /= torch.linalg.vector_norm(v)
        w = checked_apply(self.op, v)
        self.num_matvecs += 1
        theta = float(v @ w)
        norm = float(torch.linalg.vector_norm(w))
        self.iterations[j] = step + 1
        theta_prev = self.theta_prev
        done = norm == 0.0 or (theta_prev is not None
                               and abs(theta - theta_prev) / (abs(theta_prev) + PYHESSIAN_EPS) < self.tol)
        stopped = bool(self.op.comm.bcast_object(done))
        if stopped or step == self.maxiter - 1:
            self.converged = self.converged and stopped
            self.eigenvalues[j] = theta
            self.residuals[j] = float(torch.linalg.vector_norm(w - theta * v))
            self.found[:, j] = v
            self.pair, self.pair_step, self.theta_prev = j + 1, 0, None
            if self.pair == self.k:
                self.done = True
            else:
                self.v = self._start(self.pair)
            return
        self.theta_prev = theta
        self.v = w / norm
        self.pair_step = step + 1

    def planned_matvecs(self) -> tuple[int, bool]:
        """At most ``maxiter`` products per pair, fewer for each pair that meets the tolerance."""
        return self.k * self.maxiter, True

    def state_dict(self) -> State:
        return {"kind": self.kind, "pair": self.pair, "pair_step": self.pair_step, "v": self.v.clone(),
                "theta_prev": self.theta_prev, "found": self.found.T.contiguous().clone(),
                "eigenvalues": self.eigenvalues.copy(), "residuals": self.residuals.copy(),
                "iterations": self.iterations.copy(), "converged": self.converged,
                "num_matvecs": self.num_matvecs, "done": self.done}

    def load_state_dict(self, state: State) -> None:
        self._check_kind(state)
        found = state["found"]
        if tuple(found.shape) != (self.k, self.op.size) or state["eigenvalues"].shape != (self.k,):
            raise ValueError(f"power state for {found.shape[0]} pairs of size {found.shape[-1]} does not fit "
                             f"{self.k} pairs of size {self.op.size}")
        self.found = torch.zeros(self.op.size, self.k, dtype=torch.float64)  # laid out as in __init__
        self.found.copy_(found.T)
        self.v = state["v"].to(torch.float64).clone()
        self.pair, self.pair_step = int(state["pair"]), int(state["pair_step"])
        self.theta_prev = None if state["theta_prev"] is None else float(state["theta_prev"])
        self.eigenvalues = np.array(state["eigenvalues"], dtype=np.float64)
        self.residuals = np.array(state["residuals"], dtype=np.float64)
        self.iterations = np.array(state["iterations"], dtype=int)
        self.converged, self.done = bool(state["converged"]), bool(state["done"])
        self.num_matvecs = int(state["num_matvecs"])

    def result(self) -> PowerResult:
        found = self.found.clone()
        signs = torch.sign(found.gather(0, found.abs().argmax(dim=0, keepdim=True)))
        found *= torch.where(signs == 0, torch.ones_like(signs), signs)
        return PowerResult(eigenvalues=self.eigenvalues.copy(), eigenvectors=found, residuals=self.residuals.copy(),
                           iterations=self.iterations.copy(), num_matvecs=int(self.iterations.sum()),
                           converged=self.converged)


def power_iteration(op: LinearOperator, k: int = 1, *, maxiter: int = POWER_MAXITER, tol: float = POWER_TOL,
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
    check_tol(tol)
    return PowerIteration(op, k, maxiter=maxiter, tol=tol, seed=seed).run()
