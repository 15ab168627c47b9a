"""Results: ``results.h5`` (the numbers), ``summary.json`` (small, readable), the console table.

Written by rank 0 only, each file under a temporary name, fsynced, then renamed into place, so a
results file is never seen half-written under its final name.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from .params import ParamLayout
from .solvers import LanczosResult


@dataclass(frozen=True)
class RunInfo:
    """What the report says about the run besides the eigenpairs."""

    model: str
    data: str
    loss: str
    which: str
    tol: float
    num_samples: int
    world_size: int
    dtype: str
    hvp_method: str
    loss_value: float
    seconds: float
    config_toml: str
    provenance: dict[str, Any]


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; fsynced and renamed onto ``path`` on success."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_results(path: Path, result: LanczosResult, layout: ParamLayout, info: RunInfo) -> None:
    """``results.h5`` in the layout of README "Output files" (DESIGN §4)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in info.provenance.items():
            f.attrs[key] = value if isinstance(value, (int, float)) else str(value)
        f.attrs.update({"hpcspec_version": info.provenance["hpcspec"], "num_params": layout.size,
                        "num_samples": info.num_samples, "dtype": info.dtype, "config": info.config_toml,
                        "model": info.model, "data": info.data, "loss": info.loss,
                        "loss_value": info.loss_value, "world_size": info.world_size})
        eigen = f.create_group("eigen")
        eigen.create_dataset("values", data=result.eigenvalues)
        vectors = result.eigenvectors.T.contiguous().numpy()
        eigen.create_dataset("vectors", data=vectors, chunks=(1, min(layout.size, 1 << 20)))
        eigen.create_dataset("residuals", data=result.residuals)
        eigen.create_dataset("alpha", data=result.alpha)
        eigen.create_dataset("beta", data=result.beta)
        eigen.attrs.update({"which": info.which, "tol": info.tol, "converged": result.converged,
                            "iterations": result.iterations, "num_matvecs": result.num_matvecs,
                            "hvp_method": info.hvp_method, "seconds": info.seconds})
        params = f.create_group("params")
        params.create_dataset("names", data=np.array(layout.names, dtype=object), dtype=h5py.string_dtype())
        params.create_dataset("offsets", data=np.array(layout.offsets, dtype=np.int64))
        shapes = params.create_dataset("shapes", (len(layout.shapes),), dtype=h5py.vlen_dtype(np.int64))
        for i, shape in enumerate(layout.shapes):
            shapes[i] = np.array(shape, dtype=np.int64)
        params.attrs["excluded"] = json.dumps(list(layout.excluded))


def summary(result: LanczosResult, layout: ParamLayout, info: RunInfo) -> dict[str, Any]:
    """The small human-readable record written to ``summary.json``."""
    return {
        "model": info.model, "data": info.data, "loss": info.loss, "num_samples": info.num_samples,
        "num_params": layout.size, "world_size": info.world_size, "dtype": info.dtype,
        "hvp_method": info.hvp_method, "loss_value": info.loss_value,
        "eigen": {"which": info.which, "values": result.eigenvalues.tolist(),
                  "residuals": result.residuals.tolist(), "converged": result.converged,
                  "iterations": result.iterations, "num_matvecs": result.num_matvecs, "tol": info.tol},
        "seconds": round(info.seconds, 3), "hpcspec_version": info.provenance["hpcspec"],
        "excluded_params": list(layout.excluded),
    }


def write_summary(path: Path, record: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def console_table(result: LanczosResult, layout: ParamLayout, info: RunInfo, output: Path) -> str:
    """The one-screen summary rank 0 prints."""
    lines = [f"hpcspec: top-{len(result.eigenvalues)} Hessian eigenvalues ({info.which}) of {info.model} "
             f"on {info.data}: {info.num_samples} samples, {layout.size:,} parameters, "
             f"{info.world_size} rank{'s' if info.world_size > 1 else ''}, loss {info.loss_value:.6g}",
             f"  {'i':>3}  {'eigenvalue':>22}  {'residual':>9}"]
    for i, (value, residual) in enumerate(zip(result.eigenvalues, result.residuals), start=1):
        lines.append(f"  {i:>3}  {value:>22.15e}  {residual:>9.2e}")
    state = "converged" if result.converged else "NOT converged (raise eigen.maxiter or eigen.tol)"
    lines.append(f"{state} after {result.iterations} Lanczos steps, {result.num_matvecs} Hessian-vector "
                 f"products ({info.hvp_method}, {info.dtype}), {info.seconds:.2f} s")
    lines.append(f"results: {output / 'results.h5'}  summary: {output / 'summary.json'}")
    return "\n".join(lines)
