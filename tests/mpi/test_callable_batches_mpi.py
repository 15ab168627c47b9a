"""``--data module:callable`` returning batches under mpirun at 1, 2 and 3 ranks: a DataLoader with
uneven batches, a list of (x, y) pairs, dict batches and per-rank DistributedSampler loaders give
the top-3 eigenvalues and the trace of the (x, y)-tensor version to 1e-10 (and the dense Hessian's
eigenvalues); every bad return exits 2 on every rank with one error line (rank 0's)."""

from __future__ import annotations

import importlib
import json
import sys

import batch_data
import h5py
import numpy as np
import pytest
from helpers import REPO, dense_hessian, mpirun, top_eigenvalues

pytestmark = pytest.mark.mpi
SCRIPT = str(REPO / "tests" / "mpi" / "mpi_callable_batches.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batches")
    batch_data.write(folder)
    found = {}
    for ranks in (1, 2, 3):
        done = mpirun(ranks, [SCRIPT, str(folder)], cwd=folder, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        found[ranks] = json.loads((folder / f"batches-{ranks}.json").read_text())
    return folder, found


def _numbers(path):
    with h5py.File(path) as f:
        return f["eigen/values"][:], float(f["trace"].attrs["estimate"]), int(f.attrs["num_samples"])


def test_batches_give_the_tensor_numbers_at_every_rank_count(runs):
    folder, found = runs
    sys.path.insert(0, str(folder))
    try:
        mod = importlib.import_module("batchmod")
        exact = top_eigenvalues(dense_hessian(mod.make_model(), "cross_entropy", *mod.tensors()), 3)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("batchmod", None)
    reference, trace, _ = _numbers(folder / "1-tensors" / "results.h5")
    assert np.max(np.abs(reference - exact)) <= 1e-10 * abs(exact[0])
    for ranks, per_rank in found.items():
        for name, *_ in batch_data.GOOD:
            assert all(record[name]["code"] == 0 for record in per_rank), (ranks, name, per_rank[0][name]["stderr"])
            values, estimate, samples = _numbers(folder / f"{ranks}-{name}" / "results.h5")
            assert samples == 54, (ranks, name)
            assert np.max(np.abs(values - reference)) <= 1e-10 * abs(reference[0]), (ranks, name, values - reference)
            assert abs(estimate - trace) <= 1e-10 * abs(trace), (ranks, name, estimate - trace)


def test_bad_returns_exit_2_on_every_rank_with_one_line(runs):
    _, found = runs
    checked = 0
    for ranks, per_rank in found.items():
        for name, _, _, least, message in batch_data.BAD:
            if ranks < least:
                continue
            assert all(record[name]["code"] == 2 for record in per_rank), (ranks, name)
            lines = [line for line in per_rank[0][name]["stderr"].splitlines() if line.startswith("hpcspec: error:")]
            assert len(lines) == 1 and message in lines[0], (ranks, name, per_rank[0][name]["stderr"])
            assert all("hpcspec: error:" not in record[name]["stderr"] for record in per_rank[1:]), (ranks, name)
            checked += 1
    assert checked == 3 * 3 + 1 + 3 * 2  # three cases at 1, 2, 3 ranks; one at 3; three at 2 and 3
