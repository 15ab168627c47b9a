"""Stochastic trace estimators: one module per method (:mod:`.hutchinson`, :mod:`.hutchpp`,
:mod:`.krylov`, :mod:`.xtrace`), what they share (:mod:`.base`) and the resumable estimator that
runs them (:mod:`.estimator`). This package only re-exports their public names.
"""

from .base import COVERAGE_MULTIPLE, PROBE_STREAM, SKETCH_STREAM, TraceResult
from .estimator import (
                        ADAPTIVE_METHODS,
                        ADAPTIVE_ROUND,
                        DEFAULT_TRACE_METHOD,
                        MIN_ADAPTIVE_SAMPLES,
                        PHASES,
                        TRACE_METHODS,
                        TraceEstimator,
                        trace,
)
from .krylov import KRYLOV_DEPTH

__all__ = ["ADAPTIVE_METHODS", "ADAPTIVE_ROUND", "COVERAGE_MULTIPLE", "DEFAULT_TRACE_METHOD", "KRYLOV_DEPTH",
           "MIN_ADAPTIVE_SAMPLES", "PHASES", "PROBE_STREAM", "SKETCH_STREAM", "TRACE_METHODS", "TraceEstimator",
           "TraceResult", "trace"]
