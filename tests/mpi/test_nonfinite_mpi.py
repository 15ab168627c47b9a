"""A model whose output turns NaN on one rank after some products, mid-solve: every rank exits 2
with one line naming the product and the rank, the last checkpoint is kept, and ``--resume``
with the model mended finishes with the uninterrupted run's numbers. Any reduction, whole or
sliced vectors, any solver of the run."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from helpers import mpirun

MODULE = '''
import os
import torch


class TurnsNaN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(64, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.layer(torch.tanh(x.flatten(1)))
        after = int(os.environ.get("NAN_AFTER", "0"))
        if after and os.environ.get("OMPI_COMM_WORLD_RANK") == "1" and self.calls > after:
            out = out * float("nan")
        return out


def make_model():
    return TurnsNaN().double()
'''
COMMON = ["-m", "hpcspec", "run", "--model", "nanmod:make_model", "--set", "hessian.graph_budget_mb=0",
          "--set", "checkpoint.every_iters=1"]
CASES = {
    "block, fast, sliced": ["--top-k", "3", "--tol", "1e-10"],
    "block, ordered, whole": ["--top-k", "3", "--tol", "1e-10", "--set", "hessian.reduction='ordered'",
                              "--set", "hessian.shard_vectors=false"],
    "lanczos": ["--top-k", "2", "--eigen-method", "lanczos", "--tol", "1e-10", "--maxiter", "40"],
    "density": ["--density", "--probes", "2", "--steps", "20"],
    "trace": ["--trace", "--trace-matvecs", "40"],
}


@pytest.mark.mpi
@pytest.mark.parametrize("case", CASES)
def test_a_product_turning_nan_on_one_rank_is_one_line_and_the_checkpoint_kept(case, tmp_path):
    (tmp_path / "nanmod.py").write_text(MODULE)
    out = tmp_path / "out"
    argv = [*COMMON, *CASES[case], "--output", str(out)]
    failed = mpirun(2, argv, tmp_path, timeout=240, env={"NAN_AFTER": "60"})
    assert failed.returncode == 2, failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("hpcspec: error")]
    assert len(errors) == 1, errors
    assert "not finite (NaN or inf) on rank 1" in errors[0] and "Hessian-vector product" in errors[0], errors
    assert "Traceback" not in failed.stderr and "LinAlgError" not in failed.stderr
    assert (out / "checkpoints" / "LATEST").is_file() and not (out / "results.h5").exists()
    resumed = mpirun(2, ["-m", "hpcspec", "resume", str(out)], tmp_path, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = mpirun(2, [*COMMON, *CASES[case], "--output", str(tmp_path / "straight")], tmp_path, timeout=240)
    assert straight.returncode == 0, straight.stderr[-3000:]
    with h5py.File(out / "results.h5") as a, h5py.File(tmp_path / "straight" / "results.h5") as b:
        compared = 0
        for key in ("eigen/values", "density/nodes", "trace/samples"):
            if key in b:
                np.testing.assert_array_equal(a[key][()], b[key][()], err_msg=key)
                compared += 1
        assert compared == 1, list(b)
