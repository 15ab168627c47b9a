"""Lanczos with full reorthogonalisation for a few extreme eigenpairs of a symmetric operator.

The Krylov basis is kept and every new vector is orthogonalised against all of it twice by
classical Gram–Schmidt ("twice is enough", Giraud et al. 2005), as one batched product ``Qᵀw`` per
pass. Without it, float32 Lanczos returns ghost copies of converged eigenvalues (Ghorbani et al.
2019, appendix; Paige 1971). Convergence is judged by Ritz residuals ``|β_m s_{m,i}|`` — the exact
norm ``‖H y_i − θ_i y_i‖`` in exact arithmetic — never by how much an estimate moved.

SPMD: every rank runs this loop; rank 0 decides convergence and breakdown and broadcasts the
decision, so all ranks stop together. Vectors live in the operator's space
(:mod:`hpcspec.parallel.vectors`): replicated, or sharded so that each rank keeps only its slice of the
basis (memory m·P/R) and the inner products cost one allreduce of m scalars. :class:`Lanczos` runs it one
product at a time and can be checkpointed between products (:mod:`hpcspec.solvers.base`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from ..choices import WHICH
from ..parallel.vectors import VectorSpace
from .base import IterativeSolver, LinearOperator, State, as_operator, check_tol, resolve_tol
from .probes import probe

STREAM = "lanczos"


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
    #: ``(lo, hi)`` when ``eigenvectors`` holds only rows [lo, hi) (a sharded run); None: whole.
    rows: tuple[int, int] | None = None
    #: ``lanczos`` (single vector) or ``block`` (:mod:`hpcspec.solvers.block_lanczos`).
    method: str = "lanczos"
    #: Vectors per data pass, and the data passes spent (one pass applies one block).
    block_size: int = 1
    data_passes: int = 0
    #: Thick restarts, pairs locked, completeness-check rounds and whether the last one found nothing.
    restarts: int = 0
    locked: int = 0
    checks: int = 0
    complete: bool = False
    #: The basis bound and the most vectors held at once.
    max_basis: int = 0
    peak_basis: int = 0
    #: What the result guarantees about repeated eigenvalues, in one line.
    guarantee: str = "single-vector Lanczos: one copy of a repeated eigenvalue at most (use eigen.method = block)"


class KrylovBasis:
    """Orthonormal Krylov vectors as rows of a buffer that doubles when full, up to ``limit`` rows."""

    def __init__(self, space: VectorSpace, capacity: int, limit: int) -> None:
        self.space, self.limit = space, max(limit, capacity, 1)
        self._rows = torch.empty(max(capacity, 1), space.local_size, dtype=torch.float64)
        self.count = 0

    def append(self, vector: torch.Tensor) -> None:
        if self.count == self._rows.shape[0]:
            grown = torch.empty(min(2 * self.count, self.limit), self._rows.shape[1], dtype=torch.float64)
            grown[: self.count] = self._rows
            self._rows = grown
        self._rows[self.count] = vector
        self.count += 1

    @property
    def rows(self) -> torch.Tensor:
        """The basis vectors held, as rows (this rank's slice of each when vectors are sharded)."""
        return self._rows[: self.count]

    @property
    def allocated(self) -> torch.Tensor:
        """The whole allocation, scratch rows included: what the basis costs in memory."""
        return self._rows

    def orthogonalise_(self, w: torch.Tensor) -> torch.Tensor:
        """Remove from ``w`` (in place) its components along the basis; return the coefficients."""
        coefficients = self.space.sum(self.rows @ w)
        w -= self.rows.T @ coefficients
        return coefficients


def check_request(size: int, k: int, which: str) -> None:
    """Raise ValueError unless k eigenpairs at the end ``which`` can be asked of a size-``size`` operator."""
    if not 1 <= k <= size:
        raise ValueError(f"k must be between 1 and the operator size {size}, got {k}")
    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}, got {which!r}")


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


class Lanczos(IterativeSolver[LanczosResult]):
    """Lanczos with full reorthogonalisation as a resumable solver; see :func:`lanczos` for the arguments.

    One :meth:`step` is one product. The state holds the basis (count × P), the next vector, α, β
    and the number of restarts (the restart vectors are probes ``(seed, "lanczos", i)``); once
    finished, the k Ritz vectors instead of the basis.
    """

    kind = "lanczos"

    def __init__(self, op: LinearOperator, k: int = 5, *, which: str = "largest", tol: float | None = None,
                 maxiter: int | None = None, seed: int = 0, v0: torch.Tensor | None = None,
                 callback: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> None:
        op = as_operator(op)
        n = op.size
        check_request(n, k, which)
        self.maxiter = min(n, maxiter if maxiter else max(200, 30 * k))
        if self.maxiter < k:
            raise ValueError(f"maxiter ({self.maxiter}) must be at least k ({k})")
        self.op, self.k, self.which, self.tol, self.seed, self.callback = op, k, which, resolve_tol(tol, op), seed, callback
        self.space = op.space
        self.basis = KrylovBasis(self.space, min(self.maxiter, 64), self.maxiter)
        q = v0.to(torch.float64).clone() if v0 is not None else probe(n, seed, STREAM, 0, "gaussian")
        self.q = q / torch.linalg.vector_norm(q)  # whole on every rank: the next vector to multiply
        self.alpha: list[float] = []
        self.beta: list[float] = []
        self.restarts = 0
        self.num_matvecs = 0
        self.last_beta = 0.0
        self.converged = False
        self.done = False
        self._vectors: torch.Tensor | None = None

    def step(self) -> None:
        op, n, space = self.op, self.op.size, self.space
        self.basis.append(space.local(self.q))
        w = space.apply(op, self.q)  # this rank's rows of H q
        self.num_matvecs += 1
        a = self.basis.orthogonalise_(w)
        a += self.basis.orthogonalise_(w)
        self.alpha.append(float(a[-1]))
        b = float(space.norms(w))
        m = len(self.alpha)
        theta, s = _ritz(self.alpha, self.beta)
        scale = max(float(np.max(np.abs(theta))), np.finfo(float).tiny)
        invariant = b <= 1e-12 * scale
        self.last_beta = 0.0 if invariant else b
        wanted = select(theta, self.k, self.which)
        residuals = np.abs(self.last_beta * s[-1, wanted])
        if self.callback is not None:
            self.callback(m, theta[wanted], residuals)
        finished = m == n or (m >= self.k and bool(np.all(residuals <= self.tol * scale)))
        finished, invariant = op.comm.bcast_object((finished, invariant))
        if finished or m == self.maxiter:
            self.converged, self.done = bool(finished), True
            return
        if invariant:  # an invariant subspace: continue from a fresh direction
            self.restarts += 1
            q = space.local(probe(n, self.seed, STREAM, self.restarts, "gaussian")).clone()
            self.basis.orthogonalise_(q)
            self.basis.orthogonalise_(q)
            self.q = space.gather(q / space.norms(q))
            self.beta.append(0.0)
        else:
            self.q = space.gather(w / b)
            self.beta.append(b)

    def planned_matvecs(self) -> tuple[int, bool]:
        """At most ``maxiter`` products (one per step), fewer once the pairs converge."""
        return self.maxiter, True

    def state_dict(self) -> State:
        space = self.space
        if self.done:  # a finished run carries its k Ritz vectors, not its whole basis
            vectors = self._ritz_vectors()[2]
            return {"kind": self.kind, "basis": space.export(self.basis.rows[:0].clone()),
                    "vectors": space.export(vectors.T.contiguous()),
                    "q": space.export(space.local(self.q).clone()), "alpha": np.array(self.alpha, dtype=np.float64),
                    "beta": np.array(self.beta, dtype=np.float64), "restarts": self.restarts,
                    "num_matvecs": self.num_matvecs, "last_beta": self.last_beta, "converged": self.converged,
                    "done": self.done}
        return {"kind": self.kind, "basis": space.export(self.basis.rows.clone()),
                "q": space.export(space.local(self.q).clone()),
                "alpha": np.array(self.alpha, dtype=np.float64), "beta": np.array(self.beta, dtype=np.float64),
                "restarts": self.restarts, "num_matvecs": self.num_matvecs, "last_beta": self.last_beta,
                "converged": self.converged, "done": self.done}

    def load_state_dict(self, state: State) -> None:
        self._check_kind(state)
        space = self.space
        rows = space.take(state["basis"])
        self.basis = KrylovBasis(space, max(min(self.maxiter, 64), rows.shape[0]), self.maxiter)
        for row in rows:
            self.basis.append(row)
        self.q = space.gather(space.take(state["q"]).clone())
        self.alpha = [float(a) for a in state["alpha"]]
        self.beta = [float(b) for b in state["beta"]]
        self.restarts, self.num_matvecs = int(state["restarts"]), int(state["num_matvecs"])
        self.last_beta = float(state["last_beta"])
        self.converged, self.done = bool(state["converged"]), bool(state["done"])
        self._vectors = space.take(state["vectors"]).T.contiguous() if "vectors" in state else None

    def _ritz_vectors(self) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Wanted Ritz values, residuals and unit Ritz vectors (this rank's rows of (P, k)), sign fixed."""
        theta, s = _ritz(self.alpha, self.beta)
        wanted = select(theta, self.k, self.which)
        residuals = np.abs(self.last_beta * s[-1, wanted])
        if self._vectors is not None:  # restored from a finished state, whose basis was not kept
            return theta[wanted].copy(), residuals, self._vectors.clone()
        vectors = self.basis.rows.T @ torch.from_numpy(np.ascontiguousarray(s[:, wanted]))
        vectors *= self.space.signs(vectors)
        return theta[wanted].copy(), residuals, vectors

    def result(self) -> LanczosResult:
        eigenvalues, residuals, vectors = self._ritz_vectors()
        m = len(self.alpha)
        return LanczosResult(eigenvalues=eigenvalues, eigenvectors=vectors, residuals=residuals,
                             converged=self.converged, iterations=m, num_matvecs=self.num_matvecs,
                             alpha=np.array(self.alpha), beta=np.array(self.beta[: m - 1]),
                             rows=(self.space.lo, self.space.hi) if self.space.sharded else None,
                             data_passes=self.num_matvecs, restarts=self.restarts, max_basis=self.maxiter,
                             peak_basis=m)


def lanczos(op: LinearOperator, k: int = 5, *, which: str = "largest", tol: float | None = None,
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
            None: the default for the operator's compute dtype (:data:`~hpcspec.choices.DEFAULT_TOL`).
        maxiter: maximum Krylov dimension (default ``min(P, max(200, 30 k))``).
        seed: seeds the start vector (probe ``(seed, "lanczos", 0)``) and any restart vector
            (probes 1, 2, …); identical on every rank.
        v0: start vector instead of a random one.
        callback: ``callback(iteration, wanted_ritz_values, residuals)`` after each check.

    Returns:
        :class:`LanczosResult`; ``converged`` is False if ``maxiter`` ran out first (the partial
        eigenpairs are still returned, with their residuals).
    """
    check_tol(tol)
    return Lanczos(op, k, which=which, tol=tol, maxiter=maxiter, seed=seed, v0=v0, callback=callback).run()
