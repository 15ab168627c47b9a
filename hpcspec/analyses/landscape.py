"""The loss along Hessian eigenvectors (PyHessian, Yao et al. 2020, Fig. 1 and 4), distributed over the data.

For the weights θ, the top eigenvectors v₁, v₂ (unit norm) and a random unit direction r:

    1-D:  L(θ + α v₁) and L(θ + α r),   α ∈ [−radius, radius] on ``points`` points;
    2-D:  L(θ + α v₁ + β v₂),           α, β ∈ [−radius, radius] on ``points_2d`` points each,

with L the mean loss over the whole data set. α is a distance in parameter space (the directions
have unit Euclidean norm, as in PyHessian's tutorial, which walks ``lams = linspace(-0.5, 0.5, 21)``).
Near α = 0 the curve along v₁ is L + α g·v₁ + ½ λ₁ α² + O(α³); along a random direction the
curvature is rᵀHr ≈ tr(H)/P, typically far flatter — the contrast the plots show.

Every rank evaluates its own shard's summed loss at every grid point (no gradient), then one
allreduce carries all the sums and each is divided by the global count: one message for the whole
landscape. The parameters are set to θ + Σ c_j d_j (computed in float64, rounded once to the model's
dtype) and restored bitwise afterwards. Only the parameters in the Hessian (``op.layout``) move;
frozen ones stay put. Knows nothing of files or the command line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..curvature.operator import HessianOperator

#: Offset of the random direction's seed from the run seed (so it differs from the solvers' probes).
RANDOM_STREAM = 0x1A4D5C


@dataclass(frozen=True)
class Landscape:
    """Mean losses on the grids of :func:`loss_landscape`.

    Attributes:
        alphas: (n,) steps along the 1-D directions.
        loss_top: (n,) L(θ + α v₁).
        loss_random: (n,) L(θ + α r) for the seeded random unit direction r, or None.
        betas: (m,) steps along v₂ for the 2-D grid, or None (no 2-D grid).
        loss_2d: (m, m) with ``loss_2d[i, j] = L(θ + betas[i] v₁ + betas[j] v₂)``, or None.
        eigenvalues: the eigenvalues of v₁ (and v₂ when the 2-D grid was computed).
        loss: L(θ).
        slope: g·v₁, the directional derivative along v₁ (for the quadratic model), NaN if unknown.
        seed: the seed the random direction was drawn from.
    """

    alphas: np.ndarray
    loss_top: np.ndarray
    loss_random: np.ndarray | None
    betas: np.ndarray | None
    loss_2d: np.ndarray | None
    eigenvalues: np.ndarray
    loss: float
    slope: float
    seed: int


def random_direction(size: int, seed: int) -> torch.Tensor:
    """A unit-norm Gaussian direction of length ``size`` (float64), a function of ``seed`` only —
    the same on every rank and for every rank count."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(size, generator=gen, dtype=torch.float64)
    return direction / torch.linalg.vector_norm(direction)


def losses_at(op: HessianOperator, directions: torch.Tensor, coefficients: np.ndarray) -> np.ndarray:
    """Mean loss at θ + directions @ c for every row c of ``coefficients`` (collective: one allreduce).

    Args:
        op: the operator whose parameters, data shard, loss and BatchNorm handling are used.
        directions: (P, d) float64, whole on every rank (the same on every rank).
        coefficients: (n, d) the combinations to evaluate.

    Returns:
        (n,) float64 mean losses. The parameters are restored bitwise before returning (also on
        an exception).
    """
    directions = directions.to(torch.float64).reshape(op.size, -1)
    coefficients = np.asarray(coefficients, dtype=np.float64).reshape(-1, directions.shape[1])
    params = op.parameters
    saved = [p.detach().clone() for p in params]
    theta = torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in params])
    sums = torch.zeros(len(coefficients), dtype=torch.float64)
    try:
        for i, c in enumerate(coefficients):
            point = theta + directions @ torch.from_numpy(c)
            with torch.no_grad():
                for param, piece in zip(params, op.layout.split(point)):
                    param.copy_(piece.to(param.device, param.dtype))
            sums[i] = op.local_loss_sum()
    finally:
        with torch.no_grad():
            for param, original in zip(params, saved):
                param.copy_(original)
    return (op.comm.allreduce_sum_(sums) / op.total_count).numpy()


def loss_landscape(op: HessianOperator, top: torch.Tensor, eigenvalues: np.ndarray, *, radius: float, points: int,
                   points_2d: int, random: bool, seed: int, slope: float = float("nan")) -> Landscape:
    """The 1-D curves along v₁ (and a random direction) and the 2-D grid over (v₁, v₂) (collective).

    Args:
        op: the Hessian operator of the run (its parameters are the θ walked from).
        top: (P,) or (P, ≥2) whole unit eigenvectors, v₁ first (v₂ needed when ``points_2d > 0``).
        eigenvalues: their eigenvalues (recorded in the result).
        radius: the grids span [−radius, radius].
        points: points of the 1-D grids (≥ 2).
        points_2d: points per axis of the 2-D grid; 0 skips it.
        random: also the curve along :func:`random_direction` ``(P, seed + RANDOM_STREAM)``.
        seed: the run seed.
        slope: g·v₁ if known, recorded for the quadratic model.
    """
    top = top.to(torch.float64).reshape(op.size, -1)
    if points_2d and top.shape[1] < 2:
        raise ValueError("the 2-D landscape needs two eigenvectors")
    columns = [top[:, 0]] + ([top[:, 1]] if points_2d else [])
    if random:
        columns.append(random_direction(op.size, seed + RANDOM_STREAM))
    directions = torch.stack(columns, dim=1)
    d = directions.shape[1]
    alphas = np.linspace(-radius, radius, points)
    rows = [np.eye(1, d, 0)[0] * a for a in alphas]                       # along v₁
    if random:
        rows += [np.eye(1, d, d - 1)[0] * a for a in alphas]               # along r
    betas = np.linspace(-radius, radius, points_2d) if points_2d else None
    if betas is not None:
        rows += [np.array([a, b] + [0.0] * (d - 2)) for a in betas for b in betas]
    rows.append(np.zeros(d))                                               # L(θ) itself
    losses = losses_at(op, directions, np.array(rows))
    n = len(alphas)
    loss_top = losses[:n]
    loss_random = losses[n:2 * n] if random else None
    offset = 2 * n if random else n
    loss_2d = losses[offset:offset + points_2d ** 2].reshape(points_2d, points_2d) if betas is not None else None
    values = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)[:2 if points_2d else 1].copy()
    return Landscape(alphas=alphas, loss_top=loss_top, loss_random=loss_random, betas=betas, loss_2d=loss_2d,
                     eigenvalues=values, loss=float(losses[-1]), slope=float(slope), seed=seed + RANDOM_STREAM)
