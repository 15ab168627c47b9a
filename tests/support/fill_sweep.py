"""``python fill_sweep.py MOUNT``: checkpoint and results writes on a real filesystem that runs out
at every page, one page more each time, until the write fits.

MOUNT is an empty small filesystem (a tmpfs). Before each try a filler file takes all of its free
space but ``leave`` pages, so the write fails at each point in turn: the data, and the metadata
HDF5 flushes when it closes the file (where h5py's own driver left a dataset half-closed and the
interpreter died at exit). Prints ``checkpoint F`` and ``results F``, the failures seen before each
write fit; the caller checks that this process then exits 0 with nothing on stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from hpcspec.checkpoint import CheckpointStore
from hpcspec.files.atomic import WriteFailed, atomic_path
from hpcspec.files.hdf5 import create_hdf5
from hpcspec.parallel.agree import AgreedInputError
from hpcspec.parallel.comm import SingleProcess

SIZE = 3000


def _fill_leaving(mount: Path, pages: int) -> None:
    stat = os.statvfs(mount)
    with open(mount / "filler", "wb") as handle:
        handle.write(b"\0" * max(stat.f_bavail - pages, 0) * stat.f_bsize)


def _results(path: Path) -> None:
    with atomic_path(path) as tmp, create_hdf5(tmp) as f:
        f.attrs.update({"num_params": SIZE, "model": "mlp"})
        f.create_dataset("eigen/vectors", data=np.ones((5, SIZE)))
        for index in range(20):
            f.create_dataset(f"params/{index}", data=np.arange(index + 1))


def _sweep(mount: Path, write, expected: type[Exception]) -> int:
    for pages in range(0, 200):
        _fill_leaving(mount, pages)
        try:
            write()
        except expected:
            continue
        finally:
            (mount / "filler").unlink()
        return pages
    raise AssertionError("the write never fitted")


def main(mount: Path) -> None:
    store = CheckpointStore(mount / "checkpoints", SingleProcess())
    gen = torch.Generator().manual_seed(0)
    state = {"basis": torch.randn(12, SIZE, dtype=torch.float64, generator=gen), "alpha": np.arange(40.0), "step": 1}
    print("checkpoint", _sweep(mount, lambda: store.save(state, SIZE, {"run": "sweep"}), AgreedInputError))
    print("results", _sweep(mount, lambda: _results(mount / "results.h5"), WriteFailed))
    assert CheckpointStore(mount / "checkpoints", SingleProcess()).load().state["step"] == 1


if __name__ == "__main__":
    main(Path(sys.argv[1]))
