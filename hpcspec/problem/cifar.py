"""CIFAR-10 and CIFAR-100 from the "python version" batch files, read without running foreign code.

The archives from https://www.cs.toronto.edu/~kriz/cifar.html unpack to ``cifar-10-batches-py``
(``data_batch_1`` … ``data_batch_5``, ``test_batch``) and ``cifar-100-python`` (``train``,
``test``): pickled dicts with ``b'data'``, a (n, 3072) uint8 array (1024 red, 1024 green, 1024 blue
pixels, rows of 32), and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100). ``DIR`` may
be that folder or the one holding it.

Why a restricted unpickler: unpickling calls whatever the file names (``os.system`` included), so
a tampered data file on a shared file system would run code in every rank of the job. The files
need only numpy array reconstruction, so :class:`_ArrayUnpickler` resolves exactly those globals
(``numpy``'s ``_reconstruct``/``_frombuffer``/``scalar``, ``ndarray``, ``dtype``, and
``_codecs.encode``, which protocol-2 pickles written by Python 3 use for raw bytes) and refuses
everything else.

Every rank reads whole files (they are small: 30 MB each) but keeps only the images of its shard.
Per-channel statistics are always those of the whole training set — also for the test split, as
is standard — from exact integer sums of the uint8 pixels, so they are identical on every rank
without any communication.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError

try:  # numpy ≥ 2 (the old module path still appears in files written by numpy 1.x)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric

#: CIFAR name → (folder name in the archive, training files, test files, label key, classes).
LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}
PIXELS = 3 * 32 * 32

_ALLOWED: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                        ("_codecs", "encode"): codecs.encode}
for _package in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_package}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(f"{_package}.multiarray", "scalar")] = _multiarray.scalar
    _ALLOWED[(f"{_package}.numeric", "_frombuffer")] = _numeric._frombuffer


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles builtins and numpy arrays only: any other global is refused, so loading a file
    cannot import modules or call functions beyond numpy's array reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def read_batch(path: Path, label_key: bytes, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: ``(n, 3072)`` uint8 images and ``(n,)`` int64 labels, checked."""
    if not path.is_file():
        raise InputError(f"CIFAR batch file {str(path)!r} does not exist")
    try:
        with path.open("rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except Exception as exc:  # corrupt or hostile files raise many types
        raise InputError(f"CIFAR batch file {str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise InputError(f"CIFAR batch file {str(path)!r} has no b'data' and {label_key!r} entries (found {found})")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        shape = (data.dtype, data.shape) if isinstance(data, np.ndarray) else type(data).__name__
        raise InputError(f"CIFAR batch file {str(path)!r}: b'data' must be a (n, {PIXELS}) uint8 array, got {shape}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError):
        raise InputError(f"CIFAR batch file {str(path)!r}: {label_key!r} is not a list of integers") from None
    if labels.shape != (len(data),):
        raise InputError(f"CIFAR batch file {str(path)!r}: {len(data)} images but {label_key!r} has shape "
                         f"{labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise InputError(f"CIFAR batch file {str(path)!r}: labels must lie in [0, {classes}), found "
                         f"[{labels.min()}, {labels.max()}]")
    return data, labels


def batch_files(name: str, folder: Path, split: str) -> tuple[list[Path], list[Path]]:
    """The training files and the files of ``split``, in the standard order (existence checked)."""
    subfolder, train, test, _, _ = LAYOUTS[name]
    if not folder.is_dir():
        raise InputError(f"CIFAR folder {str(folder)!r} does not exist")
    if not (folder / train[0]).exists() and (folder / subfolder).is_dir():
        folder = folder / subfolder  # DIR is where the archive was unpacked
    train_paths = [folder / file for file in train]
    wanted = train_paths if split == "train" else [folder / file for file in test]
    for path in wanted:
        if not path.is_file():
            raise InputError(f"CIFAR batch file {str(path)!r} does not exist (a {name} folder holds "
                             f"{', '.join(train + test)})")
    return train_paths, wanted


class PixelSums:
    """Per-channel sums and sums of squares of uint8 pixels, exact in integers (50,000 images:
    < 2⁴²), so the statistics are the same bits on every rank whatever the order of files."""

    def __init__(self) -> None:
        self.total, self.squares, self.count = [0] * 3, [0] * 3, 0

    def add(self, data: np.ndarray) -> None:
        pixels = data.reshape(len(data), 3, -1).astype(np.int64)
        for c in range(3):
            self.total[c] += int(pixels[:, c].sum())
            self.squares[c] += int((pixels[:, c] * pixels[:, c]).sum())
        self.count += pixels.shape[0] * pixels.shape[2]

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation (ddof 0) per channel in pixel units; the variance
        ``(n·Σx² − (Σx)²)/n²`` is formed in exact integers before the one rounding."""
        n = self.count
        mean = np.array([t / n for t in self.total])
        std = np.sqrt(np.array([(n * s - t * t) / n**2 for s, t in zip(self.squares, self.total)]))
        return mean, np.where(std > 0, std, 1.0)


def load_cifar(name: str, folder: Path, split: str, normalize: str,
               bounds: Callable[[int], tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """This rank's images ``(n, 3, 32, 32)`` float32 and labels, with ``start, stop, total``.

    ``bounds(total) -> (start, stop)`` picks the shard once the number of images is known.
    ``normalize``: ``channel`` (the training set's per-channel mean/std) or ``none`` (pixels / 255,
    as torchvision's ``ToTensor``). Float32 as in the usual pipelines: CIFAR has 8-bit pixels.
    """
    _, _, _, label_key, classes = LAYOUTS[name]
    train_paths, paths = batch_files(name, folder, split)
    sums, counts = PixelSums(), []
    for path in paths:  # first pass: sizes (and, for the training set, the statistics)
        data, _ = read_batch(path, label_key, classes)
        counts.append(len(data))
        if normalize == "channel" and split == "train":
            sums.add(data)
    total = sum(counts)
    if total == 0:
        raise InputError(f"CIFAR {split} files in {str(paths[0].parent)!r} hold no images")
    if normalize == "channel" and split != "train":
        for path in train_paths:
            sums.add(read_batch(path, label_key, classes)[0])
    if normalize == "channel":
        if sums.count == 0:
            raise InputError(f"CIFAR training files in {str(train_paths[0].parent)!r} hold no images")
        mean, std = sums.mean_std()
    else:
        mean, std = np.zeros(3), np.full(3, 255.0)
    start, stop = bounds(total)
    images, labels, offset = [], [], 0
    for path, count in zip(paths, counts):
        lo, hi = max(start - offset, 0), min(stop - offset, count)
        if lo < hi:
            data, targets = read_batch(path, label_key, classes)
            images.append(data[lo:hi].reshape(-1, 3, 32, 32))
            labels.append(targets[lo:hi])
        offset += count
    x = np.concatenate(images) if images else np.zeros((0, 3, 32, 32), np.uint8)
    y = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    x = ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
    return x, y, start, stop, total
