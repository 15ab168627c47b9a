"""Fake data sets in the real on-disk formats, small enough for tests."""

from __future__ import annotations

import pickle
import signal
from pathlib import Path

import numpy as np

from hpcspec.checkpoint.signals import StopFlag


def make_fake_cifar(folder: str | Path, *, classes: int = 10, samples_per_batch: int = 8, seed: int = 0,
                    per_batch: int | None = None) -> Path:
    """Write a CIFAR "python version" folder with random images and labels; returns its path.

    CIFAR-10 (``classes=10``): ``data_batch_1`` … ``data_batch_5`` and ``test_batch``, dicts with
    ``b'data'`` ((n, 3072) uint8) and ``b'labels'`` (list of int). CIFAR-100 (``classes=100``):
    ``train`` (5 × ``samples_per_batch`` images) and ``test``, with ``b'fine_labels'`` and
    ``b'coarse_labels'``. Pickled at protocol 2 with byte-string keys, like the real files.
    ``per_batch`` is an alias of ``samples_per_batch``.
    """
    if classes not in (10, 100):
        raise ValueError(f"classes must be 10 or 100, got {classes}")
    n = samples_per_batch if per_batch is None else per_batch
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(count: int, name: str) -> dict:
        # channels with different means and spreads, so per-channel statistics matter
        ranges = ((0, 256), (50, 200), (100, 140))
        data = np.concatenate([rng.integers(lo, hi, size=(count, 1024)) for lo, hi in ranges], axis=1).astype(np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, size=count)]
        entry = {b"batch_label": name.encode(), b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(count)]}
        if classes == 10:
            entry[b"labels"] = labels
        else:
            entry[b"fine_labels"] = labels
            entry[b"coarse_labels"] = [label // 5 for label in labels]
        return entry

    files = ({f"data_batch_{i}": n for i in range(1, 6)} | {"test_batch": n} if classes == 10
             else {"train": 5 * n, "test": n})
    for name, count in files.items():
        with (folder / name).open("wb") as handle:
            pickle.dump(batch(count, name), handle, protocol=2)
    return folder


class StopAfter(StopFlag):
    """A stop flag that reads as SIGUSR1 from the n-th boundary on (a signal at a chosen moment)."""

    def __init__(self, boundaries: int) -> None:
        self.boundaries, self.reads = boundaries, 0
        super().__init__()

    @property  # type: ignore[override]
    def signal(self) -> int | None:
        self.reads += 1
        return signal.SIGUSR1 if self.reads >= self.boundaries else None

    @signal.setter
    def signal(self, value: int | None) -> None:
        pass
