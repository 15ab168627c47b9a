"""Spectral density by stochastic Lanczos quadrature (SLQ), and tools to smooth and compare densities.

The spectral measure of a symmetric P×P operator H is ``μ = (1/P) Σ_i δ(λ − λ_i)``. For a unit
vector q, ``qᵀ f(H) q = ∫ f dμ_q`` with ``μ_q = Σ_i (qᵀu_i)² δ(λ − λ_i)``, and m Lanczos steps from
q give the m-node Gauss quadrature of μ_q (Golub & Welsch 1969): the nodes are the eigenvalues θ_k
of the tridiagonal T_m and the weights the squared first components of its eigenvectors. It
integrates every polynomial of degree < 2m exactly. With random probes z (E[z zᵀ] = I), q = z/‖z‖
and ``E[μ_q] = μ`` for Rademacher probes (‖z‖² = P exactly); averaging the quadratures of a few
probes estimates μ (Lin, Saad & Yang 2016; Ubaru, Chen & Saad 2017; Ghorbani et al. 2019).

All probes run in lockstep: each step applies the operator once to the block of every still active
probe's Lanczos vector, so one pass over the data serves all probes. Every probe keeps its own
Krylov basis and reorthogonalises fully against it (two classical Gram–Schmidt passes, batched
over probes), as :mod:`hpcspec.solvers.lanczos` does. A probe whose β falls to ≤ 1e-12 of the
scale of its T has found an invariant subspace: its quadrature is already exact for every f (the
measure μ_q has only that many atoms), so it stops while the others go on. Rank 0 makes that
decision and broadcasts it, so stopping agrees on every rank. The bases live in the operator's
vector space (:mod:`hpcspec.parallel.vectors`): sharded, each rank keeps probes × m × P/R numbers.

A discrete measure is smoothed for display and comparison by Gaussian broadening,
``φ(t) = Σ_k w_k N(t; θ_k, σ²)``. The default σ is 1% of the spectral range (the range of the
values handed to :func:`spectral_grid`): wide enough that a handful of probes' atoms merge into a
curve, narrow enough to separate the outliers of a trained network's Hessian from its bulk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from .base import IterativeSolver, LinearOperator, State, as_operator
from .probes import DISTRIBUTIONS, probe_block

STREAM = "density"
#: A β at or below this fraction of the scale of T marks an invariant subspace (as in lanczos.py).
BREAKDOWN = 1e-12


@dataclass(frozen=True)
class DensityResult:
    """The per-probe Gauss quadratures found by :func:`slq`.

    Attributes:
        nodes: (probes, m) Ritz values of each probe's tridiagonal, ascending. A probe whose Krylov
            space was exhausted after ``steps[j] < m`` steps is padded with copies of its largest
            node, so rows stay ascending and inside the spectrum; padded entries have weight 0.
        weights: (probes, m) squared first components of T's eigenvectors (0 on padding); each
            row sums to 1.
        alpha: (probes, m) diagonals of the tridiagonals (0 padding).
        beta: (probes, m − 1) off-diagonals, the β after reorthogonalisation (0 padding).
        steps: (probes,) Lanczos steps each probe actually took.
        num_matvecs: operator products used, one per probe per step (a block of k columns is k).
    """

    nodes: np.ndarray
    weights: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    steps: np.ndarray
    num_matvecs: int

    def measure(self) -> tuple[np.ndarray, np.ndarray]:
        """The SLQ estimate of the spectral measure: atoms (ascending) and weights summing to 1.

        Every probe's nodes (padding dropped) with its weights divided by the number of probes.
        """
        probes = self.nodes.shape[0]
        keep = np.arange(self.nodes.shape[1])[None, :] < self.steps[:, None]
        atoms = self.nodes[keep]
        weights = self.weights[keep] / probes
        order = np.argsort(atoms, kind="stable")
        return atoms[order], weights[order]


def _quadrature(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (ascending) and weights of the Gauss rule of the tridiagonal (α, β) (symmetric solver)."""
    if len(alpha) == 1:
        return alpha.copy(), np.ones(1)
    theta, vectors = eigh_tridiagonal(alpha, beta)
    weights = vectors[0] ** 2
    return theta, weights / weights.sum()


class SLQ(IterativeSolver[DensityResult]):
    """Stochastic Lanczos quadrature as a resumable solver; see :func:`slq` for the arguments.

    One :meth:`step` is one Lanczos step of every still active probe (one data pass). The state
    holds the filled part of every probe's basis (none once finished), α, β, the breakdown scales
    and the active set.
    """

    kind = "slq"

    def __init__(self, op: LinearOperator, *, probes: int = 4, steps: int = 80, seed: int = 0,
                 distribution: str = "rademacher") -> None:
        op = as_operator(op)
        n = op.size
        if probes < 1:
            raise ValueError(f"probes must be at least 1, got {probes}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"probe distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
        self.op, self.probes = op, probes
        self.space = space = op.space
        self.m = m = min(steps, n)
        start = probe_block(n, seed, STREAM, range(probes), distribution)  # (P, probes)
        start /= torch.linalg.vector_norm(start, dim=0, keepdim=True)
        # basis[j, i] = this rank's slice of the i-th Lanczos vector of probe j
        self.basis = torch.zeros(probes, m, space.local_size, dtype=torch.float64)
        self.basis[:, 0] = space.local(start).T
        self.alpha = np.zeros((probes, m))
        self.beta = np.zeros((probes, max(m - 1, 0)))
        self.scale = np.zeros(probes)  # Gershgorin bound on ‖T‖ per probe, for the breakdown test
        self.taken = np.zeros(probes, dtype=np.int64)
        self.active = np.arange(probes, dtype=np.int64)
        self.step_index = 0
        self.num_matvecs = 0
        self.done = False

    def step(self) -> None:
        step, active, basis, space = self.step_index, self.active, self.basis, self.space
        block = space.gather(basis[active, step].T.contiguous())  # (P, active): one data pass serves every active probe
        w = space.apply(self.op, block).T.contiguous()  # (active, local rows)
        self.num_matvecs += len(active)
        rows = basis[:, : step + 1] if len(active) == self.probes else basis[active, : step + 1]  # (active, m', n)
        coefficients = space.sum(torch.bmm(rows, w.unsqueeze(2)))  # classical Gram–Schmidt, twice
        w -= torch.bmm(rows.transpose(1, 2), coefficients).squeeze(2)
        again = space.sum(torch.bmm(rows, w.unsqueeze(2)))
        w -= torch.bmm(rows.transpose(1, 2), again).squeeze(2)
        coefficients = (coefficients + again).squeeze(2)
        a = coefficients[:, step].numpy()
        b = space.norms(w).numpy()
        self.alpha[active, step] = a
        self.taken[active] = step + 1
        self.step_index = step + 1
        if step == self.m - 1:
            self.done = True
            return
        previous = self.beta[active, step - 1] if step > 0 else np.zeros(len(active))
        self.scale[active] = np.maximum(self.scale[active], np.abs(a) + previous + b)
        stop = b <= BREAKDOWN * np.maximum(self.scale[active], np.finfo(float).tiny)
        stop = np.asarray(self.op.comm.bcast_object(stop.tolist()), dtype=bool)
        going = ~stop
        self.beta[active[going], step] = b[going]
        basis[active[going], step + 1] = w[torch.from_numpy(going)] / torch.from_numpy(b[going]).unsqueeze(1)
        self.active = active[going]
        self.done = not len(self.active)

    def planned_matvecs(self) -> tuple[int, bool]:
        """``probes × steps`` products, fewer for a probe whose recurrence breaks down."""
        return self.probes * self.m, True

    def state_dict(self) -> State:
        filled = 0 if self.done else self.step_index + 1  # a finished run needs only α, β
        return {"kind": self.kind, "basis": self.space.export(self.basis[:, :filled].clone()),
                "alpha": self.alpha.copy(), "beta": self.beta.copy(), "scale": self.scale.copy(),
                "taken": self.taken.copy(), "active": self.active.copy(), "step": self.step_index,
                "num_matvecs": self.num_matvecs, "done": self.done}

    def load_state_dict(self, state: State) -> None:
        self._check_kind(state)
        filled = self.space.take(state["basis"])
        if filled.shape[:1] != (self.probes,) or filled.shape[1] > self.m or state["alpha"].shape != self.alpha.shape:
            raise ValueError(f"SLQ state of shape {tuple(filled.shape)} does not fit {self.probes} probes × "
                             f"{self.m} steps")
        self.basis.zero_()
        self.basis[:, : filled.shape[1]] = filled
        self.alpha, self.beta = state["alpha"].copy(), state["beta"].copy()
        self.scale, self.taken = state["scale"].copy(), state["taken"].astype(np.int64)
        self.active = state["active"].astype(np.int64)
        self.step_index, self.num_matvecs = int(state["step"]), int(state["num_matvecs"])
        self.done = bool(state["done"])

    def result(self) -> DensityResult:
        probes, m = self.probes, self.m
        nodes = np.zeros((probes, m))
        weights = np.zeros((probes, m))
        for j in range(probes):
            s = self.taken[j]
            theta, w_j = _quadrature(self.alpha[j, :s], self.beta[j, : s - 1])
            nodes[j, :s], weights[j, :s] = theta, w_j
            nodes[j, s:] = theta[-1]
        return DensityResult(nodes=nodes, weights=weights, alpha=self.alpha.copy(), beta=self.beta.copy(),
                             steps=self.taken.copy(), num_matvecs=self.num_matvecs)


def slq(op: LinearOperator, *, probes: int = 4, steps: int = 80, seed: int = 0,
        distribution: str = "rademacher") -> DensityResult:
    """Stochastic Lanczos quadrature of the spectral measure of the symmetric operator ``op``.

    Args:
        op: symmetric operator on float64 vectors of length ``op.size``; ``op.comm`` carries
            rank 0's breakdown decisions.
        probes: number of random start vectors; probe j is ``probe(P, seed, "density", j)``, so it
            depends only on (seed, j): the first k rows of a run with more probes are the run with k.
        steps: Lanczos steps per probe (nodes per quadrature), capped at P. Polynomials of degree
            < 2·steps are integrated exactly against each probe's measure.
        seed: seeds the probes (identical on every rank).
        distribution: ``rademacher`` (default: ‖z‖² = P, so the average is unbiased) or ``gaussian``.

    Returns:
        :class:`DensityResult`. Memory: the bases, probes × steps × P float64 numbers.
    """
    return SLQ(op, probes=probes, steps=steps, seed=seed, distribution=distribution).run()


def spectral_grid(values, sigma_fraction: float = 0.01, points: int = 1000, *,
                  padding: float = 5.0) -> tuple[np.ndarray, float]:
    """An evaluation grid and a Gaussian width for smoothing a spectrum.

    Args:
        values: points that span the spectrum — exact eigenvalues, SLQ nodes, or just
            ``[λmin, λmax]``; only their minimum and maximum are used.
        sigma_fraction: σ as a fraction of the range ``max − min`` (default 1%). A zero range
            (one distinct value) uses ``max(|value|, 1)`` in place of the range.
        points: grid points.
        padding: the grid runs from ``min − padding·σ`` to ``max + padding·σ``, so a density
            smoothed with σ loses < 1e-6 of its mass off the grid at the default 5.

    Returns:
        ``(grid, sigma)``: an ascending (points,) array and σ.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("spectral_grid needs at least one finite value")
    if not sigma_fraction > 0:
        raise ValueError(f"sigma_fraction must be > 0, got {sigma_fraction}")
    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")
    lo, hi = float(values.min()), float(values.max())
    width = hi - lo if hi > lo else max(abs(hi), 1.0)
    sigma = sigma_fraction * width
    return np.linspace(lo - padding * sigma, hi + padding * sigma, points), sigma


def smoothed_density(atoms, weights, grid, sigma: float) -> np.ndarray:
    """``φ(t) = Σ_k w_k N(t; θ_k, σ²)`` on the grid: the measure broadened by a Gaussian of width σ.

    It integrates to the total weight (1 for a probability measure) up to the mass outside the grid.
    """
    atoms = np.asarray(atoms, dtype=float).ravel()
    weights = np.asarray(weights, dtype=float).ravel()
    grid = np.asarray(grid, dtype=float)
    if atoms.shape != weights.shape:
        raise ValueError(f"atoms and weights differ in size: {atoms.size} and {weights.size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    density = np.zeros(grid.shape)
    norm = 1.0 / (sigma * np.sqrt(2.0 * np.pi))
    chunk = max(1, 4_000_000 // max(grid.size, 1))  # bound the (chunk, grid) temporary
    for begin in range(0, atoms.size, chunk):
        z = (grid[None, :] - atoms[begin:begin + chunk, None]) / sigma
        density += weights[begin:begin + chunk] @ np.exp(-0.5 * z * z)
    return density * norm


def _probability(atoms, weights, name: str) -> tuple[np.ndarray, np.ndarray]:
    atoms = np.asarray(atoms, dtype=float).ravel()
    weights = np.asarray(weights, dtype=float).ravel()
    if atoms.shape != weights.shape or atoms.size == 0:
        raise ValueError(f"measure {name}: atoms and weights must be non-empty and of one size")
    if np.any(weights < 0) or not weights.sum() > 0:
        raise ValueError(f"measure {name}: weights must be non-negative with a positive sum")
    return atoms, weights / weights.sum()


def wasserstein1(atoms_a, weights_a, atoms_b, weights_b) -> float:
    """The exact 1-Wasserstein distance ``∫ |F_a − F_b| dt`` between two discrete measures on ℝ.

    Each measure is normalised to total mass 1 first (e.g. pass ``np.ones(P)`` for the exact
    spectral measure). Atoms need not be sorted or distinct.
    """
    xa, pa = _probability(atoms_a, weights_a, "a")
    xb, pb = _probability(atoms_b, weights_b, "b")
    x = np.concatenate([xa, xb])
    signed = np.concatenate([pa, -pb])  # jumps of F_a − F_b
    order = np.argsort(x, kind="stable")
    x, difference = x[order], np.cumsum(signed[order])
    return float(np.sum(np.abs(difference[:-1]) * np.diff(x)))


def l1_distance(grid, f, g) -> float:
    """``∫ |f − g|`` over the grid by the trapezoid rule (for two densities sampled on one grid)."""
    grid, f, g = (np.asarray(a, dtype=float) for a in (grid, f, g))
    if not grid.shape == f.shape == g.shape or grid.ndim != 1:
        raise ValueError("l1_distance needs a 1-D grid and two arrays of its shape")
    gap = np.abs(f - g)
    return float(np.sum(0.5 * (gap[1:] + gap[:-1]) * np.diff(grid)))
