"""threads = 0: OMP_NUM_THREADS when set, else the node's cores shared among its ranks."""

import os

import pytest
import torch

from hpcspec.parallel.comm import SingleProcess
from hpcspec.parallel.device import set_threads


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_zero_respects_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert set_threads(SingleProcess(), 0) == 1 == torch.get_num_threads()


def test_an_explicit_count_wins_over_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert set_threads(SingleProcess(), 2) == 2 == torch.get_num_threads()


@pytest.mark.parametrize("value", [None, "", "0", "many"])
def test_zero_without_a_usable_omp_num_threads_shares_the_cores(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert set_threads(SingleProcess(), 0) == max(1, cores // SingleProcess().local_size)
