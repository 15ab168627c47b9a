"""Figures of sweeps, drawn from ``track.h5`` / ``blocks.h5`` alone (needs matplotlib).

``track``: the top eigenvalues and the trace (±2 standard errors) against the training step, the
spectral density over training as a heat map (step × eigenvalue, logarithmic colour scale, as
Ghorbani, Krishnan & Xiao 2019 follow the outliers leaving the bulk), and the share of the
gradient in the top eigenspace. ``--per-block``: top eigenvalue and trace per block as bars (on a
logarithmic axis from the decade below the smallest value when they span more than ``LOG_SPAN``). Every function takes the HDF5 path and writes beside it, so ``report`` can
redraw them offline; :func:`sweep_plots` picks by the file's ``kind`` attribute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .mpl import pyplot, save_figure
from .plots import FLOOR_FRACTION
from .sweep_hdf5 import SweepFile, read_sweep


def _title(sweep: SweepFile, what: str) -> str:
    data = str(sweep.attrs.get("data", "?"))
    return f"{sweep.attrs.get('model', '?')} on {Path(data).name if '/' in data else data}: {what}"


def _scale(axes, values: np.ndarray, axis: str = "y") -> None:
    """Logarithmic when every value is positive, symmetric-logarithmic otherwise."""
    finite = values[np.isfinite(values)]
    setter = axes.set_yscale if axis == "y" else axes.set_xscale
    if finite.size and np.all(finite > 0):
        setter("log")
    elif finite.size:
        magnitudes = np.abs(finite[finite != 0])
        smallest = float(magnitudes.min()) if magnitudes.size else 1.0
        setter("symlog", linthresh=max(smallest, float(np.max(np.abs(finite))) * 1e-6))


def track_plots(path: Path | str) -> list[Path]:
    """Every ``track_*.png`` that ``track.h5`` at ``path`` has the numbers for; returns their paths."""
    path = Path(path)
    plt = pyplot()
    written = []
    sweep = read_sweep(path)
    steps = sweep.steps
    if sweep.eigenvalues is not None:
        values = sweep.eigenvalues
        figure, axes = plt.subplots(figsize=(7.0, 4.2), layout="constrained")
        for i in range(values.shape[1]):
            axes.plot(steps, values[:, i], marker="o", markersize=3, label=f"λ{i + 1}")
        _scale(axes, values)
        axes.set_xlabel("training step")
        axes.set_ylabel("Hessian eigenvalue")
        axes.set_title(_title(sweep, f"top-{values.shape[1]} eigenvalues"))
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small", ncol=2)
        written.append(path.with_name("track_eigenvalues.png"))
        save_figure(figure, written[-1])
    if sweep.trace is not None:
        trace, stderr = sweep.trace, sweep.trace_stderr
        figure, axes = plt.subplots(figsize=(7.0, 4.2), layout="constrained")
        axes.fill_between(steps, trace - 2 * stderr, trace + 2 * stderr, color="tab:blue", alpha=0.25,
                          label="±2 standard errors")
        axes.plot(steps, trace, marker="o", markersize=3, color="tab:blue", label="trace estimate")
        axes.set_xlabel("training step")
        axes.set_ylabel("tr H")
        axes.set_title(_title(sweep, "Hessian trace"))
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
        written.append(path.with_name("track_trace.png"))
        save_figure(figure, written[-1])
    if sweep.density_grid is not None:
        written.append(path.with_name("track_density.png"))
        _density_map(sweep, written[-1])
    if sweep.gradient_fraction is not None:
        figure, axes = plt.subplots(figsize=(7.0, 4.2), layout="constrained")
        axes.plot(steps, sweep.gradient_fraction, marker="o", markersize=3, color="tab:green")
        axes.set_ylim(0.0, 1.02)
        axes.set_xlabel("training step")
        axes.set_ylabel("‖P_k g‖² / ‖g‖²")
        axes.set_title(_title(sweep, "gradient share in the top eigenspace"))
        axes.grid(True, alpha=0.3)
        written.append(path.with_name("track_gradient.png"))
        save_figure(figure, written[-1])
    return written


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around (possibly unevenly spaced) centres, for ``pcolormesh``."""
    centres = np.asarray(centres, dtype=float)
    if centres.size == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    middle = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - middle[0]], middle, [2 * centres[-1] - middle[-1]]])


def _density_map(sweep: SweepFile, out: Path) -> None:
    from matplotlib.colors import LogNorm

    plt = pyplot()
    steps, grid, values = sweep.steps, sweep.density_grid, sweep.density_values
    peak = float(np.max(values)) if np.any(values > 0) else 1.0
    shown = np.maximum(values, peak * FLOOR_FRACTION)
    figure, axes = plt.subplots(figsize=(7.0, 4.6), layout="constrained")
    # rows are checkpoints in order; the axis shows their step numbers
    rows = np.arange(len(steps))
    mesh = axes.pcolormesh(_edges(rows), _edges(grid), shown.T, norm=LogNorm(vmin=peak * FLOOR_FRACTION, vmax=peak),
                           cmap="viridis", shading="flat")
    ticks = rows if len(rows) <= 12 else rows[np.linspace(0, len(rows) - 1, 12).round().astype(int)]
    axes.set_xticks(ticks, [str(int(steps[i])) for i in ticks], rotation=45 if len(ticks) > 6 else 0)
    axes.set_xlabel("training step (one column per checkpoint)")
    axes.set_ylabel("eigenvalue λ")
    sigma = sweep.density_attrs.get("sigma", float("nan"))
    axes.set_title(_title(sweep, f"spectral density (σ = {sigma:.3g})"))
    figure.colorbar(mesh, ax=axes, label="density (log scale)")
    save_figure(figure, out)


#: Positive values spanning more than this ratio get a logarithmic axis in blocks.png.
LOG_SPAN = 10.0


def bar_floor(values: np.ndarray) -> float | None:
    """Where the bars of ``values`` start on a logarithmic axis: the decade below the smallest
    value, so every bar has a visible length (a bar from 0 cannot be drawn on a log axis, and
    matplotlib cut it at an arbitrary floor). None: draw from 0 on a linear axis (a value ≤ 0, or
    positive values within ``LOG_SPAN`` of each other, which a linear axis shows better)."""
    finite = values[np.isfinite(values)]
    if not finite.size or np.any(finite <= 0) or finite.max() <= LOG_SPAN * finite.min():
        return None
    return float(10.0 ** np.floor(np.log10(finite.min())))


def _bars(axes, at: np.ndarray, values: np.ndarray, errors: np.ndarray | None, color: str) -> None:
    """Bars of ``values`` (± ``errors``): from :func:`bar_floor` on a log axis, else from 0."""
    floor = bar_floor(values)
    if floor is None:
        axes.bar(at, values, yerr=errors, color=color, capsize=3)
        axes.axhline(0.0, color="black", linewidth=0.6)
        return
    axes.bar(at, values - floor, bottom=floor, yerr=errors, color=color, capsize=3)
    axes.set_yscale("log")
    axes.set_ylim(bottom=floor)


def blocks_plots(path: Path | str) -> list[Path]:
    """``blocks.png`` beside ``blocks.h5`` at ``path``: top eigenvalue and trace (±2σ) per block."""
    path = Path(path)
    plt = pyplot()
    sweep = read_sweep(path)
    blocks = sweep.labels
    panels = []
    if sweep.eigenvalues is not None:
        panels.append(("top eigenvalue", sweep.eigenvalues[:, 0], None))
    if sweep.trace is not None:
        panels.append(("trace (±2 standard errors)", sweep.trace, 2 * sweep.trace_stderr))
    if not panels:
        return []
    title = _title(sweep, f"per block (depth {sweep.attrs.get('depth', '?')})")
    figure, grid = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.45 * len(blocks) + 2), 3.2 * len(panels)),
                                layout="constrained", squeeze=False, sharex=True)
    at = np.arange(len(blocks))
    for axes, (label, values, errors) in zip(grid[:, 0], panels):
        _bars(axes, at, values, errors, "tab:blue" if errors is None else "tab:orange")
        axes.set_ylabel(label)
        axes.grid(True, axis="y", alpha=0.3)
    grid[-1, 0].set_xticks(at, blocks, rotation=45, ha="right")
    grid[0, 0].set_title(title)
    out = path.with_name("blocks.png")
    save_figure(figure, out)
    return [out]


def sweep_plots(path: Path | str) -> list[Path]:
    """Redraw the plots of a ``track.h5`` or ``blocks.h5`` (by its ``kind`` attribute; anything
    else is a one-line :class:`~hpcspec.errors.InputError`)."""
    kind = read_sweep(path).kind
    return track_plots(path) if kind == "track" else blocks_plots(path)
