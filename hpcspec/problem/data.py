"""Data sources and the deterministic rank shard.

Rank r of R holds samples ``[r*N//R, (r+1)*N//R)`` of the data set in its stored order: no
shuffling, no augmentation, so the Hessian is that of the mean loss over all N samples whatever R
is. Loading is local to the rank (no collectives), so a failure can be agreed on afterwards.

Normalisation statistics (``normalize = "channel"``) are always those of the whole data set,
computed the same way from the same numbers on every rank (each rank reads what it needs of the
whole set for them), so the shards of R ranks are exactly the slices of the one-rank data set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .callables import call_user, is_callable_spec, resolve_callable
from .cifar import LAYOUTS as CIFAR_LAYOUTS
from .cifar import load_cifar
from .loaders import batch_shard, is_batch_data
from .shards import BatchShard, Shard
from .tokens import markov_tokens

BUILTIN_DATA = ("digits", "synthetic", "tokens", "cifar10:DIR", "cifar100:DIR")
#: Bytes of float64 samples per read when computing statistics of an HDF5 data set in pieces.
STATS_CHUNK_BYTES = 64 * 2**20


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
               classes: int = 4, outputs: int = 1, seed: int = 0, granule: int = 1, split: str = "train",
               normalize: str = "auto", context: int = 32, vocab: int = 64,
               max_bytes: float = float("inf"), sharded: bool = False, target_key: str = "labels") -> Shard | BatchShard:
    """Load this rank's shard of the data set named by ``spec``.

    ``spec`` is ``digits`` (scikit-learn's bundled handwritten digits, ``(1797, 1, 8, 8)``,
    standardised per pixel), ``synthetic`` (a seeded teacher problem; ``classes = 0`` gives
    regression targets of width ``outputs``), ``tokens`` (``samples`` seeded Markov sequences of
    ``context`` tokens over ``vocab``, :mod:`hpcspec.problem.tokens`), ``cifar10:DIR`` / ``cifar100:DIR``
    (the python-version batch files, ``split`` ``train`` or ``test``, :mod:`hpcspec.problem.cifar`), a path
    to an HDF5 file with datasets ``x`` and ``y``, or ``module:callable`` returning a
    ``torch.utils.data.Dataset`` or an ``(x, y)`` pair of tensors — or batches: a DataLoader, a list
    of ``(x, y)`` pairs or of dict batches (targets under ``target_key``), each rank taking a block
    of whole batches, or all of its own loader's with ``sharded`` (a :class:`BatchShard`,
    :mod:`hpcspec.problem.loaders`). ``normalize``: ``auto``
    (CIFAR per channel, digits per pixel, others as stored), ``channel`` (axis 1 standardised with
    the whole set's mean and standard deviation) or ``none``. Shards are made of whole
    ``granule``-sample pieces (:func:`shard_range`). An HDF5 share larger than ``max_bytes`` is
    refused before it is read.
    """
    name = spec.split(":", 1)[0]
    if split != "train" and name not in CIFAR_LAYOUTS:
        raise InputError(f"data.split = {split!r} applies to cifar10:DIR and cifar100:DIR; data {spec!r} "
                         "is a single set (use data.split = 'train')")
    declared = 0
    if name in CIFAR_LAYOUTS and ":" in spec:
        folder = spec.split(":", 1)[1]
        if not folder:
            raise InputError(f"data {spec!r} names no folder: use {name}:DIR")
        x_np, y_np, start, stop, total = load_cifar(
            name, Path(folder), split, "none" if normalize == "none" else "channel",
            lambda n: shard_range(n, rank, size, granule))
        return _checked_shard(torch.from_numpy(x_np), torch.from_numpy(y_np), start, stop, total, spec,
                              classes=CIFAR_LAYOUTS[name][4])
    if spec == "digits":
        x, y = _digits(normalize)
    elif spec == "synthetic":
        x, y = _normalized(*synthetic(samples, features, classes, outputs, seed), normalize, spec)
    elif spec == "tokens":
        x, y = _normalized(*markov_tokens(samples, context, vocab, seed), normalize, spec)
        declared = vocab
    elif spec.endswith((".h5", ".hdf5")) or "/" in spec or Path(spec).is_file():
        return _hdf5_shard(Path(spec), rank, size, granule, normalize, max_bytes)
    elif is_callable_spec(spec):
        return _callable_shard(spec, rank, size, granule, normalize, sharded, target_key)
    else:
        raise InputError(f"unknown data {spec!r}: use one of {', '.join(BUILTIN_DATA)}, "
                         "a path to an HDF5 file, or module:callable")
    start, stop = shard_range(len(x), rank, size, granule)
    return _checked_shard(x[start:stop], y[start:stop], start, stop, len(x), spec, classes=declared)


def _digits(normalize: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1797, 1, 8, 8)`` images; ``auto`` standardises each pixel over the set (as the MLP
    default always did), ``channel`` all pixels together, ``none`` keeps the 0–16 gray levels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError("data 'digits' needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    x = bunch.data.astype(np.float64)
    if normalize == "auto":
        std = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    x = x.reshape(-1, 1, 8, 8)
    if normalize == "channel":
        x = _standardise(x, *channel_stats(x))
    return torch.from_numpy(x), torch.from_numpy(bunch.target.astype(np.int64))


def channel_stats(x: Any, chunk_bytes: int = STATS_CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof 0) of each channel (axis 1) of ``x`` (an array or an
    HDF5 dataset, shape ``(N, C, …)``), over all samples and positions, in float64.

    Read in pieces of about ``chunk_bytes`` (whole samples), combined with Chan et al.'s
    pairwise update (mean and sum of squared deviations per piece): one pass, no cancellation,
    and the same pieces in the same order on every rank, hence the same bits.
    """
    shape = tuple(x.shape)
    channels, per_sample = shape[1], int(np.prod(shape[1:]))
    rows = max(1, chunk_bytes // (8 * per_sample))
    count, mean, m2 = 0, np.zeros(channels), np.zeros(channels)
    for first in range(0, shape[0], rows):
        piece = np.asarray(x[first:first + rows], dtype=np.float64)
        values = np.moveaxis(piece, 1, 0).reshape(channels, -1)
        n = values.shape[1]
        piece_mean = values.mean(axis=1)
        piece_m2 = ((values - piece_mean[:, None]) ** 2).sum(axis=1)
        delta, combined = piece_mean - mean, count + n
        mean = mean + delta * (n / combined)
        m2 = m2 + piece_m2 + delta**2 * (count * n / combined)
        count = combined
    std = np.sqrt(m2 / max(count, 1))
    return mean, np.where(std > 0, std, 1.0)


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x − mean_c) / std_c`` along axis 1, in x's floating type (float32 for integer data)."""
    dtype = x.dtype if x.dtype.kind == "f" else np.float32
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return ((x - mean.reshape(shape)) / std.reshape(shape)).astype(dtype)


def _normalized(x: torch.Tensor, y: torch.Tensor, normalize: str, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-data-set ``channel`` standardisation of in-memory inputs (``auto``/``none``: as given)."""
    if normalize != "channel":
        return x, y
    if not x.dtype.is_floating_point or x.ndim < 2:
        raise InputError(f"data.normalize = 'channel' needs real-valued inputs (samples, channels, …); data "
                         f"{spec!r} has {str(x.dtype).replace('torch.', '')} inputs of shape {tuple(x.shape)}: "
                         "use data.normalize = 'none'")
    array = x.detach().cpu().numpy()
    return torch.from_numpy(_standardise(array, *channel_stats(array))), y


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


def _check_fits(path: Path, datasets: tuple[Any, ...], rows: int, max_bytes: float) -> None:
    """Refuse, before reading, a share of ``rows`` samples that would not fit in ``max_bytes``: the
    sizes a file declares cost nothing to write (an HDF5 file of a few KiB can declare 1e9 rows),
    and reading them would try to allocate it all. Counts the bytes as read and as a float copy
    (the float64 conversion of the inputs)."""
    need = sum(rows * int(np.prod(d.shape[1:], dtype=np.float64)) * max(d.dtype.itemsize, 8) for d in datasets)
    if need > max_bytes:
        needed, allowed = byte_sizes(need, max_bytes)
        raise InputError(f"data file {str(path)!r} declares {datasets[0].shape[0]:,} samples of shape "
                         f"{tuple(datasets[0].shape[1:])}: this rank's share of {rows:,} needs {needed}, "
                         f"more than the {allowed} allowed (data.max_gb, or the rank's free memory "
                         "when 0): use more ranks, a smaller file, or set data.max_gb")


def byte_sizes(*sizes: float) -> list[str]:
    """Byte counts in the binary unit that shows each, to 3 significant digits ("20.5 KiB",
    "3.2 GiB"); exact byte counts when the rounded texts would not tell them apart."""
    texts = [_byte_size(size) for size in sizes]
    if len(set(texts)) < len(texts):
        return [f"{size:,.0f} bytes" for size in sizes]
    return texts


def _byte_size(size: float) -> str:
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if size >= 1024 ** power:
            return f"{size / 1024 ** power:.3g} {unit}"
    return f"{size:,.0f} bytes"


def memory_budget(max_gb: float, local_size: int = 1) -> float:
    """Bytes one rank may read its data into: ``max_gb`` GiB, or (0) its share of the node's
    available memory (``MemAvailable`` of /proc/meminfo over the ranks on the node; unlimited where
    that is unknown)."""
    if max_gb > 0:
        return max_gb * 2**30
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / max(local_size, 1)
    except (OSError, ValueError, IndexError):
        pass
    return float("inf")


def _hdf5_shard(path: Path, rank: int, size: int, granule: int, normalize: str = "auto",
                max_bytes: float = float("inf")) -> Shard:
    """Read only this rank's slice of ``x`` and ``y``, after checking names, shapes and dtypes
    (and, for ``normalize = "channel"``, the whole of ``x`` in pieces for its statistics)."""
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
        _check_fits(path, (x_set, y_set), stop - start, max_bytes)
        x_np = np.ascontiguousarray(x_set[start:stop])
        if normalize == "channel":
            if x_set.dtype.kind not in "fiu":
                raise InputError(f"data file {str(path)!r}: data.normalize = 'channel' needs numeric 'x', "
                                 f"got {x_set.dtype}")
            x_np = _standardise(x_np, *channel_stats(x_set))
        x = torch.from_numpy(x_np)
        y = torch.from_numpy(np.ascontiguousarray(y_set[start:stop]))
    return _checked_shard(x, y, start, stop, total, str(path))


def _callable_shard(spec: str, rank: int, size: int, granule: int, normalize: str = "auto", sharded: bool = False,
                    target_key: str = "labels") -> Shard | BatchShard:
    made = call_user(spec, resolve_callable(spec, "data"))
    if is_batch_data(made):
        return batch_shard(made, spec, rank, size, sharded=sharded, target_key=target_key, normalize=normalize)
    if sharded:
        raise InputError(f"data.sharded = true needs a data callable returning this rank's batches (a DataLoader "
                         f"or a list); data {spec!r} returned {type(made).__name__}")
    if isinstance(made, (tuple, list)) and len(made) == 2:
        x, y = (_as_samples(part, made, spec) for part in made)
        if x.shape[0] != y.shape[0]:
            raise InputError(f"data {spec!r} returned x with {x.shape[0]} samples and y with "
                             f"{y.shape[0]}")
        x, y = _normalized(x, y, normalize, spec)
        total = x.shape[0]
        start, stop = shard_range(total, rank, size, granule)
        return _checked_shard(x[start:stop], y[start:stop], start, stop, total, spec)
    if isinstance(made, torch.utils.data.Dataset) and hasattr(made, "__len__"):
        if normalize == "channel":
            raise InputError(f"data.normalize = 'channel' needs the whole data set at once; data {spec!r} is a "
                             "Dataset: return an (x, y) pair of tensors, or normalise inside the Dataset")
        total = len(made)
        start, stop = shard_range(total, rank, size, granule)
        items = [made[i] for i in range(start, stop)]
        if not items:
            x, y = _stack_items([made[0]], spec)
            return _checked_shard(x[:0], y[:0], start, stop, total, spec)
        x, y = _stack_items(items, spec)
        return _checked_shard(x, y, start, stop, total, spec)
    raise InputError(f"data {spec!r} must return a sized torch Dataset, an (x, y) pair of tensors, or batches "
                     f"(a DataLoader, a list of (x, y) pairs or dict batches), got {type(made).__name__}")


def _as_samples(part: Any, made: Any, spec: str) -> torch.Tensor:
    """One half of a data callable's ``(x, y)``: a tensor or array with a sample axis."""
    if not isinstance(part, (torch.Tensor, np.ndarray)) or part.ndim < 1:
        kinds = ", ".join(type(item).__name__ if getattr(item, "ndim", 0) else f"0-d {type(item).__name__}"
                          if isinstance(item, (torch.Tensor, np.ndarray)) else type(item).__name__ for item in made)
        raise InputError(f"data {spec!r} must return a sized torch Dataset or an (x, y) pair of tensors with one row "
                         f"per sample, got ({kinds}): return (inputs, targets) as torch tensors")
    return torch.as_tensor(part)


def _stack_items(items: list[Any], spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        xs, ys = zip(*items)
        return torch.stack([torch.as_tensor(v) for v in xs]), torch.stack([torch.as_tensor(v) for v in ys])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"data {spec!r}: dataset items must be (x, y) pairs of equal shapes ({exc})") from None


def _checked_shard(x: torch.Tensor, y: torch.Tensor, start: int, stop: int, total: int,
                   name: str, classes: int = 0) -> Shard:
    """Refuse empty data sets and non-finite values; keep targets as given (the loss checks them)."""
    if total == 0:
        raise InputError(f"data {name!r} has no samples")
    if not (x.dtype.is_floating_point or x.dtype in (torch.int64, torch.int32, torch.uint8, torch.bool)):
        raise InputError(f"data {name!r}: inputs have unsupported dtype {x.dtype}")
    for part, label in ((x, "inputs"), (y, "targets")):
        if part.dtype.is_floating_point and not bool(torch.isfinite(part).all()):
            bad = int((~torch.isfinite(part)).reshape(len(part), -1).any(dim=1).nonzero()[0, 0]) + start
            raise InputError(f"data {name!r}: {label} contain NaN or infinite values (first at sample {bad})")
    return Shard(inputs=x.contiguous(), targets=y.contiguous(), start=start, stop=stop, total=total,
                 classes=classes)
