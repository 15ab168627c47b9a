"""Data sources and the deterministic rank shard.

Rank r of R holds samples ``[r*N//R, (r+1)*N//R)`` of the data set in its stored order: no
shuffling, no augmentation, so the Hessian is that of the mean loss over all N samples whatever R
is. Loading is local to the rank (no collectives), so a failure can be agreed on afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .spec import is_callable_spec, resolve_callable

BUILTIN_DATA = ("digits", "synthetic")


@dataclass(frozen=True)
class Shard:
    """This rank's contiguous slice ``[start, stop)`` of a data set of ``total`` samples."""

    inputs: torch.Tensor
    targets: torch.Tensor
    start: int
    stop: int
    total: int

    def __len__(self) -> int:
        return self.stop - self.start


def shard_range(total: int, rank: int, size: int, granule: int = 1) -> tuple[int, int]:
    """Samples ``[start, stop)`` owned by ``rank``: contiguous, made of whole granules of
    ``granule`` samples (the last one may be short), granule counts differing by at most one.

    ``granule = batch_size`` keeps every batch of the whole data set on one rank, whatever the
    rank count: what a rank-count-independent (ordered) reduction needs.
    """
    granules = -(-total // granule)
    start, stop = rank * granules // size * granule, (rank + 1) * granules // size * granule
    return min(start, total), min(stop, total)


def load_shard(spec: str, rank: int, size: int, *, samples: int = 512, features: int = 16,
               classes: int = 4, outputs: int = 1, seed: int = 0, granule: int = 1) -> Shard:
    """Load this rank's shard of the data set named by ``spec``.

    ``spec`` is ``digits`` (scikit-learn's bundled handwritten digits, standardised per feature),
    ``synthetic`` (a seeded teacher problem; ``classes = 0`` gives regression targets of width
    ``outputs``), a path to an HDF5 file with datasets ``x`` and ``y``, or ``module:callable``
    returning a ``torch.utils.data.Dataset`` or an ``(x, y)`` pair of tensors. Shards are made
    of whole ``granule``-sample pieces (:func:`shard_range`).
    """
    if spec == "digits":
        x, y = _digits()
    elif spec == "synthetic":
        x, y = synthetic(samples, features, classes, outputs, seed)
    elif spec.endswith((".h5", ".hdf5")) or "/" in spec or Path(spec).is_file():
        return _hdf5_shard(Path(spec), rank, size, granule)
    elif is_callable_spec(spec):
        return _callable_shard(spec, rank, size, granule)
    else:
        raise InputError(f"unknown data {spec!r}: use one of {', '.join(BUILTIN_DATA)}, "
                         "a path to an HDF5 file, or module:callable")
    start, stop = shard_range(len(x), rank, size, granule)
    return _checked_shard(x[start:stop], y[start:stop], start, stop, len(x), spec)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError("data 'digits' needs scikit-learn: pip install 'hpcspec[demo]'") from None
    bunch = load_digits()
    x = bunch.data.astype(np.float64)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return torch.from_numpy(x), torch.from_numpy(bunch.target.astype(np.int64))


def synthetic(samples: int, features: int, classes: int, outputs: int,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded teacher problem, identical on every rank: Gaussian inputs, labels from a random
    two-layer teacher with label noise (``classes > 0``) or noisy regression targets."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=gen, dtype=torch.float64)
    width = classes if classes > 0 else outputs
    hidden = torch.tanh(x @ torch.randn(features, 32, generator=gen, dtype=torch.float64))
    scores = hidden @ torch.randn(32, width, generator=gen, dtype=torch.float64)
    scores = scores + 0.5 * torch.randn(samples, width, generator=gen, dtype=torch.float64)
    if classes > 0:
        return x, scores.argmax(dim=1)
    return x, scores


def _hdf5_shard(path: Path, rank: int, size: int, granule: int) -> Shard:
    """Read only this rank's slice of ``x`` and ``y``, after checking names, shapes and dtypes."""
    import h5py

    if not path.is_file():
        raise InputError(f"data file {str(path)!r} does not exist")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"data file {str(path)!r} is not a readable HDF5 file ({exc})") from None
    with handle:
        for name in ("x", "y"):
            if name not in handle or not isinstance(handle[name], h5py.Dataset):
                raise InputError(f"data file {str(path)!r} has no dataset {name!r} "
                                 f"(it needs 'x' and 'y'; found {sorted(handle.keys())})")
        x_set, y_set = handle["x"], handle["y"]
        if x_set.ndim < 2:
            raise InputError(f"data file {str(path)!r}: 'x' must be (samples, features...), "
                             f"got shape {x_set.shape}")
        if y_set.ndim < 1 or y_set.shape[0] != x_set.shape[0]:
            raise InputError(f"data file {str(path)!r}: 'y' has shape {y_set.shape} but 'x' has "
                             f"{x_set.shape[0]} samples")
        for name, dset in (("x", x_set), ("y", y_set)):
            if dset.dtype.kind not in "fiub":
                raise InputError(f"data file {str(path)!r}: dataset {name!r} has non-numeric "
                                 f"dtype {dset.dtype}")
        total = x_set.shape[0]
        start, stop = shard_range(total, rank, size, granule)
        x = torch.from_numpy(np.ascontiguousarray(x_set[start:stop]))
        y = torch.from_numpy(np.ascontiguousarray(y_set[start:stop]))
    return _checked_shard(x, y, start, stop, total, str(path))


def _callable_shard(spec: str, rank: int, size: int, granule: int) -> Shard:
    made = resolve_callable(spec, "data")()
    if isinstance(made, (tuple, list)) and len(made) == 2:
        x, y = (torch.as_tensor(part) for part in made)
        if x.shape[0] != y.shape[0]:
            raise InputError(f"data {spec!r} returned x with {x.shape[0]} samples and y with "
                             f"{y.shape[0]}")
        total = x.shape[0]
        start, stop = shard_range(total, rank, size, granule)
        return _checked_shard(x[start:stop], y[start:stop], start, stop, total, spec)
    if isinstance(made, torch.utils.data.Dataset) and hasattr(made, "__len__"):
        total = len(made)
        start, stop = shard_range(total, rank, size, granule)
        items = [made[i] for i in range(start, stop)]
        if not items:
            x, y = _stack_items([made[0]], spec)
            return _checked_shard(x[:0], y[:0], start, stop, total, spec)
        x, y = _stack_items(items, spec)
        return _checked_shard(x, y, start, stop, total, spec)
    raise InputError(f"data {spec!r} must return a sized torch Dataset or an (x, y) pair of "
                     f"tensors, got {type(made).__name__}")


def _stack_items(items: list[Any], spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        xs, ys = zip(*items)
        return torch.stack([torch.as_tensor(v) for v in xs]), torch.stack([torch.as_tensor(v) for v in ys])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"data {spec!r}: dataset items must be (x, y) pairs of equal shapes ({exc})") from None


def _checked_shard(x: torch.Tensor, y: torch.Tensor, start: int, stop: int, total: int,
                   name: str) -> Shard:
    """Refuse empty data sets and non-finite values; keep targets as given (the loss checks them)."""
    if total == 0:
        raise InputError(f"data {name!r} has no samples")
    if not (x.dtype.is_floating_point or x.dtype in (torch.int64, torch.int32, torch.uint8, torch.bool)):
        raise InputError(f"data {name!r}: inputs have unsupported dtype {x.dtype}")
    for part, label in ((x, "inputs"), (y, "targets")):
        if part.dtype.is_floating_point and not bool(torch.isfinite(part).all()):
            bad = int((~torch.isfinite(part)).reshape(len(part), -1).any(dim=1).nonzero()[0, 0]) + start
            raise InputError(f"data {name!r}: {label} contain NaN or infinite values (first at sample {bad})")
    return Shard(inputs=x.contiguous(), targets=y.contiguous(), start=start, stop=stop, total=total)
