"""The estimators a run asks for, composed on one operator: top-k eigenpairs, trace, density.

One data load, one model and one operator serve every task of a run (``tasks`` in the config,
``--top-k/--trace/--density`` on the command line). This module knows the config and the solvers,
but nothing of files, printing or the command line: the driver (:mod:`hpcspec.job`) reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from .config import Config
from .operator import LinearOperator
from .solvers import (DensityResult, LanczosResult, PowerResult, TraceResult, lanczos, power_iteration, slq,
                      smoothed_density, spectral_grid, trace)

DEFAULT_TOL = {"float64": 1e-8, "float32": 1e-5}
#: PyHessian's defaults for its power iteration (``hessian.eigenvalues(maxIter=100, tol=1e-3)``).
POWER_DEFAULTS = {"tol": 1e-3, "maxiter": 100}

EigenResult = Union[LanczosResult, PowerResult]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Density:
    """SLQ quadrature plus the broadened density on a grid, and its between-probe error.

    ``values_stderr`` is the pointwise standard error of ``values`` over the probes (each probe's
    broadened quadrature is an unbiased-in-expectation estimate of the broadened spectral density;
    Ubaru, Chen & Saad 2017); ``l1_stderr = ∫ values_stderr`` summarises it in one number. It
    measures the probe noise, not the bias of m-node quadrature, which ``validate`` measures.
    """

    result: DensityResult
    grid: np.ndarray
    values: np.ndarray
    values_stderr: np.ndarray
    sigma: float
    sigma_fraction: float

    @property
    def l1_stderr(self) -> float:
        return float(np.trapezoid(self.values_stderr, self.grid))


@dataclass
class TaskResults:
    """What a run computed; a task not asked for is None. ``seconds`` holds each task's wall time."""

    eigen: EigenResult | None = None
    eigen_method: str = "lanczos"
    eigen_which: str = "largest"
    eigen_tol: float = 0.0
    trace: TraceResult | None = None
    density: Density | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def eigen_settings(cfg: Config) -> tuple[str, float, int]:
    """``which``, tolerance and maxiter the eigen task runs with (config zeros → method defaults)."""
    if cfg.eigen.method == "power":
        return ("largest_magnitude", cfg.eigen.tol or POWER_DEFAULTS["tol"],
                cfg.eigen.maxiter or POWER_DEFAULTS["maxiter"])
    return cfg.eigen.which, cfg.eigen.tol or DEFAULT_TOL[cfg.hessian.dtype], cfg.eigen.maxiter


def run_eigen(op: LinearOperator, cfg: Config, progress: Progress | None = None) -> tuple[EigenResult, str, float]:
    """Top-k eigenpairs by the configured method; returns the result, ``which`` and the tolerance used."""
    which, tol, maxiter = eigen_settings(cfg)
    if cfg.eigen.method == "power":
        return power_iteration(op, cfg.eigen.top_k, maxiter=maxiter, tol=tol, seed=cfg.seed), which, tol

    def report(step: int, values: np.ndarray, residuals: np.ndarray) -> None:
        if progress is not None and step % 10 == 0:
            progress(f"Lanczos step {step}: top Ritz value {values[0]:.10g}, largest wanted residual "
                     f"{residuals.max():.2e}")

    result = lanczos(op, cfg.eigen.top_k, which=which, tol=tol, maxiter=maxiter or None, seed=cfg.seed,
                     callback=report)
    return result, which, tol


def run_trace(op: LinearOperator, cfg: Config) -> TraceResult:
    return trace(op, method=cfg.trace.method, matvecs=cfg.trace.matvecs, rtol=cfg.trace.rtol, seed=cfg.seed,
                 distribution=cfg.trace.distribution)


def broaden(result: DensityResult, sigma_fraction: float, points: int) -> Density:
    """The SLQ quadrature broadened by a Gaussian of width ``sigma_fraction`` × (node range)."""
    atoms, _ = result.measure()
    grid, sigma = spectral_grid(atoms, sigma_fraction, points)
    per_probe = np.stack([smoothed_density(result.nodes[j], result.weights[j], grid, sigma)
                          for j in range(result.nodes.shape[0])])
    probes = per_probe.shape[0]
    stderr = per_probe.std(axis=0, ddof=1) / np.sqrt(probes) if probes > 1 else np.full(len(grid), np.nan)
    return Density(result=result, grid=grid, values=per_probe.mean(axis=0), values_stderr=stderr, sigma=sigma,
                   sigma_fraction=sigma_fraction)


def run_density(op: LinearOperator, cfg: Config) -> Density:
    result = slq(op, probes=cfg.density.probes, steps=cfg.density.steps, seed=cfg.seed,
                 distribution=cfg.density.distribution)
    return broaden(result, cfg.density.sigma, cfg.density.grid)


def run_tasks(op: LinearOperator, cfg: Config, progress: Progress | None = None) -> TaskResults:
    """Every task in ``cfg.tasks``, in the order eigen, trace, density (collective)."""
    results = TaskResults()

    def eigen() -> str:
        results.eigen, results.eigen_which, results.eigen_tol = run_eigen(op, cfg, progress)
        results.eigen_method = cfg.eigen.method
        return f"eigen ({cfg.eigen.method})"

    def trace_task() -> str:
        results.trace = run_trace(op, cfg)
        return f"trace ({cfg.trace.method})"

    def density() -> str:
        results.density = run_density(op, cfg)
        return "density (SLQ)"

    for name, task in (("eigen", eigen), ("trace", trace_task), ("density", density)):
        if name not in cfg.tasks:
            continue
        started = time.perf_counter()
        label = task()
        results.seconds[name] = time.perf_counter() - started
        if progress is not None:
            progress(f"{label} finished in {results.seconds[name]:.2f} s")
    return results
