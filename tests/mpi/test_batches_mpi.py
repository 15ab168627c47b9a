"""Each rank its own DataLoader: the same Hessian as the dense one of all samples, on 1 and 2 ranks."""

from __future__ import annotations

import json

import pytest
from helpers import REPO, mpirun

SCRIPT = str(REPO / "tests" / "mpi" / "mpi_batches.py")


@pytest.mark.mpi
def test_each_rank_passes_its_own_loader(tmp_path):
    found = {}
    for ranks in (1, 2):
        done = mpirun(ranks, [SCRIPT, str(tmp_path / f"{ranks}.json")], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        records = json.loads((tmp_path / f"{ranks}.json").read_text())
        assert sum(r["samples"] for r in records) == 53
        for record in records:
            assert record["product_error"] <= 1e-10 and record["eigen_error"] <= 1e-10
        found[ranks] = records[0]
    for one, two in zip(found[1]["eigenvalues"], found[2]["eigenvalues"]):
        assert abs(one - two) <= 1e-10 * abs(found[1]["eigenvalues"][0])
    assert abs(found[1]["trace"] - found[2]["trace"]) <= 1e-10 * abs(found[1]["exact_trace"])
