"""Spectral solvers: pure numerics on a linear operator (no files, no printing, no CLI)."""

from .block_lanczos import BlockLanczos, block_lanczos
from .density import (
           DensityResult,
           l1_distance,
           slq,
           smoothed_density,
           spectral_grid,
           wasserstein1,
)
from .lanczos import LanczosResult, lanczos
from .power import PowerIteration, PowerResult, power_iteration
from .trace import TraceEstimator, TraceResult, trace

__all__ = ["BlockLanczos", "DensityResult", "LanczosResult", "PowerIteration", "PowerResult", "TraceEstimator",
           "TraceResult", "block_lanczos", "l1_distance", "lanczos", "power_iteration", "slq", "smoothed_density",
           "spectral_grid", "trace", "wasserstein1"]
