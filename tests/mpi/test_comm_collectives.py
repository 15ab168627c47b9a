"""The communicator's collectives under mpirun with 1, 2 and 3 ranks, checked against numpy
(the checks themselves: tests/support/collectives.py; in one process: tests/unit/parallel/)."""

from __future__ import annotations

import json

import pytest
from collectives import CHECKS
from helpers import REPO, mpirun, mpirun_available

SCRIPT = str(REPO / "tests" / "mpi" / "mpi_collectives.py")

pytestmark = [pytest.mark.mpi, pytest.mark.skipif(not mpirun_available(), reason="needs mpi4py and mpirun")]


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_mpi_collectives_match_numpy(tmp_path, ranks):
    out = tmp_path / "out.json"
    done = mpirun(ranks, [SCRIPT, str(out)], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["size"] == ranks and record["backend"] == "MPICommunicator"
    assert record["checks"] == [*CHECKS, "float32 rows"]
