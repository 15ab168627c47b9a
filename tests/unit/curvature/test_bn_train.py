"""``bn_mode = "train"``: fixed batches of the whole data set, so the Hessian does not depend on the
number of ranks (each batch's statistics are those of the same samples on 1 or 3 ranks)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import mpirun

MODEL = '''
import torch
from torch import nn

def model():
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
'''


@pytest.mark.mpi
def test_train_mode_batchnorm_hessian_is_the_same_on_1_and_3_ranks(tmp_path: Path) -> None:
    (tmp_path / "bnmodel.py").write_text(MODEL)
    values = {}
    for ranks in (1, 3):
        output = tmp_path / f"out{ranks}"
        done = mpirun(ranks, ["-m", "hpcspec", "run", "--model", "bnmodel:model", "--data", "synthetic",
                              "--set", "data.samples=50", "--set", "data.features=4", "--set", "data.classes=3",
                              "--bn-mode", "train", "--batch-size", "16", "--top-k", "3", "--output", str(output)],
                      tmp_path)
        assert done.returncode == 0, done.stderr
        with h5py.File(output / "results.h5", "r") as f:
            values[ranks] = f["eigen/values"][()]
    # 3 ranks hold 16, 16 and 18 samples: batches [0,16) [16,32) [32,48) [48,50) on either count
    np.testing.assert_allclose(values[3], values[1], rtol=1e-10, atol=0)
