"""Stochastic estimates of ``tr(H)`` from products ``H·z``, each with a standard error.

Four estimators, all unbiased, all reporting ``estimate = deflated + mean(samples)`` and
``stderr = std(samples, ddof=1) / sqrt(len(samples))``:

``hutchinson`` (Hutchinson 1989)
    ``tr(H) ≈ (1/m) Σ zᵢᵀ H zᵢ`` with E[z zᵀ] = I. Variance per sample 2(‖H‖_F² − Σ H_jj²) for
    Rademacher probes, 2‖H‖_F² for Gaussian ones. ``samples``: the m terms ``zᵢᵀHzᵢ``; ``deflated`` 0.

``hutchpp`` (Meyer, Musco, Musco & Woodruff 2021, "Hutch++")
    A sketch ``Q = orth(H S)`` of k vectors (k products), its exact trace ``tr(QᵀHQ)`` (k more),
    and Hutchinson on the rest: ``tr(H) = tr(QᵀHQ) + E[zᵀ(I−QQᵀ)H(I−QQᵀ)z]``. The probes z are
    independent of Q, so the estimate is unbiased whatever Q is. Default split k = matvecs/3.
    ``samples``: the residual terms; ``deflated``: ``tr(QᵀHQ)``.

``krylov`` (Hutch++ with a block-Krylov basis; cf. Persson, Cortinovis & Kressner 2022 and the
Krylov-aware estimator of Chen & Hallman 2023)
    Q is a block Lanczos basis (Golub & Underwood 1977) of ``span{Ω, HΩ, …, H^{d−1}Ω}`` with full
    reorthogonalisation (classical Gram–Schmidt twice). Every product ``H Q_j`` the recurrence needs
    also gives that block's exact trace ``tr(Q_jᵀ H Q_j)``, so k basis vectors cost k products, not
    2k as in Hutch++, and the Krylov space captures the dominant eigenspace far better than one
    range-finder pass (Musco & Musco 2015). Default: k = matvecs/2 in about ``KRYLOV_DEPTH`` passes
    of width ⌈k / KRYLOV_DEPTH⌉ (at 100 products: plain Lanczos, 50 one-vector passes), the other
    half on residual Hutchinson samples in one pass. Wider blocks mean fewer data passes but a
    worse basis per product (width 5 at 100 products: RMS error 0.70 % instead of 0.60 % on the
    digits MLP). ``samples``: the residual terms; ``deflated``: ``tr(QᵀHQ)``.

``xtrace`` (Epperly, Tropp & Webber 2024, "XTrace")
    s = matvecs/2 probes Ω serve as both sketch and test vectors. With ``Y = HΩ = QR`` and
    ``Q_(i)`` the orthonormal basis of Y without column i, each leave-one-out estimate
    ``tᵢ = tr(Q_(i)ᵀHQ_(i)) + ωᵢᵀ(I−Q_(i)Q_(i)ᵀ)H(I−Q_(i)Q_(i)ᵀ)ωᵢ`` is unbiased (ωᵢ is independent
    of Q_(i)) and the estimate is their mean. ``samples``: ``tᵢ − tr(QᵀHQ)``; ``deflated``:
    ``tr(QᵀHQ)`` of the full sketch. The standard error treats the tᵢ as independent, which they
    are not (they share s − 2 sketch vectors); it is the paper's error estimate, and it can be
    optimistic (benchmarks/trace_accuracy.py measures its coverage).

How each ``tᵢ`` costs no extra product (derived here; the paper does the same with other algebra):
``range(Y_(−i)) = Q·range(R_(−i))`` and the vector of R^s orthogonal to the other columns of R is
``vᵢ = R^{−T} eᵢ`` (row i of R^{−1}), so ``Q_(i)Q_(i)ᵀ = QQᵀ − qᵢqᵢᵀ`` with ``qᵢ = Q sᵢ``,
``sᵢ = vᵢ/‖vᵢ‖``. With ``C = QᵀHQ``, ``xᵢ = Qᵀωᵢ``, ``cᵢ = sᵢᵀxᵢ`` and ``uᵢ = xᵢ − cᵢ sᵢ`` (so that
``(I−Q_(i)Q_(i)ᵀ)ωᵢ = ωᵢ − Q uᵢ``)::

    tᵢ = tr C − sᵢᵀ C sᵢ  +  ωᵢᵀHωᵢ − uᵢᵀ(QᵀHωᵢ + (HQ)ᵀωᵢ) + uᵢᵀ C uᵢ,

where ``ωᵢᵀHωᵢ = diag(ΩᵀY)ᵢ``, ``QᵀHΩ = R`` and ``(HQ)ᵀΩ = ZᵀΩ`` with ``Z = HQ`` (equal for a
symmetric H; using both keeps the form exact for a slightly asymmetric float32 operator). Only
s×s matrices are formed after the two passes. With Gaussian probes the residual vector
``(I−Q_(i)Q_(i)ᵀ)ωᵢ`` is Gaussian in an (n − s + 1)-dimensional space, so rescaling it to squared
norm n − s + 1 (a uniform direction on that sphere, still E[vvᵀ] = I − Q_(i)Q_(i)ᵀ) keeps the
estimate unbiased and lowers its variance; Rademacher probes are used as drawn.

Accuracy on the default job's trained digits MLP (P = 3,466, tr H ≈ 3.860, ‖H‖_F² ≈ 0.0876, a
slowly decaying spectrum), 100 products, Rademacher probes, seeds 0–399 (benchmarks/trace_accuracy.py;
median / RMS relative error, coverage at 2·stderr): hutchinson 0.76 % / 1.08 % / 95 %, hutchpp
0.74 % / 1.01 % / 95 %, xtrace 0.54 % / 0.88 % / 87 %, krylov 0.40 % / 0.60 % / 97 %. Only ``krylov``
meets the targets (median ≤ 0.5 %, coverage ≥ 90 %), hence ``DEFAULT_TRACE_METHOD``. Hutch++'s
one-pass sketch removes too little of ‖H‖_F² on this spectrum to pay for its 2k products, and
XTrace's error estimate is optimistic there. Even deflating the exact top-50 eigenvectors would
leave ≈ 0.55 % relative standard error at this budget, so no deflation method does much better.

Adaptive mode (``rtol > 0``; hutchinson, hutchpp, krylov): after the sketch, residual probes are
drawn in rounds until ``stderr ≤ rtol·|estimate|`` with at least ``MIN_ADAPTIVE_SAMPLES`` samples, or
the budget runs out (``converged`` False). Never stopped on "the mean changed little". Rank 0
decides and broadcasts, so every rank stops together. A data-dependent stop can bias the stopped
estimate slightly (optional stopping); the minimum sample count keeps that small.

Probes: the i-th Hutchinson/XTrace probe is ``probe(size, seed, "trace", i)`` and the i-th sketch or
Krylov start vector ``probe(size, seed, "trace-sketch", i)``, identical on every rank.

Checkpointing: :class:`TraceEstimator` runs one data pass (one ``apply_in_blocks`` call) per step —
hutchpp's sketch, then its basis products; one block of the Krylov recurrence; xtrace's ``HΩ``,
then ``HQ`` and the estimates; the residual samples, all at once or one adaptive round — and can
be checkpointed between passes (:mod:`hpcspec.solvers.base`); :func:`trace` runs it to the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# DEFAULT_TRACE_METHOD meets the 0.5 % median-error target at 100 products on the digits MLP
# (module docstring); ADAPTIVE_METHODS support ``rtol`` (XTrace needs its whole sketch first).
from ..choices import ADAPTIVE_TRACE_METHODS as ADAPTIVE_METHODS
from ..choices import DEFAULT_TRACE_METHOD, TRACE_METHODS
from .base import IterativeSolver, LinearOperator, State
from .orthogonal import project_out_
from .probes import DISTRIBUTIONS, apply_in_blocks, probe_block

#: Fewest samples an adaptive run bases a stop on (a standard error from fewer is too noisy).
MIN_ADAPTIVE_SAMPLES = 10
#: Probes per round in adaptive mode when ``block_size`` is 0.
ADAPTIVE_ROUND = 10
#: Target number of block-Krylov passes (the block width is ⌈k / KRYLOV_DEPTH⌉): depth buys
#: accuracy per product, width buys fewer data passes.
KRYLOV_DEPTH = 50
#: Coverage multiple used by the tests and the benchmark: ``|estimate − tr H| ≤ 2·stderr``.
COVERAGE_MULTIPLE = 2.0
PROBE_STREAM = "trace"
SKETCH_STREAM = "trace-sketch"
#: Krylov directions whose norm after reorthogonalisation is below this fraction of the largest
#: product norm seen are dropped (the Krylov space is (numerically) invariant there).
_RANK_TOL = 1e-10


@dataclass(frozen=True)
class TraceResult:
    """A trace estimate from :func:`trace`.

    Attributes:
        estimate: the estimate of ``tr(H)``; always ``deflated + mean(samples)``.
        stderr: its standard error, ``std(samples, ddof=1) / sqrt(len(samples))`` (0 with fewer
            than two samples).
        method: the estimator (one of ``TRACE_METHODS``).
        num_matvecs: products ``H·v`` spent, sketches included.
        samples: the stochastic terms (per method, see the module docstring): Hutchinson terms
            ``zᵀHz``, residual terms ``zᵀ(I−QQᵀ)H(I−QQᵀ)z`` (hutchpp, krylov), or XTrace's
            leave-one-out estimates minus ``deflated``.
        deflated: the exact part ``tr(QᵀHQ)`` (0.0 for hutchinson).
        converged: ``stderr ≤ rtol·|estimate|`` was met; True when no rtol was asked.
    """

    estimate: float
    stderr: float
    method: str
    num_matvecs: int
    samples: np.ndarray
    deflated: float
    converged: bool

    def confidence_interval(self, level: float = 0.95) -> tuple[float, float]:
        """``estimate ± t·stderr`` with t the Student-t quantile for ``len(samples) − 1`` degrees of
        freedom (the samples' spread is itself estimated). Assumes the estimate is roughly normal;
        for XTrace the samples are correlated and the interval is only indicative."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level}")
        if len(self.samples) < 2 or self.stderr == 0.0:
            return self.estimate, self.estimate
        from scipy.stats import t as student_t

        half = float(student_t.ppf(0.5 + level / 2, df=len(self.samples) - 1)) * self.stderr
        return self.estimate - half, self.estimate + half

    def covers(self, value: float, multiple: float = COVERAGE_MULTIPLE) -> bool:
        """Whether ``|estimate − value| ≤ multiple·stderr`` (2 ≈ a 95 % normal interval)."""
        return abs(self.estimate - value) <= multiple * self.stderr


def _stderr(samples: np.ndarray) -> float:
    return float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) >= 2 else 0.0


def _result(method: str, deflated: float, samples: list[float] | np.ndarray, num_matvecs: int,
            converged: bool) -> TraceResult:
    samples = np.asarray(samples, dtype=np.float64)
    estimate = deflated + float(np.mean(samples)) if len(samples) else deflated
    return TraceResult(estimate=estimate, stderr=_stderr(samples), method=method, num_matvecs=num_matvecs,
                       samples=samples, deflated=deflated, converged=converged)


def _quadratic_forms(op: LinearOperator, probes: torch.Tensor, basis: torch.Tensor | None,
                     block_size: int) -> np.ndarray:
    """``zᵀ(I−QQᵀ)H(I−QQᵀ)z`` for each column z of ``probes`` (one data pass per block)."""
    projected = project_out_(probes, basis)
    products = apply_in_blocks(op, projected, block_size)
    return (projected * products).sum(dim=0).numpy()


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


def _next_krylov_block(op: LinearOperator, products: torch.Tensor, basis: torch.Tensor, scale: float,
                       room: int) -> torch.Tensor:
    """Orthonormal directions of ``products`` outside ``basis`` (at most ``room``), largest first.

    Directions below ``_RANK_TOL·scale`` after reorthogonalisation are dropped: there the Krylov
    space is invariant. The count kept is rank 0's, broadcast, so all ranks keep the same block.
    """
    project_out_(products, basis)
    left, singular, _ = torch.linalg.svd(products, full_matrices=False)
    keep = int(min(room, int((singular > _RANK_TOL * scale).sum())))
    keep = op.comm.bcast_object(keep)
    block = left[:, :keep].contiguous()
    project_out_(block, basis)  # SVD's rounding re-introduces tiny components along the basis
    return torch.linalg.qr(block).Q if keep else block


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
        needed = _min_matvecs(method, sketch or 0)
        if matvecs < needed:
            detail = {"hutchinson": "two probes for a standard error",
                      "xtrace": "two sketch probes and their two products",
                      "hutchpp": f"2·sketch + 2 with sketch = {sketch}",
                      "krylov": f"sketch + 2 with sketch = {sketch}"}[method]
            fix = " or lower sketch" if method in ("hutchpp", "krylov") else ""
            raise ValueError(f"matvecs = {matvecs} is too small for {method}: it needs at least {needed} "
                             f"({detail}); raise matvecs{fix}")
        n = op.size
        self.op, self.method, self.matvecs, self.rtol = op, method, int(matvecs), rtol
        self.seed, self.distribution, self.block_size = int(seed), distribution, int(block_size)
        #: hutchpp's and krylov's basis size (a basis cannot exceed the space), xtrace's s, krylov's block width
        self.sketch = min(int(sketch), n) if method in ("hutchpp", "krylov") else 0
        self.s = min(self.matvecs // 2, n) if method == "xtrace" else 0
        self.width = math.ceil(self.sketch / min(KRYLOV_DEPTH, self.sketch)) if method == "krylov" else 0
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
            start = probe_block(n, self.seed, SKETCH_STREAM, range(self.width), distribution)
            self.block = torch.linalg.qr(start).Q
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
        sketch_vectors = probe_block(self.op.size, self.seed, SKETCH_STREAM, range(self.sketch), self.distribution)
        self.basis = torch.linalg.qr(self._apply(sketch_vectors)).Q
        self.phase = "basis"

    def _hutchpp_basis(self) -> None:
        basis = self.basis
        self.deflated = float((basis * self._apply(basis)).sum())
        self._start_samples()

    def _krylov_block(self) -> None:
        block = self.block
        products = self._apply(block)
        self.deflated += float((block * products).sum())
        self.scale = max(self.scale, float(torch.linalg.vector_norm(products, dim=0).max()))
        self.basis = basis = torch.cat([self.basis, block], dim=1)
        room = self.sketch - basis.shape[1]
        if room <= 0:
            self._start_samples()
            return
        block = _next_krylov_block(self.op, products, basis, self.scale, min(room, self.width))
        if block.shape[1]:
            self.block = block
        else:  # the Krylov space became invariant: the rest of the budget goes to samples
            self._start_samples()

    def _samples(self) -> None:
        """Hutchinson samples of the operator deflated by ``basis``: all at once, or, with
        ``rtol > 0``, one round (rank 0 decides whether the standard error is small enough)."""
        n, budget = self.op.size, self._budget()
        if self.rtol <= 0:
            probes = probe_block(n, self.seed, PROBE_STREAM, range(budget), self.distribution)
            self.num_matvecs += budget
            self.samples = _quadratic_forms(self.op, probes, self.basis, self.block_size)
            self._finish(True)
            return
        round_size = self.block_size if self.block_size > 0 else ADAPTIVE_ROUND
        begin = len(self.samples)
        end = min(budget, begin + round_size)
        probes = probe_block(n, self.seed, PROBE_STREAM, range(begin, end), self.distribution)
        self.num_matvecs += end - begin
        samples = np.concatenate([self.samples, _quadratic_forms(self.op, probes, self.basis, self.block_size)])
        self.samples = samples
        done = False
        if len(samples) >= MIN_ADAPTIVE_SAMPLES:
            done = _stderr(samples) <= self.rtol * abs(self.deflated + float(np.mean(samples)))
        if self.op.comm.bcast_object(done):
            self._finish(True)
        elif len(samples) >= budget:
            self._finish(False)

    def _xtrace_sketch(self) -> None:
        omega = probe_block(self.op.size, self.seed, PROBE_STREAM, range(self.s), self.distribution)
        y = self._apply(omega)
        self.basis, self.r = torch.linalg.qr(y)
        self.diag = (omega * y).sum(dim=0)       # ωᵢᵀHωᵢ: all the second pass needs of Y
        self.phase = "project"

    def _xtrace_project(self) -> None:
        n, s, q, r, diag = self.op.size, self.s, self.basis, self.r, self.diag
        omega = probe_block(n, self.seed, PROBE_STREAM, range(s), self.distribution)
        z = self._apply(q)
        c = q.T @ z
        c = (c + c.T) / 2
        x = q.T @ omega                              # column i: Qᵀωᵢ
        cross = r + z.T @ omega                      # column i: QᵀHωᵢ + (HQ)ᵀωᵢ
        # sᵢ ∝ R^{−T} eᵢ: the direction of span(Q) that leaving ωᵢ out removes. R = UΣVᵀ gives
        # R^{−T} = U Σ^{−1} Vᵀ. If HΩ is rank deficient (rank H < s), every leave-one-out space still
        # contains range(HΩ) = range(H), and any null vector of Rᵀ is a valid choice for every i.
        u_r, sigma, vt_r = torch.linalg.svd(r)
        full_rank = bool(sigma[-1] > _RANK_TOL * sigma[0])
        full_rank = self.op.comm.bcast_object(full_rank)
        if full_rank:
            directions = u_r @ (vt_r / sigma[:, None])
        else:
            directions = u_r[:, -1:].expand(s, s)
        directions = directions / torch.linalg.vector_norm(directions, dim=0)
        coefficient = (directions * x).sum(dim=0)    # cᵢ = sᵢᵀxᵢ
        u = x - directions * coefficient             # (I − Q_(i)Q_(i)ᵀ)ωᵢ = ωᵢ − Q uᵢ
        removed = (directions * (c @ directions)).sum(dim=0)
        residual = diag - (u * cross).sum(dim=0) + (u * (c @ u)).sum(dim=0)
        if self.distribution == "gaussian":
            norm2 = (omega * omega).sum(dim=0) - (x * x).sum(dim=0) + coefficient ** 2
            residual = residual * ((n - s + 1) / norm2.clamp_min(torch.finfo(torch.float64).tiny))
        self.samples = (residual - removed).numpy()  # tᵢ − tr(C)
        self.deflated = float(torch.trace(c))
        self._finish(True)

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
        return _result(self.method, self.deflated, self.samples.copy(), self.num_matvecs, self.converged)


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
            ``MIN_ADAPTIVE_SAMPLES`` residual samples) or when the budget is spent. The sketch is
            sized from ``matvecs`` as in fixed mode; pass ``sketch`` to spend less on it.
            Not for ``xtrace``.
        seed: seeds every probe (identical on every rank).
        distribution: ``rademacher`` (default; lower variance when H has a heavy diagonal) or
            ``gaussian`` (XTrace then uses its rescaled, lower-variance residual vectors).
        block_size: most vectors per ``op.apply`` call (one data pass); 0 = a whole sketch or
            sample set per pass. In adaptive mode it is also the round size (0: ``ADAPTIVE_ROUND``),
            so it decides where an adaptive run can stop.
        sketch: dimension of the deflation basis Q for ``hutchpp`` (costs 2·sketch products) and
            ``krylov`` (costs sketch); default matvecs/3 and matvecs/2.

    Returns:
        :class:`TraceResult`. Coverage convention: ``|estimate − tr H| ≤ 2·stderr``
        (:meth:`TraceResult.covers`), a ~95 % interval when the estimate is near normal.
    """
    return TraceEstimator(op, method=method, matvecs=matvecs, rtol=rtol, seed=seed, distribution=distribution,
                          block_size=block_size, sketch=sketch).run()
