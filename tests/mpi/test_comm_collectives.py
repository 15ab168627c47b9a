"""The communicator's collectives under mpirun with 1, 2 and 3 ranks, checked against numpy
(the checks themselves: tests/support/collectives.py; in one process: tests/unit/parallel/)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import spawn
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


def test_torch_distributed_collectives_match_numpy(tmp_path):
    """The same checks on the torch.distributed backend (gloo, launched by torchrun, 2 ranks)."""
    pytest.importorskip("torch.distributed")
    out = tmp_path / "out.json"
    env = spawn.one_thread_env(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(spawn.free_port()), SCRIPT, str(out), "torch"]
    done = spawn.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["size"] == 2 and record["backend"] == "TorchDistributedCommunicator"
    assert record["checks"] == [*CHECKS, "float32 rows"]
