"""``results.h5``: its one writer and its one reader (layout: docs/results.md).

:func:`write_results` writes a run's file (rank 0 only, through
:func:`hpcspec.files.atomic.atomic_path`: a temporary name, fsynced, then renamed into place, so
the file is never seen half-written under its final name and a full disk is one
:class:`~hpcspec.files.atomic.WriteFailed` line). :func:`load_run` reads it back as the very
objects the run wrote from, so ``python -m hpcspec report`` rebuilds the run's own summary and
plots from the file alone; :func:`read_numbers` and :func:`read_landscape_arrays` are the
narrower reads a sweep and the landscape plots need. No other module opens a ``results.h5``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch

from ..analyses.gradient import GradientOverlap
from ..analyses.landscape import Landscape
from ..analyses.tasks import TaskResults, broaden
from ..analyses.validation import Validation
from ..errors import InputError
from ..files.atomic import atomic_path
from ..files.hdf5 import create_hdf5
from ..problem.params import ParamLayout
from ..solvers import DensityResult, LanczosResult, PowerResult, TraceResult
from .records import RunInfo, RunNumbers, StoredRun, data_passes, eigen_iterations

#: results.h5 attributes that are the run's own fields, not provenance.
_INFO_ATTRS = ("num_params", "num_samples", "dtype", "config", "model", "data", "loss", "bn_mode", "loss_value",
              "world_size", "hvp_method", "hvp_reason", "hvp_trial_products", "seconds")


# -- writing -----------------------------------------------------------------------------------

def write_results(path: Path, results: TaskResults, layout: ParamLayout, info: RunInfo,
                  validation: Validation | None = None) -> None:
    """``results.h5`` in the layout docs/results.md describes: one group per task run."""
    with atomic_path(path) as tmp, create_hdf5(tmp) as f:
        for key, value in info.provenance.items():
            f.attrs[key] = value if isinstance(value, (int, float)) else str(value)
        f.attrs.update({"hpcspec_version": info.provenance["hpcspec"], "num_params": layout.size,
                        "num_samples": info.num_samples, "dtype": info.dtype, "config": info.config_toml,
                        "model": info.model, "data": info.data, "loss": info.loss, "bn_mode": info.bn_mode,
                        "loss_value": info.loss_value, "world_size": info.world_size, "hvp_method": info.hvp_method,
                        "hvp_reason": info.hvp_reason, "hvp_trial_products": info.hvp_trial_products,
                        "seconds": info.seconds})
        for name, write in GROUPS.items():
            if getattr(results, name) is not None:
                write(f, results, layout, info)
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
                             "iterations": eigen_iterations(result)}
    attrs["data_passes"] = data_passes(result)
    if isinstance(result, LanczosResult):
        attrs.update({"block_size": result.block_size, "restarts": result.restarts, "locked": result.locked,
                      "checks": result.checks, "complete": result.complete, "max_basis": result.max_basis,
                      "peak_basis": result.peak_basis, "guarantee": result.guarantee})
        eigen.create_dataset("alpha", data=result.alpha)
        eigen.create_dataset("beta", data=result.beta)
    else:
        eigen.create_dataset("iterations", data=result.iterations)
    eigen.attrs.update(attrs)


def _write_trace(f: h5py.File, results: TaskResults, layout: ParamLayout, info: RunInfo) -> None:
    result = results.trace
    assert result is not None
    group = f.create_group("trace")
    group.create_dataset("samples", data=np.asarray(result.samples, dtype=np.float64))
    group.attrs.update({"estimate": result.estimate, "stderr": result.stderr, "method": result.method,
                        "num_matvecs": result.num_matvecs, "deflated": result.deflated, "rtol": results.trace_rtol,
                        "seconds": results.seconds.get("trace", 0.0)})
    if results.trace_rtol > 0:  # with no rtol there was no stop test: nothing converged or failed to
        group.attrs["converged"] = result.converged


def _write_density(f: h5py.File, results: TaskResults, layout: ParamLayout, info: RunInfo) -> None:
    density, seconds = results.density, results.seconds.get("density", 0.0)
    assert density is not None
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


def _write_gradient(f: h5py.File, results: TaskResults, layout: ParamLayout, info: RunInfo) -> None:
    """``/gradient``: the gradient's share ‖Vᵀg‖²/‖g‖² of the eigen task's eigenspace."""
    overlap = results.gradient
    assert overlap is not None
    group = f.create_group("gradient")
    group.create_dataset("fraction", data=overlap.fraction)
    group.create_dataset("norm", data=overlap.norm)
    group.create_dataset("overlaps", data=overlap.overlaps)
    group.attrs.update({"eigenvalues": overlap.eigenvalues, "k": len(overlap.overlaps),
                        "which": results.eigen_which, "seconds": results.seconds.get("gradient", 0.0)})


def _write_landscape(f: h5py.File, results: TaskResults, layout: ParamLayout, info: RunInfo) -> None:
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


#: Each result's group of results.h5, in file order: the :class:`TaskResults` field it is written
#: from (when the run has it) and its writer. A new task's results are one entry here.
GROUPS: dict[str, Callable[[h5py.File, TaskResults, ParamLayout, RunInfo], None]] = {
    "eigen": _write_eigen, "trace": _write_trace, "density": _write_density, "gradient": _write_gradient,
    "landscape": _write_landscape}


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


# -- reading -----------------------------------------------------------------------------------

def open_results(path: Path) -> h5py.File:
    """``path`` opened read-only, or a one-line :class:`InputError` saying why it cannot be."""
    if not path.is_file():
        raise InputError(f"results file {str(path)!r} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"results file {str(path)!r} is not a readable HDF5 file ({exc})") from None


def plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def file_kind(path: Path) -> str:
    """``track``, ``blocks`` or ``run`` (a results.h5), from the file's ``kind`` attribute."""
    with open_results(path) as f:
        return str(plain(f.attrs.get("kind", "run")))


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
    provenance = {key: plain(value) for key, value in attrs.items() if key not in _INFO_ATTRS}
    provenance.setdefault("hpcspec", plain(attrs.get("hpcspec_version", "unknown")))
    return RunInfo(model=str(attrs["model"]), data=str(attrs["data"]), loss=str(attrs["loss"]),
                   num_samples=int(attrs["num_samples"]), world_size=int(attrs["world_size"]),
                   dtype=str(attrs["dtype"]), hvp_method=str(attrs["hvp_method"]), bn_mode=str(attrs["bn_mode"]),
                   loss_value=float(attrs["loss_value"]), seconds=float(attrs["seconds"]),
                   config_toml=str(attrs["config"]), provenance=provenance,
                   hvp_reason=str(attrs.get("hvp_reason", "")),  # absent from older files
                   hvp_trial_products=int(attrs.get("hvp_trial_products", 0)))


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
                                    converged=bool(attrs.get("converged", True)))
        results.trace_rtol = float(attrs.get("rtol", 0.0))
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


def _validation(group: h5py.Group) -> Validation:
    records: dict[str, dict[str, Any] | None] = {}
    for name in ("eigen", "trace", "density"):
        if name not in group:
            records[name] = None
            continue
        sub = group[name]
        record: dict[str, Any] = {key: sub[key][()] for key in sub}
        record.update({key: plain(value) for key, value in sub.attrs.items()})
        records[name] = record
    attrs = group.attrs
    num_params = int(group.file.attrs["num_params"])
    return Validation(num_params=num_params, exact_range=(float(attrs["exact_min"]), float(attrs["exact_max"])),
                      exact_trace=float(attrs["exact_trace"]), eigen=records["eigen"], trace=records["trace"],
                      density=records["density"])


def read_landscape_arrays(path: Path | str) -> dict[str, Any]:
    """The ``/landscape`` group of a results file as plain arrays and attributes, with a ``title``
    (model on data): what the landscape plots draw. A file without the group is a ValueError."""
    with h5py.File(path, "r") as f:
        if "landscape" not in f:
            raise ValueError(f"{str(path)!r} holds no /landscape group (run with --landscape)")
        group = f["landscape"]
        data = {key: group[key][()] for key in group}
        data.update({key: group.attrs[key] for key in group.attrs})
        data["title"] = f"{f.attrs.get('model', '?')} on {f.attrs.get('data', '?')}"
    return data


def read_numbers(path: Path) -> RunNumbers:
    """Top eigenvalues, trace, gradient fraction, loss and the SLQ measure of one ``results.h5``."""
    try:
        with h5py.File(path, "r") as f:
            numbers = RunNumbers(num_params=int(f.attrs["num_params"]), loss=float(f.attrs["loss_value"]))
            if "eigen" in f:
                numbers.eigenvalues = f["eigen/values"][...].astype(np.float64)
                numbers.residuals = f["eigen/residuals"][...].astype(np.float64)
            if "trace" in f:
                numbers.trace = float(f["trace"].attrs["estimate"])
                numbers.trace_stderr = float(f["trace"].attrs["stderr"])
            if "gradient" in f and "fraction" in f["gradient"]:
                numbers.gradient_fraction = float(f["gradient/fraction"][()])
            if "density" in f:
                nodes, weights = f["density/nodes"][...], f["density/weights"][...]
                # padded nodes carry weight 0; each probe's weights sum to 1
                numbers.atoms = nodes.ravel().astype(np.float64)
                numbers.weights = weights.ravel().astype(np.float64) / nodes.shape[0]
            return numbers
    except (OSError, KeyError) as exc:
        raise InputError(f"cannot read the sub-run results {str(path)!r} ({exc})") from None
