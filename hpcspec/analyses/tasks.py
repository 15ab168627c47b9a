"""The estimators a run asks for, composed on one operator: top-k eigenpairs, trace, density.

One data load, one model and one operator serve every task of a run (``tasks`` in the config,
``--top-k/--trace/--density`` on the command line). This module knows the config and the solvers,
but nothing of files, printing or the command line: the driver (:mod:`hpcspec.commands.run`) reports and
checkpoints, through the hook :func:`run_tasks` calls between iterations, and shows each task's
progress through the :class:`~hpcspec.parallel.progress.ProgressDisplay` it passes in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np

from ..choices import POWER_MAXITER, POWER_TOL, default_tol
from ..config import Config
from ..curvature.base import CurvatureOperator
from ..parallel.progress import ProgressDisplay
from ..solvers import (
    DensityResult,
    LanczosResult,
    PowerResult,
    TraceResult,
    smoothed_density,
    spectral_grid,
)
from ..solvers.base import IterativeSolver, LinearOperator, State
from ..solvers.block_lanczos import BlockLanczos
from ..solvers.density import SLQ
from ..solvers.lanczos import Lanczos
from ..solvers.power import PowerIteration
from ..solvers.trace import TraceEstimator
from .gradient import GradientOverlap
from .landscape import Landscape

EigenResult = Union[LanczosResult, PowerResult]
Progress = Callable[[str], None]
#: A checkpoint hook: given a function that returns the job state, commit it and/or stop.
Checkpoint = Callable[[Callable[[], State]], None]


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
    eigen_method: str = "block"
    eigen_which: str = "largest"
    eigen_tol: float = 0.0
    trace: TraceResult | None = None
    #: ``trace.rtol`` of the run (0: a fixed budget, no stop test, so ``trace.converged`` means nothing).
    trace_rtol: float = 0.0
    density: Density | None = None
    #: The gradient's overlap with the eigenvectors (whenever eigen ran on a Hessian of a loss).
    gradient: GradientOverlap | None = None
    #: The loss along the top eigenvectors (the ``landscape`` task).
    landscape: Landscape | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def eigen_settings(cfg: Config) -> tuple[str, float, int]:
    """``which``, tolerance and maxiter the eigen task runs with (config zeros → method defaults)."""
    if cfg.eigen.method == "power":
        return "largest_magnitude", cfg.eigen.tol or POWER_TOL, cfg.eigen.maxiter or POWER_MAXITER
    return cfg.eigen.which, cfg.eigen.tol or default_tol(cfg.hessian.dtype), cfg.eigen.maxiter


def eigen_solver(op: LinearOperator, cfg: Config, progress: Progress | None = None) -> IterativeSolver:
    """The configured top-k solver (block Lanczos, single-vector Lanczos, or PyHessian's power iteration)."""
    which, tol, maxiter = eigen_settings(cfg)
    if cfg.eigen.method == "power":
        return PowerIteration(op, cfg.eigen.top_k, maxiter=maxiter, tol=tol, seed=cfg.seed)

    label = "block Lanczos data pass" if cfg.eigen.method == "block" else "Lanczos step"

    def report(step: int, values: np.ndarray, residuals: np.ndarray) -> None:
        if progress is not None and step % 10 == 0 and len(values):
            progress(f"{label} {step}: top Ritz value {values[0]:.10g}, largest wanted residual "
                     f"{residuals.max():.2e}")

    if cfg.eigen.method == "block":
        return BlockLanczos(op, cfg.eigen.top_k, which=which, tol=tol, block_size=cfg.eigen.block_size,
                            max_basis=cfg.eigen.max_basis or None, maxiter=maxiter or None, seed=cfg.seed,
                            callback=report)
    return Lanczos(op, cfg.eigen.top_k, which=which, tol=tol, maxiter=maxiter or None, seed=cfg.seed,
                   callback=report)


def trace_solver(op: LinearOperator, cfg: Config) -> IterativeSolver:
    return TraceEstimator(op, method=cfg.trace.method, matvecs=cfg.trace.matvecs, rtol=cfg.trace.rtol,
                          seed=cfg.seed, distribution=cfg.trace.distribution)


def density_solver(op: LinearOperator, cfg: Config) -> IterativeSolver:
    return SLQ(op, probes=cfg.density.probes, steps=cfg.density.steps, seed=cfg.seed,
               distribution=cfg.density.distribution)


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


def _keep_eigen(results: TaskResults, result: EigenResult, cfg: Config) -> None:
    results.eigen, results.eigen_method = result, cfg.eigen.method
    results.eigen_which, results.eigen_tol = eigen_settings(cfg)[:2]


def _keep_trace(results: TaskResults, result: TraceResult, cfg: Config) -> None:
    results.trace, results.trace_rtol = result, cfg.trace.rtol


def _keep_density(results: TaskResults, result: DensityResult, cfg: Config) -> None:
    results.density = broaden(result, cfg.density.sigma, cfg.density.grid)


@dataclass(frozen=True)
class Task:
    """One estimator a run can ask for (``tasks`` in the config): how log lines and progress
    displays name it, its solver on an operator, and what of its result the run keeps. A new
    estimator is one entry of :data:`TASKS` (and its writers in :mod:`hpcspec.results`)."""

    name: str
    label: Callable[[Config], str]
    solver: Callable[[LinearOperator, Config, Progress | None], IterativeSolver]
    keep: Callable[[TaskResults, Any, Config], None]


#: Every task, in the order a run takes them.
TASKS: dict[str, Task] = {task.name: task for task in (
    Task("eigen", lambda cfg: f"eigen ({cfg.eigen.method})", eigen_solver, _keep_eigen),
    Task("trace", lambda cfg: f"trace ({cfg.trace.method})", lambda op, cfg, _: trace_solver(op, cfg), _keep_trace),
    Task("density", lambda cfg: "density (SLQ)", lambda op, cfg, _: density_solver(op, cfg), _keep_density),
)}


def substate(state: State | None, prefix: str) -> State | None:
    """The entries of a job state under ``prefix/``, prefix removed (None if there are none)."""
    if not state:
        return None
    found = {key[len(prefix) + 1:]: value for key, value in state.items() if key.startswith(prefix + "/")}
    return found or None


def run_tasks(op: LinearOperator, cfg: Config, progress: Progress | None = None, *,
              checkpoint: Checkpoint | None = None, resume: State | None = None,
              extra_state: Callable[[], State] | None = None, finished: Checkpoint | None = None,
              display: ProgressDisplay | None = None) -> TaskResults:
    """Every task in ``cfg.tasks``, in the order eigen, trace, density (collective); then, when the
    eigen task ran on a Hessian of a loss, the analyses of its eigenvectors (the gradient's share
    of their span, and the ``landscape`` task: :mod:`hpcspec.analyses.eigen`).

    Args:
        checkpoint: called between any two iterations with a function returning the job state
            (``extra_state()`` plus every started solver's state under ``<task>/``); it may commit
            that state or stop the run by raising.
        resume: a job state from a checkpoint: finished tasks are rebuilt from it without a single
            product, the task in progress continues where it stopped.
        finished: called once after the last task with the same state function, e.g. to commit
            every task's final state before the driver writes any result.
        display: shows each task's products done / planned, rate and ETA (rank 0); ``progress``
            lines then pass through it, so a terminal bar steps aside for them.
    """
    if display is not None and progress is not None:
        progress = display.around(progress)
    results = TaskResults()
    solvers: dict[str, IterativeSolver] = {}

    def job_state() -> State:
        state = dict(extra_state() if extra_state is not None else {})
        for name, solver in solvers.items():
            state.update({f"{name}/{key}": value for key, value in solver.state_dict().items()})
        return state

    boundary = (lambda solver: checkpoint(job_state)) if checkpoint is not None else None
    for name, task in TASKS.items():
        if name not in cfg.tasks:
            continue
        solver = task.solver(op, cfg, progress)
        saved = substate(resume, name)
        if saved is not None:
            solver.load_state_dict(saved)
        solvers[name] = solver
        started = time.perf_counter()
        label = task.label(cfg)
        result = solver.run(boundary) if display is None else display.run(solver, label, boundary)
        results.seconds[name] = time.perf_counter() - started
        task.keep(results, result, cfg)
        if progress is not None:
            resumed = " (resumed)" if saved is not None else ""
            progress(f"{label} finished in {results.seconds[name]:.2f} s{resumed}")
    if finished is not None:
        finished(job_state)
    if results.eigen is not None and isinstance(op, CurvatureOperator):  # a curvature of a loss, not a matrix
        from .eigen import eigen_analyses

        results.gradient, results.landscape, seconds = eigen_analyses(op, cfg, results.eigen, progress)
        results.seconds.update(seconds)
    return results
