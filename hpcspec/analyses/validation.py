"""Each estimator's error against the exact answer from a dense float64 Hessian.

``python -m hpcspec validate`` builds the dense Hessian of a small model from the same distributed
operator a run uses (:func:`hpcspec.curvature.dense.dense_hessian`), eigendecomposes it, and compares what
every task returned with the exact quantity — so a user can trust the tool on their own model
before a 64-rank job. Pure numerics: no files, no printing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..solvers import l1_distance, smoothed_density, spectral_grid, wasserstein1
from ..solvers.lanczos import select
from .tasks import TaskResults


@dataclass(frozen=True)
class Validation:
    """Errors of each task against the dense Hessian (a task not run is None).

    ``eigen``: ``expected`` and ``found`` eigenvalues in reporting order, ``relative_errors``,
    ``sin_angles`` (sine of the angle between each found eigenvector and the exact one; large where
    eigenvalues are clustered, as it must be), ``true_residuals`` ‖H y − θ y‖.
    ``trace``: ``exact``, ``estimate``, ``stderr``, ``relative_error``, ``error_in_stderrs``
    (|error| / stderr: below 2 in about 95% of runs when the standard error is right).
    ``density``: ``l1`` between the broadened SLQ density and the exact spectrum broadened by the
    same Gaussian (σ = ``sigma_fraction`` × the exact spectral range) on a common grid, and
    ``wasserstein1`` between the quadrature measure and the exact spectral measure (1/P per eigenvalue).
    """

    num_params: int
    exact_range: tuple[float, float]
    exact_trace: float
    eigen: dict[str, Any] | None
    trace: dict[str, Any] | None
    density: dict[str, Any] | None


def validate_results(matrix: torch.Tensor, results: TaskResults, *, sigma_fraction: float = 0.01,
                     grid_points: int = 2000) -> Validation:
    """Compare ``results`` with the exact spectrum of the dense symmetric ``matrix``."""
    dense = matrix.numpy()
    exact, vectors = np.linalg.eigh(dense)
    exact_trace = float(np.trace(dense))
    return Validation(num_params=dense.shape[0], exact_range=(float(exact[0]), float(exact[-1])),
                      exact_trace=exact_trace,
                      eigen=None if results.eigen is None else _eigen_errors(matrix, exact, vectors, results),
                      trace=None if results.trace is None else _trace_errors(exact_trace, results),
                      density=None if results.density is None else _density_errors(exact, results, sigma_fraction,
                                                                                   grid_points))


def _eigen_errors(matrix: torch.Tensor, exact: np.ndarray, vectors: np.ndarray, results: TaskResults) -> dict[str, Any]:
    found = results.eigen
    assert found is not None
    order = select(exact, len(found.eigenvalues), results.eigen_which)
    expected = exact[order]
    scale = max(float(np.max(np.abs(exact))), np.finfo(float).tiny)
    relative = np.abs(found.eigenvalues - expected) / np.maximum(np.abs(expected), 1e-12 * scale)
    true_residuals = torch.linalg.vector_norm(matrix @ found.eigenvectors - found.eigenvectors
                                              * torch.from_numpy(found.eigenvalues), dim=0).numpy()
    return {"expected": expected, "found": found.eigenvalues, "relative_errors": relative,
            "max_relative_error": float(relative.max()), "sin_angles": sin_angles(found.eigenvectors.numpy(), vectors[:, order]),
            "true_residuals": true_residuals}


def sin_angles(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Sine of the angle between each column of ``found`` and the unit column of ``exact`` beside it,
    as ``‖y − (uᵀy)u‖ / ‖y‖``: accurate down to rounding of the vectors themselves, where
    ``√(1 − (uᵀy)²)`` loses every angle below ~1e-8 (``(uᵀy)²`` rounds to 1), so that a float32
    model's eigenvectors, accurate to ~1e-9, showed an angle of exactly 0. Sign-blind, like the angle."""
    found = np.asarray(found, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    rest = found - exact * np.sum(exact * found, axis=0)
    norms = np.linalg.norm(found, axis=0)
    return (np.linalg.norm(rest, axis=0) / np.maximum(norms, np.finfo(float).tiny)).clip(0.0, 1.0)


def _trace_errors(exact_trace: float, results: TaskResults) -> dict[str, Any]:
    found = results.trace
    assert found is not None
    error = found.estimate - exact_trace
    return {"exact": exact_trace, "estimate": found.estimate, "stderr": found.stderr,
            "relative_error": abs(error) / max(abs(exact_trace), np.finfo(float).tiny),
            "error_in_stderrs": abs(error) / found.stderr if found.stderr > 0 else float("inf") if error else 0.0}


def _density_errors(exact: np.ndarray, results: TaskResults, sigma_fraction: float, points: int) -> dict[str, Any]:
    density = results.density
    assert density is not None
    atoms, weights = density.result.measure()
    sigma = sigma_fraction * max(float(exact[-1] - exact[0]), np.finfo(float).tiny)
    grid, _ = spectral_grid(np.concatenate([exact, atoms]), sigma_fraction, points)
    uniform = np.full(len(exact), 1.0 / len(exact))
    estimated = smoothed_density(atoms, weights, grid, sigma)
    reference = smoothed_density(exact, uniform, grid, sigma)
    return {"l1": l1_distance(grid, estimated, reference), "wasserstein1": wasserstein1(atoms, weights, exact, uniform),
            "sigma": sigma, "sigma_fraction": sigma_fraction,
            "exact_range": (float(exact[0]), float(exact[-1]))}
