"""``hpcspec.hessian`` under mpirun: the whole loader on every rank gives one rank's numbers to 1e-10."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import REPO, mpirun

SCRIPT = str(REPO / "tests" / "mpi" / "mpi_pyhessian.py")


def run(ranks: int, tmp_path) -> list[dict]:
    out = tmp_path / f"{ranks}.json"
    done = mpirun(ranks, [SCRIPT, str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["size"] for r in records] == [ranks] * ranks and all(r["training_restored"] for r in records)
    return records


def assert_same(one: dict, other: dict) -> None:
    """Every number of ``other`` within 1e-10 of ``one`` (relative to the spectral norm)."""
    scale = abs(one["eigenvalues"][0])
    for key in ("eigenvalues", "trace", "eigenvectors", "nodes", "weights"):
        a, b = np.array(one[key]), np.array(other[key])
        assert a.shape == b.shape, key
        limit = 1e-10 * (scale if key in ("eigenvalues", "trace", "nodes") else 1.0)
        assert np.max(np.abs(a - b)) <= limit, (key, np.max(np.abs(a - b)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One rank's numbers, which the three ways of passing the data agree on."""
    one = run(1, tmp_path_factory.mktemp("one"))[0]
    assert_same(one["loader"], one["pair"])
    assert_same(one["loader"], one["sharded"])
    return one


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_pyhessian_calls_give_one_ranks_numbers(ranks, reference, tmp_path):
    records = run(ranks, tmp_path)
    for record in records:  # every rank returns the whole answer
        for case in ("loader", "pair", "sharded"):
            assert_same(reference[case], record[case])
