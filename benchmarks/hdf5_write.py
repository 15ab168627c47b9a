"""Time to write one checkpoint-shaped HDF5 file: h5py's default driver against hpcspec's writer.

hpcspec writes every HDF5 file through :func:`hpcspec.files.hdf5.create_hdf5` (h5py's ``fileobj``
driver over a file object that records a failed write instead of handing it to HDF5), so that a
full disk is one error line rather than a crash at exit. This measures what that costs: a file of
a Krylov basis (``--vectors`` float64 vectors of ``--size`` entries) and a few small arrays, written
and fsynced, both ways interleaved, median and min/max of ``--repeats`` rounds.

    PYTHONPATH=. python benchmarks/hdf5_write.py [--size 2000000] [--vectors 12] [--repeats 7] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from hpcspec.files.hdf5 import create_hdf5


def _fill(f: h5py.File, basis: np.ndarray) -> None:
    f.attrs.update({"rank": 0, "lo": 0, "hi": basis.shape[1], "size": basis.shape[1]})
    f.create_dataset("vectors/basis", data=basis)
    f.create_dataset("vectors/x", data=basis[0])
    f.create_dataset("arrays/alpha", data=np.arange(64.0))


def _default(path: Path, basis: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        _fill(f, basis)


def _hpcspec(path: Path, basis: np.ndarray) -> None:
    with create_hdf5(path) as f:
        _fill(f, basis)


def _timed(write, path: Path, basis: np.ndarray) -> float:
    start = time.perf_counter()
    write(path, basis)
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2_000_000)
    parser.add_argument("--vectors", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    basis = np.random.default_rng(0).standard_normal((args.vectors, args.size))
    times: dict[str, list[float]] = {"h5py default (sec2)": [], "hpcspec create_hdf5": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "rank-00000.h5"
        for _ in range(args.repeats):
            times["h5py default (sec2)"].append(_timed(_default, path, basis))
            times["hpcspec create_hdf5"].append(_timed(_hpcspec, path, basis))
    megabytes = basis.nbytes / 1e6
    print(f"checkpoint-shaped file: {args.vectors} x {args.size} float64 = {megabytes:.0f} MB, "
          f"{args.repeats} interleaved rounds, write + fsync")
    medians = {}
    for name, values in times.items():
        medians[name] = statistics.median(values)
        print(f"  {name:22s} median {medians[name]:.3f} s  (min {min(values):.3f}, max {max(values):.3f})"
              f"  {megabytes / medians[name]:.0f} MB/s")
    print(f"  ratio hpcspec / default: {medians['hpcspec create_hdf5'] / medians['h5py default (sec2)']:.3f}")


if __name__ == "__main__":
    main()
