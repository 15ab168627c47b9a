"""What the trace estimators share: :class:`TraceResult`, the standard error, the probe streams and
the rank tolerance. Below every method module (they import it; it imports none of them).

Probes: the i-th Hutchinson/XTrace probe is ``probe(size, seed, PROBE_STREAM, i)`` and the i-th
sketch or Krylov start vector ``probe(size, seed, SKETCH_STREAM, i)``, identical on every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Coverage multiple used by the tests and the benchmark: ``|estimate − tr H| ≤ 2·stderr``.
COVERAGE_MULTIPLE = 2.0
PROBE_STREAM = "trace"
SKETCH_STREAM = "trace-sketch"
#: Krylov directions whose norm after reorthogonalisation is below this fraction of the largest
#: product norm seen are dropped (the Krylov space is (numerically) invariant there).
RANK_TOL = 1e-10


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


def standard_error(samples: np.ndarray) -> float:
    """``std(samples, ddof=1) / sqrt(len(samples))``; 0 with fewer than two samples."""
    return float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) >= 2 else 0.0


def make_result(method: str, deflated: float, samples: list[float] | np.ndarray, num_matvecs: int,
            converged: bool) -> TraceResult:
    """The result of the terms ``samples`` (any sequence) over the exact part ``deflated``."""
    samples = np.asarray(samples, dtype=np.float64)
    estimate = deflated + float(np.mean(samples)) if len(samples) else deflated
    return TraceResult(estimate=estimate, stderr=standard_error(samples), method=method, num_matvecs=num_matvecs,
                       samples=samples, deflated=deflated, converged=converged)
