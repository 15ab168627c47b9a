"""Figures of one run (needs matplotlib: ``pip install matplotlib``): its spectral density
(``density.png``) and its loss landscape (``landscape_1d.png``, ``landscape_2d.png``, redrawn from
``results.h5`` alone, read through :mod:`hpcspec.results.hdf5`).

The density is drawn on a logarithmic y-axis against the eigenvalue, as PyHessian (Yao et al.
2020) and Ghorbani et al. (2019) draw Hessian spectra: a trained network's density spans many
decades between the bulk near zero and the outliers, which a linear axis flattens to a spike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analyses.tasks import TaskResults
from ..config import load_config
from ..errors import ConfigError
from .hdf5 import read_landscape_arrays
from .mpl import pyplot, save_figure
from .records import RunInfo

#: Density values below this fraction of the peak are drawn at the floor (log axes cannot show 0).
FLOOR_FRACTION = 1e-8
#: The legend of the marked eigenvalues, by ``eigen.which``.
MARKS_LABELS = {"largest": "top eigenvalues", "smallest": "bottom eigenvalues",
                "largest_magnitude": "largest-|λ| eigenvalues", "both_ends": "eigenvalues at both ends"}


def marks_label(which: str, count: int) -> str:
    """The density legend's entry for ``count`` marked eigenvalues found with ``eigen.which = which``."""
    return f"{MARKS_LABELS.get(which, 'eigenvalues')} ({count})"


def stored_which(config_toml: str) -> str:
    """``eigen.which`` of a run's stored config (``largest``, the default, when it says none)."""
    try:
        return load_config(text=config_toml).eigen.which
    except ConfigError:  # a file written with keys this version no longer knows
        return "largest"


def plot_density(path, grid, values, *, title: str = "", eigenvalues=None, sigma: float | None = None,
                 which: str = "largest") -> None:
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
        which: the ``eigen.which`` they were found with, for the legend (:func:`marks_label`).
        sigma: the Gaussian broadening width, shown in the legend when given.
    """
    grid = np.asarray(grid, dtype=float)
    values = np.asarray(values, dtype=float)
    if grid.ndim != 1 or grid.shape != values.shape or grid.size < 2:
        raise ValueError(f"grid and values must be 1-D arrays of one length ≥ 2, got {grid.shape} and {values.shape}")
    plt = pyplot()
    peak = float(np.max(values)) if np.any(values > 0) else 1.0
    floor = peak * FLOOR_FRACTION
    shown = np.maximum(values, floor)

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
                             label=marks_label(which, len(marks)) if i == 0 else None)
        axes.set_xlabel("eigenvalue λ")
        axes.set_ylabel("density (log scale)")
        if title:
            axes.set_title(title)
        axes.grid(True, which="major", alpha=0.3)
        axes.legend(loc="upper right", fontsize="small")
        save_figure(figure, path)
    finally:
        plt.close(figure)  # also when drawing failed (closing twice is harmless)


def write_density_plot(path: Path, results: TaskResults, info: RunInfo) -> None:
    """``density.png``: the broadened SLQ density on a log scale, the eigenvalues found marked if any."""
    density = results.density
    assert density is not None
    marks = results.eigen.eigenvalues if results.eigen is not None else None
    title = (f"{info.model} on {info.data}: SLQ, {density.result.nodes.shape[0]} probes × "
             f"{density.result.nodes.shape[1]} steps, σ = {density.sigma_fraction:g} × range")
    plot_density(path, density.grid, density.values, title=title, eigenvalues=marks, sigma=density.sigma,
                 which=stored_which(info.config_toml))


def plot_landscape_1d(results_path, path) -> None:
    """``landscape_1d.png`` from a results file: the loss along the top eigenvector v₁ and along a
    random unit direction against the step α, with the quadratic model L + α g·v₁ + ½ λ₁ α²
    (PyHessian's figure; the random curve shows how much flatter a typical direction is)."""
    land = read_landscape_arrays(results_path)
    alphas, loss = land["alphas"], float(land["loss"])
    lam = float(np.atleast_1d(land["eigenvalues"])[0])
    slope = float(land.get("slope", 0.0))
    if not np.isfinite(slope):
        slope = 0.0
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7.0, 4.2), layout="constrained")
    axes.plot(alphas, land["loss_top"], "o-", color="tab:red", markersize=3, label=f"along v₁ (λ₁ = {lam:.4g})")
    if "loss_random" in land:
        axes.plot(alphas, land["loss_random"], "s-", color="tab:blue", markersize=3,
                  label="along a random unit direction")
    fine = np.linspace(alphas[0], alphas[-1], 200)
    axes.plot(fine, loss + slope * fine + 0.5 * lam * fine ** 2, "--", color="gray", linewidth=1,
              label="quadratic model L + α g·v₁ + ½λ₁α²")
    top = max(float(np.max(land["loss_top"])), float(np.max(land.get("loss_random", land["loss_top"]))))
    low = min(float(np.min(land["loss_top"])), float(np.min(land.get("loss_random", land["loss_top"]))))
    margin = 0.1 * (top - low) or 0.1 * abs(top) or 1.0
    axes.set_ylim(low - margin, top + margin)  # the parabola may leave the measured range
    axes.set_xlabel("step α (parameter-space distance)")
    axes.set_ylabel("mean loss")
    axes.set_title(f"{land['title']}: loss along the top Hessian eigenvector")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    save_figure(figure, path)


def plot_landscape_2d(results_path, path) -> None:
    """``landscape_2d.png`` from a results file: contours of L(θ + α v₁ + β v₂)."""
    land = read_landscape_arrays(results_path)
    if "loss_2d" not in land:
        raise ValueError(f"{str(results_path)!r} holds no 2-D landscape (landscape.points_2d = 0)")
    betas, grid = land["betas"], land["loss_2d"]
    values = np.atleast_1d(land["eigenvalues"])
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(5.6, 4.8), layout="constrained")
    a, b = np.meshgrid(betas, betas, indexing="ij")  # loss_2d[i, j] = L(θ + betas[i] v₁ + betas[j] v₂)
    filled = axes.contourf(a, b, grid, levels=20, cmap="viridis")
    axes.contour(a, b, grid, levels=20, colors="white", linewidths=0.4, alpha=0.6)
    figure.colorbar(filled, ax=axes, label="mean loss")
    axes.plot([0], [0], "r+", markersize=10)
    axes.set_xlabel(f"α along v₁ (λ₁ = {values[0]:.4g})")
    axes.set_ylabel(f"β along v₂ (λ₂ = {values[1]:.4g})" if len(values) > 1 else "β along v₂")
    axes.set_title(f"{land['title']}: loss over the top-2 eigenvector plane", fontsize="medium")
    save_figure(figure, path)


def write_landscape_plots(results_path, folder) -> list[Path]:
    """Every landscape plot a results file has data for, written into ``folder``; their paths."""
    folder = Path(folder)
    written = [folder / "landscape_1d.png"]
    plot_landscape_1d(results_path, written[0])
    if "loss_2d" in read_landscape_arrays(results_path):
        written.append(folder / "landscape_2d.png")
        plot_landscape_2d(results_path, written[-1])
    return written
