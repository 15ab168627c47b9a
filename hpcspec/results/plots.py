"""Figures of spectral densities (needs matplotlib: ``pip install 'hpcspec[plots]'``).

The density is drawn on a logarithmic y-axis against the eigenvalue, as PyHessian (Yao et al.
2020) and Ghorbani et al. (2019) draw Hessian spectra: a trained network's density spans many
decades between the bulk near zero and the outliers, which a linear axis flattens to a spike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files.outputs import atomic_path

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
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format=fmt, dpi=150)
    finally:
        plt.close(figure)


def _save(plt, figure, path) -> None:
    """Write ``figure`` to ``path`` (format from the suffix) under a temporary name, then rename."""
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format=path.suffix.lstrip(".").lower() or "png", dpi=150)
    finally:
        plt.close(figure)


def _landscape(results_path):
    """The ``/landscape`` group of a results file as plain arrays and attributes."""
    import h5py

    with h5py.File(results_path, "r") as f:
        if "landscape" not in f:
            raise ValueError(f"{str(results_path)!r} holds no /landscape group (run with --landscape)")
        group = f["landscape"]
        data = {key: group[key][()] for key in group}
        data.update({key: group.attrs[key] for key in group.attrs})
        data["title"] = f"{f.attrs.get('model', '?')} on {f.attrs.get('data', '?')}"
    return data


def plot_landscape_1d(results_path, path) -> None:
    """``landscape_1d.png`` from a results file: the loss along the top eigenvector v₁ and along a
    random unit direction against the step α, with the quadratic model L + α g·v₁ + ½ λ₁ α²
    (PyHessian's figure; the random curve shows how much flatter a typical direction is)."""
    land = _landscape(results_path)
    alphas, loss = land["alphas"], float(land["loss"])
    lam = float(np.atleast_1d(land["eigenvalues"])[0])
    slope = float(land.get("slope", 0.0))
    if not np.isfinite(slope):
        slope = 0.0
    plt = _pyplot()
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
    _save(plt, figure, path)


def plot_landscape_2d(results_path, path) -> None:
    """``landscape_2d.png`` from a results file: contours of L(θ + α v₁ + β v₂)."""
    land = _landscape(results_path)
    if "loss_2d" not in land:
        raise ValueError(f"{str(results_path)!r} holds no 2-D landscape (landscape.points_2d = 0)")
    betas, grid = land["betas"], land["loss_2d"]
    values = np.atleast_1d(land["eigenvalues"])
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.6, 4.8), layout="constrained")
    a, b = np.meshgrid(betas, betas, indexing="ij")  # loss_2d[i, j] = L(θ + betas[i] v₁ + betas[j] v₂)
    filled = axes.contourf(a, b, grid, levels=20, cmap="viridis")
    axes.contour(a, b, grid, levels=20, colors="white", linewidths=0.4, alpha=0.6)
    figure.colorbar(filled, ax=axes, label="mean loss")
    axes.plot([0], [0], "r+", markersize=10)
    axes.set_xlabel(f"α along v₁ (λ₁ = {values[0]:.4g})")
    axes.set_ylabel(f"β along v₂ (λ₂ = {values[1]:.4g})" if len(values) > 1 else "β along v₂")
    axes.set_title(f"{land['title']}: loss over the top-2 eigenvector plane", fontsize="medium")
    _save(plt, figure, path)


def write_landscape_plots(results_path, folder) -> list[Path]:
    """Every landscape plot a results file has data for, written into ``folder``; their paths."""
    folder = Path(folder)
    written = [folder / "landscape_1d.png"]
    plot_landscape_1d(results_path, written[0])
    import h5py

    with h5py.File(results_path, "r") as f:
        has_2d = "loss_2d" in f["landscape"]
    if has_2d:
        written.append(folder / "landscape_2d.png")
        plot_landscape_2d(results_path, written[-1])
    return written
