"""What a run derives from its eigenvectors once the eigen task has found them (collective).

- the gradient's share of the eigenspace (:mod:`hpcspec.analyses.gradient`), whenever the eigen task ran;
- the loss along the top eigenvectors (:mod:`hpcspec.analyses.landscape`), when ``landscape`` is a task.

Both need the whole data set (one gradient pass; one forward pass per grid point) but no Hessian
product. In a sharded run each rank holds only rows of the eigenvectors: the overlaps are summed
over ranks from those rows, and the (at most two) directions the landscape walks are gathered whole
on every rank (2·P numbers, the size of the parameters themselves).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from ..config import Config
from .gradient import GradientOverlap, gradient_overlap
from .landscape import Landscape, loss_landscape


def eigen_analyses(op: Any, cfg: Config, eigen: Any,
                   progress: Callable[[str], None] | None = None) -> tuple[GradientOverlap, Landscape | None,
                                                                           dict[str, float]]:
    """The gradient overlap with ``eigen``'s vectors and, if asked for, the landscape along them.

    Args:
        op: the run's :class:`~hpcspec.curvature.operator.HessianOperator`.
        cfg: the run's config (``tasks``, ``landscape``, ``seed``).
        eigen: the eigen task's result (whole vectors, or this rank's rows when ``rows`` is set).
        progress: called with one line per finished analysis.

    Returns:
        The overlap, the landscape (None when not a task) and each one's wall time.
    """
    seconds: dict[str, float] = {}
    rows = getattr(eigen, "rows", None)
    started = time.perf_counter()
    _, g = op.loss_and_gradient()
    overlap = gradient_overlap(g, eigen.eigenvectors, eigen.eigenvalues, comm=op.comm, rows=rows)
    seconds["gradient"] = time.perf_counter() - started
    if progress is not None:
        progress(f"gradient: ‖g‖ = {overlap.norm:.4g}, {100 * overlap.fraction:.2f}% of ‖g‖² in the top-"
                 f"{len(overlap.overlaps)} eigenspace ({seconds['gradient']:.2f} s)")
    if "landscape" not in cfg.tasks:
        return overlap, None, seconds
    started = time.perf_counter()
    land = cfg.landscape
    wanted = 2 if land.points_2d else 1
    columns = eigen.eigenvectors[:, :wanted].to(torch.float64).contiguous()
    top = op.space.gather(columns) if rows is not None else columns
    slope = float(torch.dot(top[:, 0], g.to(torch.float64)))  # g·v₁, with its sign (overlaps keep squares)
    landscape = loss_landscape(op, top, eigen.eigenvalues, radius=land.radius, points=land.points,
                               points_2d=land.points_2d, random=land.random, seed=cfg.seed, slope=slope)
    seconds["landscape"] = time.perf_counter() - started
    if progress is not None:
        evaluations = land.points * (2 if land.random else 1) + land.points_2d ** 2 + 1
        progress(f"landscape: {evaluations} loss evaluations over α ∈ [−{land.radius:g}, {land.radius:g}] "
                 f"in {seconds['landscape']:.2f} s")
    return overlap, landscape, seconds
