"""Stochastic estimates of ``tr(H)`` from products ``H·z``, each with a standard error.

Four estimators, all unbiased, all reporting ``estimate = deflated + mean(samples)`` and
``stderr = std(samples, ddof=1) / sqrt(len(samples))``:

``hutchinson`` (:mod:`.hutchinson`)
    Hutchinson 1989: the mean of ``zᵢᵀHzᵢ``.
``hutchpp`` (:mod:`.hutchpp`)
    Hutch++ (Meyer, Musco, Musco & Woodruff 2021): the exact trace of a one-pass sketch, plus
    Hutchinson on the rest.
``krylov`` (:mod:`.krylov`)
    Hutch++ with a block-Krylov basis, whose products give its exact trace as they grow it.
``xtrace`` (:mod:`.xtrace`)
    XTrace (Epperly, Tropp & Webber 2024): leave-one-out estimates of one sketch.

This module holds what runs them: :class:`TraceEstimator` (one data pass per step, resumable) and
:func:`trace`; :mod:`.base` holds :class:`TraceResult` and what the methods share.

Accuracy on the default job's trained digits MLP (P = 3,466, tr H ≈ 3.860, ‖H‖_F² ≈ 0.0876, a
slowly decaying spectrum), 100 products, Rademacher probes, seeds 0–399 (benchmarks/trace_accuracy.py;
median / RMS relative error, coverage at 2·stderr): hutchinson 0.76 % / 1.08 % / 95 %, hutchpp
0.74 % / 1.01 % / 95 %, xtrace 0.54 % / 0.88 % / 87 %, krylov 0.40 % / 0.60 % / 97 %. Only ``krylov``
meets the targets (median ≤ 0.5 %, coverage ≥ 90 %), hence ``DEFAULT_TRACE_METHOD``. Hutch++'s
one-pass sketch removes too little of ‖H‖_F² on this spectrum to pay for its 2k products, and
XTrace's error estimate is optimistic there. Even deflating the exact top-50 eigenvectors would
leave ≈ 0.55 % relative standard error at this budget, so no deflation method does much better.

Adaptive mode (``rtol > 0``; hutchinson, hutchpp, krylov): after a small sketch (``ADAPTIVE_SKETCH``
vectors unless ``sketch`` is given, so ``matvecs`` is a ceiling, not a plan), residual probes are
drawn in rounds until ``stderr ≤ rtol·|estimate|`` with at least ``MIN_ADAPTIVE_SAMPLES`` samples, or
the budget runs out (``converged`` False). Never stopped on "the mean changed little". Rank 0
decides and broadcasts, so every rank stops together. A data-dependent stop can bias the stopped
estimate slightly (optional stopping); the minimum sample count keeps that small.

Checkpointing: :class:`TraceEstimator` runs one data pass (one ``apply_in_blocks`` call) per step —
hutchpp's sketch, then its basis products; one block of the Krylov recurrence; xtrace's ``HΩ``,
then ``HQ`` and the estimates; the residual samples, all at once or one adaptive round — and can
be checkpointed between passes (:mod:`hpcspec.solvers.base`); :func:`trace` runs it to the end.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# DEFAULT_TRACE_METHOD meets the 0.5 % median-error target at 100 products on the digits MLP
# (module docstring); ADAPTIVE_METHODS support ``rtol`` (XTrace needs its whole sketch first).
from ...choices import ADAPTIVE_TRACE_METHODS as ADAPTIVE_METHODS
from ...choices import DEFAULT_TRACE_METHOD, TRACE_METHODS
from ..base import IterativeSolver, LinearOperator, State, as_operator
from ..probes import DISTRIBUTIONS, apply_in_blocks
from .base import TraceResult, make_result, standard_error
from .hutchinson import residual_samples
from .hutchpp import exact_trace, sketch_basis
from .krylov import block_width, krylov_pass, start_block
from .xtrace import xtrace_estimates, xtrace_sketch

#: Fewest samples an adaptive run bases a stop on (a standard error from fewer is too noisy).
MIN_ADAPTIVE_SAMPLES = 10
#: Probes per round in adaptive mode when ``block_size`` is 0.
ADAPTIVE_ROUND = 10
#: Default basis size in adaptive mode (``rtol > 0``, no ``sketch`` given), capped by the fixed-mode
#: size: the sketch is spent before the first stop check, so it must not grow with ``matvecs``. On
#: the default job's digits MLP at ``rtol = 0.02`` (seeds 0–2, krylov): a basis of 10 stopped after
#: 20–30 products at a relative standard error of 1.5–2.0 %; the basis of matvecs/2 = 1000 that
#: ``matvecs = 2000`` gave before spent 1010 products to reach 0.1–0.2 %.
ADAPTIVE_SKETCH = 10


def _as_rows(columns: torch.Tensor) -> torch.Tensor:
    """A (P, k) block as a contiguous (k, P) copy: how a state holds a block of vectors."""
    return columns.T.clone(memory_format=torch.contiguous_format)


def _as_columns(rows: torch.Tensor, layout: str) -> torch.Tensor:
    """The (P, k) block of a state's (k, P) rows, as a fresh tensor with the memory layout the
    uninterrupted run had (the layout decides the order of BLAS's sums, so bitwise results):
    ``"F"`` column-major, as ``torch.linalg.qr`` returns Q; ``"C"`` row-major, as ``torch.cat`` returns."""
    rows = rows.to(torch.float64)
    if layout == "F":
        return rows.clone(memory_format=torch.contiguous_format).T
    return torch.empty(rows.shape[1], rows.shape[0], dtype=torch.float64).copy_(rows.T)


def _min_matvecs(method: str, sketch: int) -> int:
    return {"hutchinson": 2, "xtrace": 4, "hutchpp": 2 * sketch + 2, "krylov": sketch + 2}[method]


#: The phases of each method, in order ("done" ends every one).
PHASES = {"hutchinson": ("samples",), "hutchpp": ("sketch", "basis", "samples"), "krylov": ("krylov", "samples"),
          "xtrace": ("sketch", "project")}


class TraceEstimator(IterativeSolver[TraceResult]):
    """A trace estimate as a resumable solver; see :func:`trace` for the arguments.

    One :meth:`step` is one data pass (one ``apply_in_blocks`` call), and ``phase`` says which:

    - ``sketch``: hutchpp's ``Q = orth(H S)``, or xtrace's first pass ``Y = HΩ = QR``;
    - ``basis``: hutchpp's ``H Q`` for ``tr(QᵀHQ)``;
    - ``krylov``: one block of the block-Krylov recurrence (its products, its exact trace, and the
      next block, whose size rank 0 decides);
    - ``project``: xtrace's second pass ``Z = HQ`` and the leave-one-out estimates;
    - ``samples``: the residual Hutchinson samples, all at once in fixed mode, one round per step
      in adaptive mode (rank 0 decides whether to stop after each round).

    The state holds ``phase``, the basis Q and the pending Krylov block as (k, P) rows, xtrace's R
    and ``diag(ΩᵀHΩ)`` (s × s and s numbers), the samples so far, ``deflated`` and the Krylov
    ``scale``. Probes are regenerated from their indices, never stored.
    """

    kind = "trace"

    def __init__(self, op: LinearOperator, *, method: str = DEFAULT_TRACE_METHOD, matvecs: int = 100,
                 rtol: float = 0.0, seed: int = 0, distribution: str = "rademacher", block_size: int = 0,
                 sketch: int | None = None) -> None:
        if method not in TRACE_METHODS:
            raise ValueError(f"unknown trace method {method!r}: use one of {', '.join(TRACE_METHODS)}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"probe distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
        if isinstance(matvecs, bool) or not isinstance(matvecs, (int, np.integer)):
            raise ValueError(f"matvecs must be an integer number of products, got {matvecs!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 0:
            raise ValueError(f"block_size must be an integer ≥ 0 (0 = all vectors in one pass), got {block_size!r}")
        if not math.isfinite(rtol) or rtol < 0:
            raise ValueError(f"rtol must be ≥ 0 (0 = spend the whole budget), got {rtol}")
        if rtol > 0 and method not in ADAPTIVE_METHODS:
            raise ValueError(f"rtol is supported by {', '.join(ADAPTIVE_METHODS)}, not {method} (XTrace needs its "
                             f"whole sketch up front): use rtol=0 or another method")
        if sketch is not None:
            if method not in ("hutchpp", "krylov"):
                raise ValueError(f"sketch applies to hutchpp and krylov only, not {method}: leave it unset")
            if isinstance(sketch, bool) or not isinstance(sketch, (int, np.integer)) or sketch < 1:
                raise ValueError(f"sketch must be an integer ≥ 1, got {sketch!r}")
        elif method in ("hutchpp", "krylov"):
            sketch = max(1, matvecs // 3 if method == "hutchpp" else matvecs // 2)
            if rtol > 0:  # adaptive: the budget is a ceiling, not a plan; a small sketch, then stop checks
                sketch = min(sketch, ADAPTIVE_SKETCH)
        needed = _min_matvecs(method, sketch or 0)
        if matvecs < needed:
            detail = {"hutchinson": "two probes for a standard error",
                      "xtrace": "two sketch probes and their two products",
                      "hutchpp": f"2·sketch + 2 with sketch = {sketch}",
                      "krylov": f"sketch + 2 with sketch = {sketch}"}[method]
            fix = " or lower sketch" if method in ("hutchpp", "krylov") else ""
            raise ValueError(f"matvecs = {matvecs} is too small for {method}: it needs at least {needed} "
                             f"({detail}); raise matvecs{fix}")
        op = as_operator(op)
        n = op.size
        self.op, self.method, self.matvecs, self.rtol = op, method, int(matvecs), rtol
        self.seed, self.distribution, self.block_size = int(seed), distribution, int(block_size)
        #: hutchpp's and krylov's basis size (a basis cannot exceed the space), xtrace's s, krylov's block width
        self.sketch = min(int(sketch), n) if method in ("hutchpp", "krylov") else 0
        self.s = min(self.matvecs // 2, n) if method == "xtrace" else 0
        self.width = block_width(self.sketch) if method == "krylov" else 0
        self.phase = PHASES[method][0]
        self.basis: torch.Tensor | None = None  # (P, k): hutchpp's and xtrace's Q, krylov's basis
        self.block: torch.Tensor | None = None  # (P, width): krylov's next block
        self.r: torch.Tensor | None = None  # xtrace's R (s × s)
        self.diag: torch.Tensor | None = None  # xtrace's ωᵢᵀHωᵢ (s,)
        self.deflated, self.scale = 0.0, 0.0
        self.samples = np.zeros(0)
        self.num_matvecs = 0
        self.converged = True
        self.done = False
        if method == "krylov":
            self.block = start_block(n, self.seed, self.width, distribution)
            self.basis = torch.empty(n, 0, dtype=torch.float64)

    # --- steps -------------------------------------------------------------------------------

    def step(self) -> None:
        if self.done:
            return
        {"sketch": self._hutchpp_sketch if self.method == "hutchpp" else self._xtrace_sketch,
         "basis": self._hutchpp_basis, "krylov": self._krylov_block, "project": self._xtrace_project,
         "samples": self._samples}[self.phase]()

    def _apply(self, vectors: torch.Tensor) -> torch.Tensor:
        self.num_matvecs += vectors.shape[1]
        return apply_in_blocks(self.op, vectors, self.block_size)

    def _finish(self, converged: bool) -> None:
        self.phase, self.converged, self.done = "done", converged, True
        self.basis = self.block = self.r = self.diag = None

    def _start_samples(self) -> None:
        self.phase = "samples"
        self.block = None
        if self._budget() <= 0:  # not reached after trace()'s checks: the loop over rounds never runs
            self._finish(self.rtol <= 0)

    def _budget(self) -> int:
        """Residual samples allowed: what the sketch left of ``matvecs``."""
        return self.matvecs - (self.num_matvecs - len(self.samples))

    def _hutchpp_sketch(self) -> None:
        self.basis = sketch_basis(self._apply, self.op.size, self.seed, self.sketch, self.distribution)
        self.phase = "basis"

    def _hutchpp_basis(self) -> None:
        self.deflated = exact_trace(self._apply, self.basis)
        self._start_samples()

    def _krylov_block(self) -> None:
        exact, self.scale, self.basis, block = krylov_pass(self.op, self._apply, self.block, self.basis, self.scale,
                                                           self.sketch, self.width)
        self.deflated += exact
        if block is not None:
            self.block = block
        else:  # the basis is full, or the Krylov space became invariant: the rest goes to samples
            self._start_samples()

    def _samples(self) -> None:
        """Hutchinson samples of the operator deflated by ``basis``: all at once, or, with
        ``rtol > 0``, one round (rank 0 decides whether the standard error is small enough)."""
        budget = self._budget()
        if self.rtol <= 0:
            self.num_matvecs += budget
            self.samples = residual_samples(self.op, self.basis, seed=self.seed, distribution=self.distribution,
                                            probes=range(budget), block_size=self.block_size)
            self._finish(True)
            return
        round_size = self.block_size if self.block_size > 0 else ADAPTIVE_ROUND
        begin = len(self.samples)
        end = min(budget, begin + round_size)
        self.num_matvecs += end - begin
        fresh = residual_samples(self.op, self.basis, seed=self.seed, distribution=self.distribution,
                                 probes=range(begin, end), block_size=self.block_size)
        samples = np.concatenate([self.samples, fresh])
        self.samples = samples
        done = False
        if len(samples) >= MIN_ADAPTIVE_SAMPLES:
            done = standard_error(samples) <= self.rtol * abs(self.deflated + float(np.mean(samples)))
        if self.op.comm.bcast_object(done):
            self._finish(True)
        elif len(samples) >= budget:
            self._finish(False)

    def _xtrace_sketch(self) -> None:
        self.basis, self.r, self.diag = xtrace_sketch(self._apply, self.op.size, self.seed, self.s, self.distribution)
        self.phase = "project"

    def _xtrace_project(self) -> None:
        self.samples, self.deflated = xtrace_estimates(self.op, self._apply, self.basis, self.r, self.diag,
                                                       seed=self.seed, s=self.s, distribution=self.distribution)
        self._finish(True)

    def planned_matvecs(self) -> tuple[int, bool]:
        """The budget ``matvecs`` (xtrace: its two passes of s), an upper bound with ``rtol``."""
        return (2 * self.s, False) if self.method == "xtrace" else (self.matvecs, self.rtol > 0)

    # --- state -------------------------------------------------------------------------------

    def state_dict(self) -> State:
        # A finished estimate needs only its scalars and samples: its basis is not carried on.
        live = not self.done
        return {"kind": self.kind, "method": self.method, "phase": self.phase,
                "basis": _as_rows(self.basis) if live and self.basis is not None else None,
                "block": _as_rows(self.block) if live and self.block is not None else None,
                "r": None if self.r is None else self.r.numpy().copy(),
                "diag": None if self.diag is None else self.diag.numpy().copy(),
                "deflated": self.deflated, "scale": self.scale, "samples": np.array(self.samples, dtype=np.float64),
                "num_matvecs": self.num_matvecs, "converged": self.converged, "done": self.done}

    def load_state_dict(self, state: State) -> None:
        self._check_kind(state)
        if state.get("method") != self.method:
            raise ValueError(f"state of a {state.get('method')!r} trace estimate given to a {self.method!r} one")
        if state["phase"] not in (*PHASES[self.method], "done"):
            raise ValueError(f"{self.method} has no phase {state['phase']!r}")
        for key in ("basis", "block"):
            if state[key] is not None and state[key].shape[-1] != self.op.size:
                raise ValueError(f"trace state entry {key!r} has vectors of size {state[key].shape[-1]}, "
                                 f"not the operator size {self.op.size}")
        # Q from torch.linalg.qr is column-major; krylov's basis comes from torch.cat (row-major).
        layout = "C" if self.method == "krylov" else "F"
        self.phase = str(state["phase"])
        self.basis = None if state["basis"] is None else _as_columns(state["basis"], layout)
        self.block = None if state["block"] is None else _as_columns(state["block"], "F")
        # R as torch.linalg.qr returns it (column-major); diag a plain vector
        self.r = None if state["r"] is None else torch.from_numpy(np.array(state["r"], dtype=np.float64, order="F"))
        self.diag = None if state["diag"] is None else torch.from_numpy(np.array(state["diag"], dtype=np.float64))
        self.deflated, self.scale = float(state["deflated"]), float(state["scale"])
        self.samples = np.array(state["samples"], dtype=np.float64)
        self.num_matvecs = int(state["num_matvecs"])
        self.converged, self.done = bool(state["converged"]), bool(state["done"])

    def result(self) -> TraceResult:
        return make_result(self.method, self.deflated, self.samples.copy(), self.num_matvecs, self.converged)


def trace(op: LinearOperator, *, method: str = DEFAULT_TRACE_METHOD, matvecs: int = 100, rtol: float = 0.0,
          seed: int = 0, distribution: str = "rademacher", block_size: int = 0,
          sketch: int | None = None) -> TraceResult:
    """An unbiased estimate of ``tr(H)`` for the symmetric operator ``op``, with a standard error.

    Args:
        op: symmetric operator on float64 vectors of length ``op.size``.
        method: ``krylov`` (default), ``hutchpp``, ``xtrace`` or ``hutchinson`` (module docstring).
        matvecs: the budget: products ``H·v`` in all, sketches included (spent in full unless
            ``rtol`` stops earlier or the operator is too small to use it).
        rtol: > 0 for adaptive mode: stop once ``stderr ≤ rtol·|estimate|`` (at least
            ``MIN_ADAPTIVE_SAMPLES`` residual samples) or when the budget is spent. ``matvecs`` is
            then only the ceiling: the sketch, spent before the first stop check, defaults to
            ``min(ADAPTIVE_SKETCH, fixed-mode size)``; pass ``sketch`` for another. Not for ``xtrace``.
        seed: seeds every probe (identical on every rank).
        distribution: ``rademacher`` (default; lower variance when H has a heavy diagonal) or
            ``gaussian`` (XTrace then uses its rescaled, lower-variance residual vectors).
        block_size: most vectors per ``op.apply`` call (one data pass); 0 = a whole sketch or
            sample set per pass. In adaptive mode it is also the round size (0: ``ADAPTIVE_ROUND``),
            so it decides where an adaptive run can stop.
        sketch: dimension of the deflation basis Q for ``hutchpp`` (costs 2·sketch products) and
            ``krylov`` (costs sketch); default matvecs/3 and matvecs/2 (with ``rtol``: at most
            ``ADAPTIVE_SKETCH``).

    Returns:
        :class:`TraceResult`. Coverage convention: ``|estimate − tr H| ≤ 2·stderr``
        (:meth:`TraceResult.covers`), a ~95 % interval when the estimate is near normal.
    """
    return TraceEstimator(op, method=method, matvecs=matvecs, rtol=rtol, seed=seed, distribution=distribution,
                          block_size=block_size, sketch=sketch).run()
