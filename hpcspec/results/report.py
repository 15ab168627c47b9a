"""Results: ``results.h5`` (the numbers), ``summary.json`` (small, readable), the density plot and
the console summary.

Written by rank 0 only, each file through :func:`hpcspec.files.outputs.atomic_path` (a temporary name,
fsynced, then renamed into place), so a results file is never seen half-written under its final
name and a failed write (a full disk) is one :class:`~hpcspec.files.outputs.WriteFailed` line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..analyses.gradient import GradientOverlap
from ..analyses.landscape import Landscape
from ..analyses.tasks import Density, EigenResult, TaskResults
from ..analyses.validation import Validation
from ..files.outputs import atomic_path
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


def write_results(path: Path, results: TaskResults, layout: ParamLayout, info: RunInfo,
                  validation: Validation | None = None) -> None:
    """``results.h5`` in the layout of README "Output files" (DESIGN §4): one group per task run."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in info.provenance.items():
            f.attrs[key] = value if isinstance(value, (int, float)) else str(value)
        f.attrs.update({"hpcspec_version": info.provenance["hpcspec"], "num_params": layout.size,
                        "num_samples": info.num_samples, "dtype": info.dtype, "config": info.config_toml,
                        "model": info.model, "data": info.data, "loss": info.loss, "bn_mode": info.bn_mode,
                        "loss_value": info.loss_value, "world_size": info.world_size, "hvp_method": info.hvp_method,
                        "seconds": info.seconds})
        if results.eigen is not None:
            _write_eigen(f, results, layout, info)
        if results.trace is not None:
            _write_trace(f, results)
        if results.density is not None:
            _write_density(f, results.density, results.seconds.get("density", 0.0))
        if results.gradient is not None:
            _write_gradient(f, results)
        if results.landscape is not None:
            _write_landscape(f, results)
        _write_params(f, layout)
        if validation is not None:
            _write_validation(f, validation)


def _write_eigen(f: h5py.File, results: TaskResults, layout: ParamLayout, info: RunInfo) -> None:
    result = results.eigen
    assert result is not None
    eigen = f.create_group("eigen")
    eigen.create_dataset("values", data=result.eigenvalues)
    vectors = result.eigenvectors.T.contiguous().numpy()
    eigen.create_dataset("vectors", data=vectors, chunks=(1, min(layout.size, 1 << 20)))
    eigen.create_dataset("residuals", data=result.residuals)
    attrs: dict[str, Any] = {"which": results.eigen_which, "tol": results.eigen_tol, "method": results.eigen_method,
                             "converged": result.converged, "num_matvecs": result.num_matvecs,
                             "hvp_method": info.hvp_method, "seconds": results.seconds.get("eigen", 0.0),
                             "iterations": _iterations(result)}
    attrs["data_passes"] = _data_passes(result)
    if isinstance(result, LanczosResult):
        attrs.update({"block_size": result.block_size, "restarts": result.restarts, "locked": result.locked,
                      "checks": result.checks, "complete": result.complete, "max_basis": result.max_basis,
                      "peak_basis": result.peak_basis, "guarantee": result.guarantee})
        eigen.create_dataset("alpha", data=result.alpha)
        eigen.create_dataset("beta", data=result.beta)
    else:
        eigen.create_dataset("iterations", data=result.iterations)
    eigen.attrs.update(attrs)


def _write_trace(f: h5py.File, results: TaskResults) -> None:
    result = results.trace
    assert result is not None
    group = f.create_group("trace")
    group.create_dataset("samples", data=np.asarray(result.samples, dtype=np.float64))
    group.attrs.update({"estimate": result.estimate, "stderr": result.stderr, "method": result.method,
                        "num_matvecs": result.num_matvecs, "deflated": result.deflated,
                        "converged": result.converged, "seconds": results.seconds.get("trace", 0.0)})


def _write_density(f: h5py.File, density: Density, seconds: float) -> None:
    result = density.result
    group = f.create_group("density")
    group.create_dataset("nodes", data=result.nodes)
    group.create_dataset("weights", data=result.weights)
    group.create_dataset("grid", data=density.grid)
    group.create_dataset("values", data=density.values)
    group.create_dataset("values_stderr", data=density.values_stderr)
    group.attrs.update({"sigma": density.sigma, "sigma_fraction": density.sigma_fraction,
                        "probes": result.nodes.shape[0], "steps": result.nodes.shape[1],
                        "num_matvecs": result.num_matvecs, "l1_stderr": density.l1_stderr, "seconds": seconds})
    lanczos = f.create_group("lanczos")
    lanczos.create_dataset("alpha", data=result.alpha)
    lanczos.create_dataset("beta", data=result.beta)
    lanczos.create_dataset("steps", data=result.steps)


def _write_gradient(f: h5py.File, results: TaskResults) -> None:
    """``/gradient``: the gradient's share ‖Vᵀg‖²/‖g‖² of the eigen task's eigenspace."""
    overlap = results.gradient
    assert overlap is not None
    group = f.create_group("gradient")
    group.create_dataset("fraction", data=overlap.fraction)
    group.create_dataset("norm", data=overlap.norm)
    group.create_dataset("overlaps", data=overlap.overlaps)
    group.attrs.update({"eigenvalues": overlap.eigenvalues, "k": len(overlap.overlaps),
                        "which": results.eigen_which, "seconds": results.seconds.get("gradient", 0.0)})


def _write_landscape(f: h5py.File, results: TaskResults) -> None:
    """``/landscape``: the loss along v₁ (and a random direction), and over the plane of v₁, v₂."""
    land = results.landscape
    assert land is not None
    group = f.create_group("landscape")
    group.create_dataset("alphas", data=land.alphas)
    group.create_dataset("loss_top", data=land.loss_top)
    if land.loss_random is not None:
        group.create_dataset("loss_random", data=land.loss_random)
    if land.betas is not None and land.loss_2d is not None:
        group.create_dataset("betas", data=land.betas)
        group.create_dataset("loss_2d", data=land.loss_2d)
    group.attrs.update({"eigenvalues": land.eigenvalues, "loss": land.loss, "slope": land.slope,
                        "random_seed": land.seed, "which": results.eigen_which,
                        "seconds": results.seconds.get("landscape", 0.0)})


def read_gradient(group: h5py.Group) -> GradientOverlap:
    """The ``/gradient`` group back as the object :func:`write_results` wrote (for offline reports)."""
    return GradientOverlap(fraction=float(group["fraction"][()]), norm=float(group["norm"][()]),
                           overlaps=group["overlaps"][()], eigenvalues=np.asarray(group.attrs["eigenvalues"]))


def read_landscape(group: h5py.Group) -> Landscape:
    """The ``/landscape`` group back as the object :func:`write_results` wrote (for offline reports)."""
    optional = {key: group[key][()] if key in group else None for key in ("loss_random", "betas", "loss_2d")}
    return Landscape(alphas=group["alphas"][()], loss_top=group["loss_top"][()], **optional,
                     eigenvalues=np.asarray(group.attrs["eigenvalues"]), loss=float(group.attrs["loss"]),
                     slope=float(group.attrs["slope"]), seed=int(group.attrs["random_seed"]))


def _write_params(f: h5py.File, layout: ParamLayout) -> None:
    params = f.create_group("params")
    params.create_dataset("names", data=np.array(layout.names, dtype=object), dtype=h5py.string_dtype())
    params.create_dataset("offsets", data=np.array(layout.offsets, dtype=np.int64))
    shapes = params.create_dataset("shapes", (len(layout.shapes),), dtype=h5py.vlen_dtype(np.int64))
    for i, shape in enumerate(layout.shapes):
        shapes[i] = np.array(shape, dtype=np.int64)
    params.attrs["excluded"] = json.dumps(list(layout.excluded))


def _write_validation(f: h5py.File, validation: Validation) -> None:
    group = f.create_group("validation")
    group.attrs.update({"exact_trace": validation.exact_trace, "exact_min": validation.exact_range[0],
                        "exact_max": validation.exact_range[1]})
    for name in ("eigen", "trace", "density"):
        record = getattr(validation, name)
        if record is None:
            continue
        sub = group.create_group(name)
        for key, value in record.items():
            if isinstance(value, np.ndarray):
                sub.create_dataset(key, data=value)
            else:
                sub.attrs[key] = np.asarray(value) if isinstance(value, tuple) else value


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


def summary(results: TaskResults, layout: ParamLayout, info: RunInfo,
            validation: Validation | None = None) -> dict[str, Any]:
    """The small human-readable record written to ``summary.json`` (no vectors, no grids)."""
    record: dict[str, Any] = {
        "model": info.model, "data": info.data, "loss": info.loss, "num_samples": info.num_samples,
        "num_params": layout.size, "world_size": info.world_size, "dtype": info.dtype,
        "hvp_method": info.hvp_method, "bn_mode": info.bn_mode, "loss_value": info.loss_value,
        "seconds": round(info.seconds, 3), "hpcspec_version": info.provenance["hpcspec"],
        "excluded_params": list(layout.excluded),
    }
    eigen = results.eigen
    if eigen is not None:
        record["eigen"] = {"method": results.eigen_method, "which": results.eigen_which,
                           "values": eigen.eigenvalues.tolist(), "residuals": eigen.residuals.tolist(),
                           "converged": eigen.converged, "iterations": _iterations(eigen),
                           "num_matvecs": eigen.num_matvecs, "data_passes": _data_passes(eigen),
                           "tol": results.eigen_tol}
        if isinstance(eigen, LanczosResult):
            record["eigen"].update({"block_size": eigen.block_size, "restarts": eigen.restarts,
                                    "checks": eigen.checks, "complete": eigen.complete, "guarantee": eigen.guarantee})
    if results.trace is not None:
        t = results.trace
        record["trace"] = {"method": t.method, "estimate": t.estimate, "stderr": t.stderr,
                           "num_matvecs": t.num_matvecs, "converged": t.converged}
    if results.density is not None:
        d = results.density
        record["density"] = {"probes": int(d.result.nodes.shape[0]), "steps": int(d.result.nodes.shape[1]),
                             "num_matvecs": d.result.num_matvecs, "sigma": d.sigma, "sigma_fraction": d.sigma_fraction,
                             "range": [float(d.grid[0]), float(d.grid[-1])], "l1_stderr": d.l1_stderr}
    if results.gradient is not None:
        g = results.gradient
        record["gradient"] = {"fraction": g.fraction, "norm": g.norm, "overlaps": g.overlaps.tolist()}
    if results.landscape is not None:
        land = results.landscape
        record["landscape"] = {"radius": float(land.alphas[-1]), "points": len(land.alphas),
                               "points_2d": 0 if land.betas is None else len(land.betas),
                               "loss": land.loss,
                               "loss_top_range": [float(land.loss_top.min()), float(land.loss_top.max())],
                               "loss_random_range": (None if land.loss_random is None else
                                                     [float(land.loss_random.min()), float(land.loss_random.max())])}
    if validation is not None:
        record["validation"] = _jsonable({"exact_trace": validation.exact_trace,
                                          "exact_range": list(validation.exact_range),
                                          "eigen": validation.eigen, "trace": validation.trace,
                                          "density": validation.density})
    return record


def _data_passes(result: EigenResult) -> int:
    """Passes over the data the eigen task spent (one per block of products; one per product else)."""
    passes = getattr(result, "data_passes", 0)
    return int(passes) if passes else int(result.num_matvecs)


def _iterations(result: EigenResult) -> int:
    return result.iterations if isinstance(result, LanczosResult) else int(np.sum(result.iterations))


def write_summary(path: Path, record: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def write_density_plot(path: Path, results: TaskResults, info: RunInfo) -> None:
    """``density.png``: the broadened SLQ density on a log scale, top eigenvalues marked if known."""
    from .plots import plot_density

    density = results.density
    assert density is not None
    marks = results.eigen.eigenvalues if results.eigen is not None else None
    title = (f"{info.model} on {info.data}: SLQ, {density.result.nodes.shape[0]} probes × "
             f"{density.result.nodes.shape[1]} steps, σ = {density.sigma_fraction:g} × range")
    plot_density(path, density.grid, density.values, title=title, eigenvalues=marks, sigma=density.sigma)


def console_summary(results: TaskResults, layout: ParamLayout, info: RunInfo, output: Path,
                    plot: Path | None = None) -> str:
    """The one-screen summary rank 0 prints: each task with its error estimate."""
    lines = [f"hpcspec: {info.model} on {info.data}: {info.num_samples} samples, {layout.size:,} parameters, "
             f"{info.world_size} rank{'s' if info.world_size > 1 else ''}, loss {info.loss_value:.6g}, "
             f"{info.dtype}, {info.hvp_method}"]
    if results.eigen is not None:
        lines += _eigen_lines(results)
    if results.trace is not None:
        t = results.trace
        low, high = t.estimate - 2 * t.stderr, t.estimate + 2 * t.stderr
        state = "" if t.converged else " (trace.rtol NOT reached)"
        lines.append(f"trace ({t.method}, {t.num_matvecs} products): {t.estimate:.10g} ± {t.stderr:.3g} standard "
                     f"error ({100 * t.stderr / max(abs(t.estimate), 1e-300):.2f}%); ±2σ interval "
                     f"[{low:.6g}, {high:.6g}]{state}")
    if results.density is not None:
        d = results.density
        atoms, _ = d.result.measure()
        spread = f"{d.l1_stderr:.3g}" if d.result.nodes.shape[0] > 1 else "n/a (one probe)"
        lines.append(f"density (SLQ, {d.result.nodes.shape[0]} probes × {d.result.nodes.shape[1]} steps, "
                     f"{d.result.num_matvecs} products): quadrature nodes in [{atoms.min():.6g}, {atoms.max():.6g}], "
                     f"broadened by σ = {d.sigma:.3g}; between-probe standard error ∫|δρ| = {spread}")
    if results.gradient is not None:
        g = results.gradient
        space = (f"top-{len(g.overlaps)}" if results.eigen_which in ("largest", "largest_magnitude")
                 else f"{len(g.overlaps)}-vector ({results.eigen_which})")
        lines.append(f"gradient: ‖g‖ = {g.norm:.6g}; share in the {space} eigenspace "
                     f"‖Vᵀg‖²/‖g‖² = {g.fraction:.4f} (per vector "
                     f"{', '.join(f'{o:.3g}' for o in g.overlaps)})")
    if results.landscape is not None:
        land = results.landscape
        along = f"loss along v1 in [{land.loss_top.min():.6g}, {land.loss_top.max():.6g}]"
        if land.loss_random is not None:
            along += f", along a random direction in [{land.loss_random.min():.6g}, {land.loss_random.max():.6g}]"
        grid = f"; 2-D grid {len(land.betas)}×{len(land.betas)}" if land.betas is not None else ""
        lines.append(f"landscape (α ∈ [{land.alphas[0]:g}, {land.alphas[-1]:g}], {len(land.alphas)} points): "
                     f"{along}{grid}")
    lines.append(f"total {info.seconds:.2f} s ({', '.join(f'{k} {v:.2f} s' for k, v in results.seconds.items())})")
    files = [f"results: {output / 'results.h5'}", f"summary: {output / 'summary.json'}"]
    if plot is not None:
        files.append(f"plot: {plot}")
    lines.append("  ".join(files))
    return "\n".join(lines)


def _eigen_lines(results: TaskResults) -> list[str]:
    result = results.eigen
    assert result is not None
    method = {"block": f"block Lanczos (block size {getattr(result, 'block_size', 1)})",
              "lanczos": "single-vector Lanczos"}.get(results.eigen_method, "power iteration (PyHessian rule)")
    lines = [f"top-{len(result.eigenvalues)} Hessian eigenvalues ({results.eigen_which}), {method}:",
             f"  {'i':>3}  {'eigenvalue':>22}  {'residual':>9}"]
    for i, (value, residual) in enumerate(zip(result.eigenvalues, result.residuals), start=1):
        lines.append(f"  {i:>3}  {value:>22.15e}  {residual:>9.2e}")
    if results.eigen_method == "block" and isinstance(result, LanczosResult):
        state = ("converged" if result.converged and result.complete else
                 "converged, completeness NOT checked" if result.converged else
                 "NOT converged (raise eigen.maxiter or eigen.tol)")
        lines.append(f"  {state} after {result.data_passes} data passes, {result.num_matvecs} Hessian-vector products "
                     f"({result.restarts} restarts, {result.checks} completeness checks); eigenvalue error ≲ "
                     f"residual²/gap")
        lines.append(f"  {result.guarantee}")
    elif results.eigen_method == "lanczos":
        state = "converged" if result.converged else "NOT converged (raise eigen.maxiter or eigen.tol)"
        lines.append(f"  {state} after {_iterations(result)} Lanczos steps = data passes, {result.num_matvecs} "
                     f"Hessian-vector products; eigenvalue error ≲ residual²/gap")
        lines.append(f"  {result.guarantee}")
    else:
        state = "converged" if result.converged else "NOT converged within eigen.maxiter"
        lines.append(f"  {state} (relative change < {results.eigen_tol:g}) after {result.num_matvecs} products "
                     f"= data passes; "
                     f"the residual ‖Hv − θv‖ is the error estimate")
    return lines


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
