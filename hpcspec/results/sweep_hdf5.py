"""``track.h5`` and ``blocks.h5``: the one writer and reader of a sweep's file (docs/results.md,
"track.h5" and "blocks.h5"): one row per sub-run of the numbers :class:`~hpcspec.results.records.RunNumbers`
holds, plus for ``track`` the common-grid spectral density.

Written by rank 0 through :func:`hpcspec.files.atomic.atomic_path`. :func:`read_sweep` gives the
plots (:mod:`hpcspec.results.sweepplots`) and the offline ``report`` the file's contents as plain
arrays, so neither opens the file itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..config import Config, to_toml
from ..errors import InputError
from ..files.atomic import atomic_path
from ..files.hdf5 import create_hdf5
from .hdf5 import plain
from .records import RunNumbers

#: The ``kind`` attribute of each sweep file.
SWEEP_KINDS = ("track", "blocks")


def _stack(rows: list[np.ndarray | None]) -> np.ndarray:
    """(S, k) from per-run vectors, NaN-padded where a run found fewer (or none)."""
    width = max((len(r) for r in rows if r is not None), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        if row is not None:
            out[i, :len(row)] = row
    return out


def _strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=object)


def _write_common(f: h5py.File, numbers: list[RunNumbers]) -> None:
    """The datasets ``track.h5`` and ``blocks.h5`` share, one row per sub-run."""
    f.create_dataset("num_params", data=np.array([n.num_params for n in numbers], dtype=np.int64))
    f.create_dataset("loss", data=np.array([n.loss for n in numbers]))
    if any(n.eigenvalues is not None for n in numbers):
        f.create_dataset("eigenvalues", data=_stack([n.eigenvalues for n in numbers]))
        f.create_dataset("residuals", data=_stack([n.residuals for n in numbers]))
    if any(not math.isnan(n.trace) for n in numbers):
        f.create_dataset("trace", data=np.array([n.trace for n in numbers]))
        f.create_dataset("trace_stderr", data=np.array([n.trace_stderr for n in numbers]))
    if any(not math.isnan(n.gradient_fraction) for n in numbers):
        f.create_dataset("gradient_fraction", data=np.array([n.gradient_fraction for n in numbers]))


def write_track(path: Path, cfg: Config, steps: list[int], weights: list[str], runs: list[str],
                numbers: list[RunNumbers], density: tuple[np.ndarray, np.ndarray, float] | None) -> None:
    """``track.h5``: one row per checkpoint (its step, weights file and sub-run's results.h5,
    relative to the output folder), and ``density`` = (grid, values, σ) on the common grid if given."""
    with atomic_path(path) as tmp, create_hdf5(tmp) as f:
        f.attrs.update({"kind": "track", "config": to_toml(cfg), "model": cfg.model.spec, "data": cfg.data.spec,
                        "loss": cfg.hessian.loss, "tasks": ",".join(cfg.tasks)})
        f.create_dataset("step", data=np.array(steps, dtype=np.int64))
        f.create_dataset("weights", data=_strings(weights), dtype=h5py.string_dtype())
        f.create_dataset("runs", data=_strings(runs), dtype=h5py.string_dtype())
        _write_common(f, numbers)
        if density is not None:
            grid, values, sigma = density
            group = f.create_group("density")
            group.create_dataset("grid", data=grid)
            group.create_dataset("values", data=values)
            group.attrs.update({"sigma": sigma, "sigma_fraction": cfg.density.sigma,
                                "source": "each step's SLQ nodes and weights, broadened on the common grid"})


def write_blocks(path: Path, cfg: Config, blocks: list[str], params: list[str], runs: list[str],
                 numbers: list[RunNumbers]) -> None:
    """``blocks.h5``: one row per block (its name, ``model.params`` selection and sub-run's results.h5)."""
    with atomic_path(path) as tmp, create_hdf5(tmp) as f:
        f.attrs.update({"kind": "blocks", "config": to_toml(cfg), "model": cfg.model.spec, "data": cfg.data.spec,
                        "loss": cfg.hessian.loss, "depth": cfg.blocks.depth, "tasks": ",".join(cfg.tasks)})
        f.create_dataset("block", data=_strings(blocks), dtype=h5py.string_dtype())
        f.create_dataset("params", data=_strings(params), dtype=h5py.string_dtype())
        f.create_dataset("runs", data=_strings(runs), dtype=h5py.string_dtype())
        _write_common(f, numbers)


@dataclass
class SweepFile:
    """A ``track.h5`` / ``blocks.h5`` read back: per row its label and numbers (None when the file
    has no such column), the file's attributes, and for ``track`` the density on the common grid."""

    kind: str
    attrs: dict[str, Any]
    labels: list[str]
    num_params: np.ndarray
    loss: np.ndarray
    steps: np.ndarray | None = None
    eigenvalues: np.ndarray | None = None
    residuals: np.ndarray | None = None
    trace: np.ndarray | None = None
    trace_stderr: np.ndarray | None = None
    gradient_fraction: np.ndarray | None = None
    density_grid: np.ndarray | None = None
    density_values: np.ndarray | None = None
    density_attrs: dict[str, Any] = field(default_factory=dict)

    def numbers(self) -> list[RunNumbers]:
        """Each row as the :class:`RunNumbers` it was written from (without the SLQ measure)."""
        rows = len(self.labels)

        def column(values: np.ndarray | None) -> np.ndarray:
            return values if values is not None else np.full(rows, np.nan)

        trace, stderr, fraction = column(self.trace), column(self.trace_stderr), column(self.gradient_fraction)
        return [RunNumbers(num_params=int(self.num_params[i]), loss=float(self.loss[i]),
                           eigenvalues=self.eigenvalues[i] if self.eigenvalues is not None else None,
                           residuals=self.residuals[i] if self.residuals is not None else None,
                           trace=float(trace[i]), trace_stderr=float(stderr[i]),
                           gradient_fraction=float(fraction[i])) for i in range(rows)]


def read_sweep(path: Path | str) -> SweepFile:
    """The sweep file at ``path``; a file that is not one is a one-line :class:`InputError`."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{str(path)!r} is not a readable HDF5 file ({exc})") from None
    with f:
        kind = f.attrs.get("kind")
        if kind not in SWEEP_KINDS:
            raise InputError(f"{str(path)!r} is not a track.h5 or blocks.h5 (kind attribute {kind!r})")

        def optional(name: str) -> np.ndarray | None:
            return f[name][...] if name in f else None

        sweep = SweepFile(kind=str(kind), attrs={key: plain(value) for key, value in f.attrs.items()},
                          labels=[str(plain(v)) for v in f["step" if kind == "track" else "block"][()]],
                          num_params=f["num_params"][...], loss=f["loss"][...],
                          steps=optional("step") if kind == "track" else None,
                          eigenvalues=optional("eigenvalues"), residuals=optional("residuals"),
                          trace=optional("trace"), trace_stderr=optional("trace_stderr"),
                          gradient_fraction=optional("gradient_fraction"))
        if "density" in f:
            sweep.density_grid, sweep.density_values = f["density/grid"][...], f["density/values"][...]
            sweep.density_attrs = {key: plain(value) for key, value in f["density"].attrs.items()}
    return sweep
