"""The records the results layer writes and reads back: what a run is (:class:`RunInfo`), a
finished run as read from its ``results.h5`` (:class:`StoredRun`), and the few numbers a sweep
collects from each sub-run (:class:`RunNumbers`).

They live apart from the HDF5 code so that the text and plot modules can take them without
importing h5py, and so that a count the file and the summary both record (the eigen task's
iterations and data passes) is computed in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analyses.tasks import EigenResult, TaskResults
from ..analyses.validation import Validation
from ..problem.params import ParamLayout
from ..solvers import LanczosResult


@dataclass(frozen=True)
class RunInfo:
    """What the report says about the run besides the eigenpairs."""

    model: str
    data: str
    loss: str
    num_samples: int
    world_size: int
    dtype: str
    hvp_method: str
    bn_mode: str
    loss_value: float
    seconds: float
    config_toml: str
    provenance: dict[str, Any]
    #: Why ``hvp_method`` (``auto``'s rule, or "named"), and the trial products that choice took:
    #: partial products on two samples, reported here and not counted in any task's ``num_matvecs``.
    hvp_reason: str = ""
    hvp_trial_products: int = 0


@dataclass
class StoredRun:
    """What ``results.h5`` holds, as the objects :func:`hpcspec.results.hdf5.write_results` writes from."""

    results: TaskResults
    layout: ParamLayout
    info: RunInfo
    validation: Validation | None


@dataclass
class RunNumbers:
    """The few numbers a sweep collects from one sub-run's ``results.h5`` (NaN / None when absent)."""

    num_params: int
    loss: float
    eigenvalues: np.ndarray | None = None
    residuals: np.ndarray | None = None
    trace: float = math.nan
    trace_stderr: float = math.nan
    gradient_fraction: float = math.nan
    atoms: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def top(self) -> float:
        return float(self.eigenvalues[0]) if self.eigenvalues is not None and len(self.eigenvalues) else math.nan


def data_passes(result: EigenResult) -> int:
    """Passes over the data the eigen task spent (one per block of products; one per product else)."""
    passes = getattr(result, "data_passes", 0)
    return int(passes) if passes else int(result.num_matvecs)


def eigen_iterations(result: EigenResult) -> int:
    """The eigen task's iteration count: Lanczos steps, or the power iterations of all vectors together."""
    return result.iterations if isinstance(result, LanczosResult) else int(np.sum(result.iterations))
