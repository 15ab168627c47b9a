"""Read a finished run back from its ``results.h5``: the objects the report functions take.

``python -m hpcspec report RESULTS.h5`` rebuilds ``summary.json``, the console summary and every
plot from the file alone — on a laptop, without MPI, the model or the data — through the very
functions the run used, so an offline report is the run's report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..analyses.tasks import TaskResults, broaden
from ..analyses.validation import Validation
from ..errors import InputError
from ..problem.params import ParamLayout
from ..results.report import RunInfo, read_gradient, read_landscape
from ..solvers import DensityResult, LanczosResult, PowerResult, TraceResult

#: results.h5 attributes that are the run's own fields, not provenance.
_INFO_ATTRS = ("num_params", "num_samples", "dtype", "config", "model", "data", "loss", "bn_mode", "loss_value",
               "world_size", "hvp_method", "seconds")


@dataclass
class StoredRun:
    """What ``results.h5`` holds, as the objects :mod:`hpcspec.results.report` writes from."""

    results: TaskResults
    layout: ParamLayout
    info: RunInfo
    validation: Validation | None


def open_results(path: Path) -> h5py.File:
    """``path`` opened read-only, or a one-line :class:`InputError` saying why it cannot be."""
    if not path.is_file():
        raise InputError(f"results file {str(path)!r} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"results file {str(path)!r} is not a readable HDF5 file ({exc})") from None


def load_run(path: Path) -> StoredRun:
    """Rebuild a run's results, parameter layout and run information from its ``results.h5``."""
    with open_results(path) as f:
        if "params" not in f or "model" not in f.attrs:
            raise InputError(f"{str(path)!r} is not an hpcspec results.h5 (no /params group or model attribute)")
        try:
            return StoredRun(results=_results(f), layout=_layout(f["params"]), info=_info(f),
                             validation=_validation(f["validation"]) if "validation" in f else None)
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"results file {str(path)!r} is incomplete or damaged ({exc})") from None


def _info(f: h5py.File) -> RunInfo:
    attrs = dict(f.attrs)
    provenance = {key: _plain(value) for key, value in attrs.items() if key not in _INFO_ATTRS}
    provenance.setdefault("hpcspec", _plain(attrs.get("hpcspec_version", "unknown")))
    return RunInfo(model=str(attrs["model"]), data=str(attrs["data"]), loss=str(attrs["loss"]),
                   num_samples=int(attrs["num_samples"]), world_size=int(attrs["world_size"]),
                   dtype=str(attrs["dtype"]), hvp_method=str(attrs["hvp_method"]), bn_mode=str(attrs["bn_mode"]),
                   loss_value=float(attrs["loss_value"]), seconds=float(attrs["seconds"]),
                   config_toml=str(attrs["config"]), provenance=provenance)


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _layout(group: h5py.Group) -> ParamLayout:
    names = tuple(name.decode() if isinstance(name, bytes) else str(name) for name in group["names"][()])
    shapes = tuple(tuple(int(n) for n in shape) for shape in group["shapes"][()])
    offsets = tuple(int(n) for n in group["offsets"][()])
    excluded = tuple(json.loads(group.attrs.get("excluded", "[]")))
    return ParamLayout(names, shapes, offsets, excluded)


def _results(f: h5py.File) -> TaskResults:
    results = TaskResults()
    if "eigen" in f:
        group = f["eigen"]
        attrs = group.attrs
        vectors = torch.from_numpy(np.ascontiguousarray(group["vectors"][()].T))
        common = dict(eigenvalues=group["values"][()], eigenvectors=vectors, residuals=group["residuals"][()],
                      converged=bool(attrs["converged"]), num_matvecs=int(attrs["num_matvecs"]))
        if str(attrs["method"]) == "power":
            results.eigen = PowerResult(iterations=group["iterations"][()], **common)
        else:
            extra = {key: type_(attrs[key]) for key, type_ in (
                ("block_size", int), ("data_passes", int), ("restarts", int), ("locked", int), ("checks", int),
                ("complete", bool), ("max_basis", int), ("peak_basis", int), ("guarantee", str)) if key in attrs}
            results.eigen = LanczosResult(iterations=int(attrs["iterations"]), alpha=group["alpha"][()],
                                          beta=group["beta"][()], method=str(attrs["method"]), **extra, **common)
        results.eigen_method, results.eigen_which = str(attrs["method"]), str(attrs["which"])
        results.eigen_tol = float(attrs["tol"])
        results.seconds["eigen"] = float(attrs["seconds"])
    if "trace" in f:
        group = f["trace"]
        attrs = group.attrs
        results.trace = TraceResult(estimate=float(attrs["estimate"]), stderr=float(attrs["stderr"]),
                                    method=str(attrs["method"]), num_matvecs=int(attrs["num_matvecs"]),
                                    samples=group["samples"][()], deflated=float(attrs["deflated"]),
                                    converged=bool(attrs["converged"]))
        results.seconds["trace"] = float(attrs["seconds"])
    if "density" in f:
        group, lanczos = f["density"], f["lanczos"]
        attrs = group.attrs
        quadrature = DensityResult(nodes=group["nodes"][()], weights=group["weights"][()],
                                   alpha=lanczos["alpha"][()], beta=lanczos["beta"][()],
                                   steps=lanczos["steps"][()], num_matvecs=int(attrs["num_matvecs"]))
        # the stored grid and values are the run's; re-broadening reproduces them (same inputs)
        density = broaden(quadrature, float(attrs["sigma_fraction"]), len(group["grid"]))
        results.density = density
        results.seconds["density"] = float(attrs["seconds"])
    for name, read in (("gradient", read_gradient), ("landscape", read_landscape)):
        if name in f:
            setattr(results, name, read(f[name]))
            results.seconds[name] = float(f[name].attrs["seconds"])
    return results


def _validation(group: h5py.Group) -> Validation:
    records: dict[str, dict[str, Any] | None] = {}
    for name in ("eigen", "trace", "density"):
        if name not in group:
            records[name] = None
            continue
        sub = group[name]
        record: dict[str, Any] = {key: sub[key][()] for key in sub}
        record.update({key: _plain(value) for key, value in sub.attrs.items()})
        records[name] = record
    attrs = group.attrs
    num_params = int(group.file.attrs["num_params"])
    return Validation(num_params=num_params, exact_range=(float(attrs["exact_min"]), float(attrs["exact_max"])),
                      exact_trace=float(attrs["exact_trace"]), eigen=records["eigen"], trace=records["trace"],
                      density=records["density"])


def regenerate(path: Path, output: Path | None = None) -> str:
    """Rewrite ``summary.json`` and the plots of the run stored in ``path`` into ``output`` (default:
    the file's folder); returns the console summary. A missing plotting library skips the plots."""
    from ..results.report import (
        console_summary,
        summary,
        validation_table,
        write_density_plot,
        write_summary,
    )

    kind = _kind(path)
    if kind in ("track", "blocks"):
        return _regenerate_sweep(path)
    stored = load_run(path)
    folder = output if output is not None else path.parent
    folder.mkdir(parents=True, exist_ok=True)
    write_summary(folder / "summary.json", summary(stored.results, stored.layout, stored.info, stored.validation))
    plot = None
    if stored.results.density is not None:
        plot = folder / "density.png"
        write_density_plot(plot, stored.results, stored.info)
    if stored.results.landscape is not None:
        from ..results.plots import write_landscape_plots

        write_landscape_plots(path, folder)
    text = console_summary(stored.results, stored.layout, stored.info, folder, plot)
    if stored.validation is not None:
        text += "\n" + validation_table(stored.validation, stored.results)
    return text


def comparison_table(paths: list[Path]) -> str:
    """A Markdown table comparing runs: top eigenvalue ± its residual (a bound on its error: for a
    symmetric matrix some eigenvalue lies within ‖Hy − θy‖ of θ) and trace ± its standard error."""
    import tomllib

    labels = _labels(paths)
    lines = ["| run | model | batchnorm | residual | parameters | samples | loss | top eigenvalue | trace | density |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, path in zip(labels, paths):
        stored = load_run(path)
        model = tomllib.loads(stored.info.config_toml).get("model", {})
        results = stored.results
        top = "—"
        if results.eigen is not None:
            top = f"{results.eigen.eigenvalues[0]:.6g} ± {results.eigen.residuals[0]:.1e}"
        trace = "—"
        if results.trace is not None:
            trace = f"{results.trace.estimate:.6g} ± {results.trace.stderr:.2g}"
        density = str(path.parent / "density.png") if results.density is not None else "—"
        lines.append(f"| {label} | {stored.info.model} | {_switch(model, 'batchnorm')} | {_switch(model, 'residual')} | "
                     f"{stored.layout.size:,} | {stored.info.num_samples:,} | {stored.info.loss_value:.4g} | {top} | "
                     f"{trace} | {density} |")
    return "\n".join(lines)


def _switch(model: dict[str, Any], key: str) -> str:
    return "—" if key not in model else ("on" if model[key] else "off")


def _labels(paths: list[Path]) -> list[str]:
    """Each run's folder, relative to the folder all of them share."""
    folders = [path.resolve().parent for path in paths]
    if len(folders) == 1:
        return [folders[0].name]
    common = Path(*Path(folders[0]).parts[:_common_depth(folders)])
    relative = [str(folder.relative_to(common)) for folder in folders]
    return [label if label != "." else folder.name for label, folder in zip(relative, folders)]


def _common_depth(folders: list[Path]) -> int:
    depth = 0
    for parts in zip(*(folder.parts for folder in folders)):
        if len(set(parts)) != 1:
            break
        depth += 1
    return depth


def _kind(path: Path) -> str:
    """``track``, ``blocks`` or ``run`` (a results.h5), from the file's ``kind`` attribute."""
    with open_results(path) as f:
        return str(_plain(f.attrs.get("kind", "run")))


def _regenerate_sweep(path: Path) -> str:
    """Redraw a ``track.h5`` / ``blocks.h5``'s plots (next to it) and print the sweep's own table."""
    from ..results.sweepplots import sweep_plots
    from .track import RunNumbers, sweep_table

    plots = sweep_plots(path)
    with open_results(path) as f:
        kind = str(_plain(f.attrs["kind"]))
        labels = [str(_plain(v)) for v in (f["step"][()] if kind == "track" else f["block"][()])]
        rows = len(labels)

        def column(name: str) -> np.ndarray:
            return f[name][()] if name in f else np.full(rows, np.nan)

        sizes = [int(n) for n in column("num_params")]
        numbers = [RunNumbers(num_params=sizes[i], loss=float(column("loss")[i]),
                              eigenvalues=f["eigenvalues"][i] if "eigenvalues" in f else None,
                              residuals=f["residuals"][i] if "residuals" in f else None,
                              trace=float(column("trace")[i]), trace_stderr=float(column("trace_stderr")[i]),
                              gradient_fraction=float(column("gradient_fraction")[i])) for i in range(rows)]
    what = "step" if kind == "track" else "block"
    title = f"{kind}: {rows} {'checkpoints' if kind == 'track' else 'blocks'} in {path}"
    table = sweep_table(title, what, labels, numbers, sizes if kind == "blocks" else None)
    return table + "\n" + "  ".join(f"plot: {plot}" for plot in plots)
