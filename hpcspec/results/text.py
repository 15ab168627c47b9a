"""Text a run leaves behind: the ``summary.json`` record, the one-screen console summary, the
validation table, the sweep table of ``track`` / ``--per-block`` and the Markdown table that
compares runs.

Every function takes the records of :mod:`hpcspec.results.records` (a run's own, or one read back
by :mod:`hpcspec.results.hdf5`), so the offline ``report`` prints what the run printed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..analyses.tasks import TaskResults
from ..analyses.validation import Validation
from ..config import tomllib
from ..files.atomic import write_text_atomic
from ..problem.models import RESNET_DEPTHS
from ..problem.params import ParamLayout
from ..solvers import LanczosResult
from .records import RunInfo, RunNumbers, StoredRun, data_passes, eigen_iterations


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _eigen_record(results: TaskResults) -> dict[str, Any]:
    eigen = results.eigen
    assert eigen is not None
    record = {"method": results.eigen_method, "which": results.eigen_which,
              "values": eigen.eigenvalues.tolist(), "residuals": eigen.residuals.tolist(),
              "converged": eigen.converged, "iterations": eigen_iterations(eigen),
              "num_matvecs": eigen.num_matvecs, "data_passes": data_passes(eigen), "tol": results.eigen_tol}
    if isinstance(eigen, LanczosResult):
        record.update({"block_size": eigen.block_size, "restarts": eigen.restarts, "checks": eigen.checks,
                       "complete": eigen.complete, "guarantee": eigen.guarantee})
    return record


def _trace_record(results: TaskResults) -> dict[str, Any]:
    t = results.trace
    assert t is not None
    record = {"method": t.method, "estimate": t.estimate, "stderr": t.stderr, "num_matvecs": t.num_matvecs,
              "rtol": results.trace_rtol}
    if results.trace_rtol > 0:  # with no rtol there was no stop test (docs/results.md)
        record["converged"] = t.converged
    return record


def _density_record(results: TaskResults) -> dict[str, Any]:
    d = results.density
    assert d is not None
    return {"probes": int(d.result.nodes.shape[0]), "steps": int(d.result.nodes.shape[1]),
            "num_matvecs": d.result.num_matvecs, "sigma": d.sigma, "sigma_fraction": d.sigma_fraction,
            "range": [float(d.grid[0]), float(d.grid[-1])], "l1_stderr": d.l1_stderr}


def _gradient_record(results: TaskResults) -> dict[str, Any]:
    g = results.gradient
    assert g is not None
    return {"fraction": g.fraction, "norm": g.norm, "overlaps": g.overlaps.tolist()}


def _landscape_record(results: TaskResults) -> dict[str, Any]:
    land = results.landscape
    assert land is not None
    return {"radius": float(land.alphas[-1]), "points": len(land.alphas),
            "points_2d": 0 if land.betas is None else len(land.betas), "loss": land.loss,
            "loss_top_range": [float(land.loss_top.min()), float(land.loss_top.max())],
            "loss_random_range": (None if land.loss_random is None else
                                  [float(land.loss_random.min()), float(land.loss_random.max())])}


#: Each result's entry of summary.json, in order: the :class:`TaskResults` field it is made from
#: (when the run has it) and its record. A new task's results are one entry here.
RECORDS: dict[str, Callable[[TaskResults], dict[str, Any]]] = {
    "eigen": _eigen_record, "trace": _trace_record, "density": _density_record, "gradient": _gradient_record,
    "landscape": _landscape_record}


def summary(results: TaskResults, layout: ParamLayout, info: RunInfo,
            validation: Validation | None = None) -> dict[str, Any]:
    """The small human-readable record written to ``summary.json`` (no vectors, no grids)."""
    record: dict[str, Any] = {
        "model": info.model, "data": info.data, "loss": info.loss, "num_samples": info.num_samples,
        "num_params": layout.size, "world_size": info.world_size, "dtype": info.dtype,
        "hvp_method": info.hvp_method, "hvp_reason": info.hvp_reason, "hvp_trial_products": info.hvp_trial_products,
        "bn_mode": info.bn_mode, "loss_value": info.loss_value,
        "seconds": round(info.seconds, 3), "hpcspec_version": info.provenance["hpcspec"],
        "excluded_params": list(layout.excluded),
    }
    for name, part in RECORDS.items():
        if getattr(results, name) is not None:
            record[name] = part(results)
    if validation is not None:
        record["validation"] = _jsonable({"exact_trace": validation.exact_trace,
                                          "exact_range": list(validation.exact_range),
                                          "eigen": validation.eigen, "trace": validation.trace,
                                          "density": validation.density})
    return record


def write_summary(path: Path, record: dict[str, Any]) -> None:
    """``summary.json``: ``record`` as indented JSON, written atomically."""
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def method_note(info: RunInfo) -> str:
    """`` (auto: REASON; N trial products)`` after the HVP method when ``auto`` chose it ("" when named)."""
    if info.hvp_reason in ("", "named"):
        return ""
    trials = f"; {info.hvp_trial_products} trial product{'s' if info.hvp_trial_products != 1 else ''}"
    return f" (auto: {info.hvp_reason}{trials})"


def console_summary(results: TaskResults, layout: ParamLayout, info: RunInfo,
                    files: Sequence[tuple[str, Path]] = ()) -> str:
    """The one-screen summary rank 0 prints: each task with its error estimate, then one line naming
    ``files`` as ``role: path`` pairs (:func:`files_line`): only files that were written or read."""
    lines = [f"hpcspec: {info.model} on {info.data}: {info.num_samples} samples, {layout.size:,} parameters, "
             f"{info.world_size} rank{'s' if info.world_size > 1 else ''}, loss {info.loss_value:.6g}, "
             f"{info.dtype}, {info.hvp_method}{method_note(info)}"]
    for name, part in CONSOLE.items():
        if getattr(results, name) is not None:
            lines += part(results)
    lines.append(f"total {info.seconds:.2f} s ({', '.join(f'{k} {v:.2f} s' for k, v in results.seconds.items())})")
    if files:
        lines.append(files_line(files))
    return "\n".join(lines)


def _trace_lines(results: TaskResults) -> list[str]:
    t = results.trace
    assert t is not None
    low, high = t.estimate - 2 * t.stderr, t.estimate + 2 * t.stderr
    state = "" if t.converged else " (trace.rtol NOT reached)"
    return [f"trace ({t.method}, {t.num_matvecs} products): {t.estimate:.10g} ± {t.stderr:.3g} standard "
            f"error ({100 * t.stderr / max(abs(t.estimate), 1e-300):.2f}%); ±2σ interval "
            f"[{low:.6g}, {high:.6g}]{state}"]


def _density_lines(results: TaskResults) -> list[str]:
    d = results.density
    assert d is not None
    atoms, _ = d.result.measure()
    spread = f"{d.l1_stderr:.3g}" if d.result.nodes.shape[0] > 1 else "n/a (one probe)"
    return [f"density (SLQ, {d.result.nodes.shape[0]} probes × {d.result.nodes.shape[1]} steps, "
            f"{d.result.num_matvecs} products): quadrature nodes in [{atoms.min():.6g}, {atoms.max():.6g}], "
            f"broadened by σ = {d.sigma:.3g}; between-probe standard error ∫|δρ| = {spread}"]


def _gradient_lines(results: TaskResults) -> list[str]:
    g = results.gradient
    assert g is not None
    space = (f"top-{len(g.overlaps)}" if results.eigen_which in ("largest", "largest_magnitude")
             else f"{len(g.overlaps)}-vector ({results.eigen_which})")
    return [f"gradient: ‖g‖ = {g.norm:.6g}; share in the {space} eigenspace "
            f"‖Vᵀg‖²/‖g‖² = {g.fraction:.4f} (per vector "
            f"{', '.join(f'{o:.3g}' for o in g.overlaps)})"]


def _landscape_lines(results: TaskResults) -> list[str]:
    land = results.landscape
    assert land is not None
    along = f"loss along v1 in [{land.loss_top.min():.6g}, {land.loss_top.max():.6g}]"
    if land.loss_random is not None:
        along += f", along a random direction in [{land.loss_random.min():.6g}, {land.loss_random.max():.6g}]"
    grid = f"; 2-D grid {len(land.betas)}×{len(land.betas)}" if land.betas is not None else ""
    return [f"landscape (α ∈ [{land.alphas[0]:g}, {land.alphas[-1]:g}], {len(land.alphas)} points): "
            f"{along}{grid}"]


def files_line(files: Sequence[tuple[str, Path]]) -> str:
    """``results: A  summary: B  plots: C, D``: roles in order, the paths of a repeated role joined
    (``plot`` becomes ``plots`` when there are several)."""
    grouped: dict[str, list[str]] = {}
    for role, path in files:
        grouped.setdefault(role, []).append(str(path))
    return "  ".join(f"{role}{'s' if len(paths) > 1 and role == 'plot' else ''}: {', '.join(paths)}"
                     for role, paths in grouped.items())


def _eigen_lines(results: TaskResults) -> list[str]:
    result = results.eigen
    assert result is not None
    method = {"block": f"block Lanczos (block size {getattr(result, 'block_size', 1)})",
              "lanczos": "single-vector Lanczos"}.get(results.eigen_method, "power iteration (PyHessian rule)")
    k = len(result.eigenvalues)
    title = (f"top-{k} Hessian eigenvalues" if result.converged else  # unconverged: not certified as the top-k
             f"{k} Ritz values, NOT certified as the top-{k} Hessian eigenvalues")
    lines = [f"{title} ({results.eigen_which}), {method}:",
             f"  {'i':>3}  {'eigenvalue':>22}  {'residual':>9}"]
    for i, (value, residual) in enumerate(zip(result.eigenvalues, result.residuals), start=1):
        lines.append(f"  {i:>3}  {value:>22.15e}  {residual:>9.2e}")
    if results.eigen_method == "block" and isinstance(result, LanczosResult):
        state = ("converged" if result.converged and result.complete else
                 "converged, completeness NOT established" if result.converged else
                 "NOT converged (raise eigen.maxiter or eigen.tol)")
        lines.append(f"  {state} after {result.data_passes} data passes, {result.num_matvecs} Hessian-vector products "
                     f"({result.restarts} restarts, {result.checks} completeness checks); eigenvalue error ≲ "
                     f"residual²/gap")
        lines.append(f"  {result.guarantee}")
    elif results.eigen_method == "lanczos":
        state = "converged" if result.converged else "NOT converged (raise eigen.maxiter or eigen.tol)"
        lines.append(f"  {state} after {eigen_iterations(result)} Lanczos steps = data passes, {result.num_matvecs} "
                     f"Hessian-vector products; eigenvalue error ≲ residual²/gap")
        lines.append(f"  {result.guarantee}")
    else:
        state = "converged" if result.converged else "NOT converged within eigen.maxiter"
        lines.append(f"  {state} (relative change < {results.eigen_tol:g}) after {result.num_matvecs} products "
                     f"= data passes; "
                     f"the residual ‖Hv − θv‖ is the error estimate")
    return lines


#: Each result's console lines, in order: the :class:`TaskResults` field they are made from (when
#: the run has it) and its lines. A new task's results are one entry here.
CONSOLE: dict[str, Callable[[TaskResults], list[str]]] = {
    "eigen": _eigen_lines, "trace": _trace_lines, "density": _density_lines, "gradient": _gradient_lines,
    "landscape": _landscape_lines}


def validation_table(validation: Validation, results: TaskResults) -> str:
    """Each estimator's error against the dense Hessian, for ``validate``."""
    lines = [f"validation against the dense float64 Hessian ({validation.num_params:,} × {validation.num_params:,}): "
             f"spectrum [{validation.exact_range[0]:.6g}, {validation.exact_range[1]:.6g}], "
             f"trace {validation.exact_trace:.10g}"]
    if validation.eigen is not None:
        e = validation.eigen
        lines.append(f"  eigen: max relative eigenvalue error {e['max_relative_error']:.2e}; "
                     f"true residuals ≤ {float(np.max(e['true_residuals'])):.2e}")
        lines.append(f"  {'i':>5}  {'exact':>22}  {'found':>22}  {'rel. error':>10}  {'sin angle':>9}")
        for i, (exact, found, rel, sin) in enumerate(zip(e["expected"], e["found"], e["relative_errors"],
                                                          e["sin_angles"]), start=1):
            lines.append(f"  {i:>5}  {exact:>22.15e}  {found:>22.15e}  {rel:>10.2e}  {sin:>9.2e}")
    if validation.trace is not None:
        t = validation.trace
        lines.append(f"  trace: relative error {100 * t['relative_error']:.3f}% = {t['error_in_stderrs']:.2f} "
                     f"reported standard errors")
    if validation.density is not None:
        d = validation.density
        lines.append(f"  density: L1 distance {d['l1']:.4f} to the exact spectrum broadened alike "
                     f"(σ = {d['sigma_fraction']:g} × exact range); 1-Wasserstein distance {d['wasserstein1']:.3g}")
    return "\n".join(lines)


def sweep_table(title: str, what: str, labels: list[str], numbers: list[RunNumbers],
                sizes: list[int] | None = None) -> str:
    """The short table rank 0 prints: per row the top eigenvalue, trace ± stderr, gradient fraction."""
    width = max([len(what), *(len(label) for label in labels)])
    head = f"  {what:>{width}}" + (f"  {'params':>10}" if sizes else "")
    head += f"  {'top eigenvalue':>16}  {'trace ± stderr':>26}  {'grad. fraction':>14}"
    lines = [title, head]
    for i, (label, n) in enumerate(zip(labels, numbers)):
        row = f"  {label:>{width}}" + (f"  {sizes[i]:>10,}" if sizes else "")
        row += f"  {_num(n.top):>16}"
        trace = "—" if math.isnan(n.trace) else f"{n.trace:.6g} ± {n.trace_stderr:.2g}"
        row += f"  {trace:>26}  {_num(n.gradient_fraction, '.4f'):>14}"
        lines.append(row)
    return "\n".join(lines)


def _num(value: float, fmt: str = ".8g") -> str:
    return "—" if math.isnan(value) else format(value, fmt)


def runs_table(runs: list[tuple[str, Path, StoredRun]], base: Path | None = None) -> str:
    """A Markdown table comparing runs, one row per ``(label, results.h5 path, stored run)``: top
    eigenvalue ± its residual (a bound on its error: for a symmetric matrix some eigenvalue lies
    within ‖Hy − θy‖ of θ) and trace ± its standard error. The BatchNorm and residual switches are
    shown for the ResNets, the only models they change ("—" for the others); each density.png is a
    link relative to ``base`` (the table file's folder; default the working directory), whatever
    form the results paths were given in."""
    base = Path.cwd() if base is None else base
    lines = ["| run | model | batchnorm | residual | parameters | samples | loss | top eigenvalue | trace | density |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, path, stored in runs:
        model = tomllib.loads(stored.info.config_toml).get("model", {})
        results = stored.results
        top = "—"
        if results.eigen is not None:
            top = f"{results.eigen.eigenvalues[0]:.6g} ± {results.eigen.residuals[0]:.1e}"
        trace = "—"
        if results.trace is not None:
            trace = f"{results.trace.estimate:.6g} ± {results.trace.stderr:.2g}"
        plot = path.parent / "density.png"
        density = "—"
        if results.density is not None and plot.is_file():
            density = f"[density.png]({Path(os.path.relpath(plot.resolve(), base.resolve())).as_posix()})"
        switches = stored.info.model in RESNET_DEPTHS
        batchnorm = _switch(model, "batchnorm") if switches else "—"
        residual = _switch(model, "residual") if switches else "—"
        lines.append(f"| {label} | {stored.info.model} | {batchnorm} | {residual} | "
                     f"{stored.layout.size:,} | {stored.info.num_samples:,} | {stored.info.loss_value:.4g} | {top} | "
                     f"{trace} | {density} |")
    return "\n".join(lines)


def _switch(model: dict[str, Any], key: str) -> str:
    return "—" if key not in model else ("on" if model[key] else "off")
