"""Weights or buffers that differ between ranks are refused before the first product, on every
rank, naming the first differing tensor: in the CLI (exit 2, one line) and in the library
(InputError). Whichever tensor differs, on whichever rank; the same model everywhere runs."""

from __future__ import annotations

import json

import pytest
from helpers import REPO, mpirun

SCRIPT = str(REPO / "tests" / "mpi" / "mpi_replicas.py")
RANK_MODULE = '''
import torch
from mpi4py import MPI

RANK, SIZE = MPI.COMM_WORLD.rank, MPI.COMM_WORLD.size


def net():
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(),
                               torch.nn.Linear(6, 2)).double()


def same():
    torch.manual_seed(0)
    return net()


def rank_seeded():  # the common mistake: a seed that depends on the rank
    torch.manual_seed(RANK)
    return net()


def rank_buffer():  # the weights agree, one BatchNorm statistic does not
    model = same()
    with torch.no_grad():
        model[1].running_var[3] += RANK
    return model


def last_rank_bias():  # only the last rank, only the last tensor's last entry
    model = same()
    if RANK == SIZE - 1:
        with torch.no_grad():
            model[3].bias[-1] += 1e-12
    return model


def make_data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(40, 4, generator=gen, dtype=torch.float64), torch.randn(40, 2, generator=gen,
                                                                                dtype=torch.float64)
'''
EXPECTED = {
    "rank_seeded": "parameter '0.weight' is not rank 0's",
    "rank_buffer": "buffer '1.running_var' is not rank 0's",
    "last_rank_bias": "parameter '3.bias' is not rank 0's",
}


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_weights_that_differ_between_ranks_are_refused_everywhere(ranks, tmp_path):
    (tmp_path / "rankmod.py").write_text(RANK_MODULE)
    done = mpirun(ranks, [SCRIPT, str(tmp_path)], tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((tmp_path / "replicas.json").read_text())
    assert len(records) == ranks
    for rank, record in enumerate(records):
        for factory, words in EXPECTED.items():
            cli = record[factory]
            assert cli["code"] == 2, (rank, factory, cli)
            if rank == 0:
                lines = [line for line in cli["stderr"].splitlines() if line.startswith("hpcspec: error")]
                assert len(lines) == 1 and words in lines[0] and "weights differ between ranks" in lines[0], lines
                assert f"(on rank {1 if factory != 'last_rank_bias' else ranks - 1})" in lines[0], lines
            for api in ("operator", "pyhessian"):
                raised = record[f"{api} {factory}"]["raised"]
                assert raised is not None and words in raised, (rank, api, factory, raised)
            assert not (tmp_path / factory / "results.h5").exists()
        assert record["same"]["code"] == 0, record["same"]
        assert record["operator same"]["raised"] is None and record["pyhessian same"]["raised"] is None
