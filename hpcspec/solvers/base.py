"""Resumable iterative solvers: one iteration at a time, with a state a checkpoint can save.

Every estimator is a :class:`IterativeSolver`: :meth:`~IterativeSolver.step` does one iteration
(one data pass: one product, or one block of products), :meth:`~IterativeSolver.state_dict`
returns everything needed to carry on, and a fresh solver given that state by
:meth:`~IterativeSolver.load_state_dict` continues with bitwise the same numbers as the solver it
was taken from. Between steps, :meth:`~IterativeSolver.run` calls a *boundary* hook: that is where
a checkpoint is written or a stop requested, and only there, so a state is never half-updated.
A *progress* hook is called there too, with the products done so far; with
:meth:`~IterativeSolver.planned_matvecs` (the budget, and whether it is only an upper bound) a driver
turns it into display (:mod:`hpcspec.parallel.progress`). Solvers never print.

A state is a flat ``dict`` whose values are of three kinds, which the checkpoint store saves
generically without knowing any solver:

- ``torch.Tensor``: a stack of long vectors, shape ``(..., P)`` with P the operator size, float64
  (Krylov bases, iterates). The store splits the last axis across ranks, so these are what scale.
  A solver whose vectors are sharded (:mod:`hpcspec.parallel.vectors`) gives a
  :class:`~hpcspec.parallel.vectors.LocalSlice` instead: this rank's part, which the store writes as it is.
- ``numpy.ndarray``: small arrays, the same on every rank (α, β, samples, counters).
- ``int``, ``float``, ``bool``, ``str`` or ``None``: scalars.

Random numbers come from counter-based probes (:mod:`hpcspec.solvers.probes`): a state holds how
many probes a stream has used, never a generator's internal state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, Generic, TypeVar

import numpy as np
import torch

from ..choices import default_tol, tolerance_problem
from ..errors import ArgumentError
from ..parallel.vectors import LocalSlice
from .operator import LinearOperator, as_operator

__all__ = ["Boundary", "IterativeSolver", "LinearOperator", "ProgressHook", "State", "as_operator", "check_state",
           "check_tol", "resolve_tol"]

R = TypeVar("R")
State = Dict[str, Any]
#: Called after every step with the solver; may save ``solver.state_dict()`` or raise to stop.
Boundary = Callable[["IterativeSolver"], None]
#: Called after every step with the products done so far (``num_matvecs``); reads, never changes.
ProgressHook = Callable[[int], None]
SCALARS = (bool, int, float, str, type(None))


class IterativeSolver(ABC, Generic[R]):
    """One estimator run as a sequence of steps (SPMD: every rank steps together)."""

    #: Name of the solver kind, checked when a state is loaded.
    kind: str = ""
    done: bool = False
    #: Operator products so far (a block of k columns counts k), loaded back on resume.
    num_matvecs: int = 0

    @abstractmethod
    def step(self) -> None:
        """One iteration (collective); sets ``done`` when the run is finished."""

    @abstractmethod
    def state_dict(self) -> State:
        """Everything needed to continue (see the module docstring for the value kinds)."""

    @abstractmethod
    def load_state_dict(self, state: State) -> None:
        """Continue from ``state`` (taken from a solver built with the same arguments)."""

    @abstractmethod
    def result(self) -> R:
        """The result; valid once ``done``."""

    def planned_matvecs(self) -> tuple[int, bool]:
        """``(products, bound)``: the products the whole run will take, and whether that is only an
        upper bound (an adaptive stop, or a budget the method may not use up)."""
        return self.num_matvecs, True

    def run(self, boundary: Boundary | None = None, progress: ProgressHook | None = None) -> R:
        """Step until done, calling ``progress(self.num_matvecs)`` and then ``boundary(self)``
        after every step."""
        while not self.done:
            self.step()
            if progress is not None:
                progress(self.num_matvecs)
            if boundary is not None:
                boundary(self)
        return self.result()

    def _check_kind(self, state: State) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"state of a {state.get('kind')!r} solver given to a {self.kind!r} solver")


def check_state(state: State, size: int) -> None:
    """Raise ValueError unless every value of ``state`` is of a kind the checkpoint store saves."""
    for key, value in state.items():
        if isinstance(value, LocalSlice):
            if value.values.dtype != torch.float64 or value.values.ndim < 1 or value.size != size:
                raise ValueError(f"state entry {key!r}: a slice of vectors of size {value.size} in float64 is "
                                 f"needed, got {value.values.dtype} {tuple(value.values.shape)} of {value.size}")
        elif isinstance(value, torch.Tensor):
            if value.dtype != torch.float64 or value.ndim < 1 or value.shape[-1] != size:
                raise ValueError(f"state entry {key!r}: vectors must be float64 of shape (..., {size}), "
                                 f"got {value.dtype} {tuple(value.shape)}")
        elif not isinstance(value, (np.ndarray, *SCALARS)):
            raise ValueError(f"state entry {key!r} has type {type(value).__name__}, which a checkpoint cannot hold")


def check_tol(tol: float | None) -> None:
    """Refuse (:class:`~hpcspec.errors.ArgumentError`) a tolerance too loose to certify an
    eigenvalue, as ``eigen.tol`` is refused on the command line; None (the default) passes."""
    problem = None if tol is None else tolerance_problem(tol)
    if problem is not None:
        raise ArgumentError(problem)


def resolve_tol(tol: float | None, op: LinearOperator) -> float:
    """``tol``, or when it is None the Lanczos default for the operator's ``compute_dtype``
    (float64's when it has none): the library and ``eigen.tol = 0`` on the command line agree."""
    return default_tol(op.compute_dtype) if tol is None else float(tol)
