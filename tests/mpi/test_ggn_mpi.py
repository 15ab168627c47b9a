"""The Gauss-Newton operator on 1, 2 and 3 ranks with uneven shards, against its dense float64 form."""

from __future__ import annotations

import json

import pytest
from helpers import REPO, mpirun

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_uneven_shards_on_1_2_3_ranks_equal_the_dense_ggn(tmp_path, ranks):
    done = mpirun(ranks, [str(REPO / "tests" / "mpi" / "mpi_ggn.py"), str(tmp_path / "out.json")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((tmp_path / "out.json").read_text())
    assert len(records) == ranks and sum(r["samples"] for r in records) == 37
    assert all(r["whole"] <= 1e-12 and r["rows"] <= 1e-12 for r in records)
