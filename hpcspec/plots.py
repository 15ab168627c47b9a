"""Figures of spectral densities (needs matplotlib: ``pip install 'hpcspec[plots]'``).

The density is drawn on a logarithmic y-axis against the eigenvalue, as PyHessian (Yao et al.
2020) and Ghorbani et al. (2019) draw Hessian spectra: a trained network's density spans many
decades between the bulk near zero and the outliers, which a linear axis flattens to a spike.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: Density values below this fraction of the peak are drawn at the floor (log axes cannot show 0).
FLOOR_FRACTION = 1e-8


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, imported only when a figure is drawn."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'hpcspec[plots]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_density(path, grid, values, *, title: str = "", eigenvalues=None, sigma: float | None = None) -> None:
    """Draw a smoothed spectral density on a log scale and write it to ``path`` (format from suffix).

    Args:
        path: output file (``.png``, ``.pdf``, ``.svg``, …); written under a temporary name in the
            same folder and renamed into place, so a reader never sees a partial file.
        grid: (n,) ascending eigenvalue grid.
        values: (n,) density on the grid. Values below ``FLOOR_FRACTION`` × the peak are raised to
            that floor so the log axis can show them.
        title: figure title.
        eigenvalues: optional eigenvalues to mark (e.g. the top ones from Lanczos), drawn as
            dashed vertical lines.
        sigma: the Gaussian broadening width, shown in the legend when given.
    """
    grid = np.asarray(grid, dtype=float)
    values = np.asarray(values, dtype=float)
    if grid.ndim != 1 or grid.shape != values.shape or grid.size < 2:
        raise ValueError(f"grid and values must be 1-D arrays of one length ≥ 2, got {grid.shape} and {values.shape}")
    plt = _pyplot()
    peak = float(np.max(values)) if np.any(values > 0) else 1.0
    floor = peak * FLOOR_FRACTION
    shown = np.maximum(values, floor)

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    figure, axes = plt.subplots(figsize=(7.0, 4.2), layout="constrained")
    try:
        label = "density" if sigma is None else f"density (Gaussian σ = {sigma:.3g})"
        axes.semilogy(grid, shown, color="tab:blue", linewidth=1.4, label=label)
        axes.set_ylim(floor, peak * 3.0)
        axes.set_xlim(grid[0], grid[-1])
        if eigenvalues is not None:
            marks = np.atleast_1d(np.asarray(eigenvalues, dtype=float))
            for i, value in enumerate(marks):
                axes.axvline(value, color="tab:red", linestyle="--", linewidth=0.8, alpha=0.7,
                             label=f"top eigenvalues ({len(marks)})" if i == 0 else None)
        axes.set_xlabel("eigenvalue λ")
        axes.set_ylabel("density (log scale)")
        if title:
            axes.set_title(title)
        axes.grid(True, which="major", alpha=0.3)
        axes.legend(loc="upper right", fontsize="small")
        figure.savefig(temporary, format=fmt, dpi=150)
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        if temporary.exists():
            temporary.unlink()
