"""threads = 0: OMP_NUM_THREADS when set, else the node's cores shared among its ranks, and the
count says where it came from (the start-up log prints it)."""

import os

import pytest
import torch

from hpcspec.parallel import device
from hpcspec.parallel.comm import SingleProcess
from hpcspec.parallel.device import choose_threads, set_threads, usable_cores


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_zero_respects_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = set_threads(SingleProcess(), 0)
    assert threads.count == 1 == torch.get_num_threads()
    assert str(threads) == "1 thread(s) per rank (OMP_NUM_THREADS=1)"


def test_an_explicit_count_wins_over_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = set_threads(SingleProcess(), 2)
    assert threads.count == 2 == torch.get_num_threads()
    assert threads.source == "threads setting"


@pytest.mark.parametrize("value", [None, "", "0", "many"])
def test_zero_without_a_usable_omp_num_threads_shares_the_cores(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert set_threads(SingleProcess(), 0).count == max(1, cores // SingleProcess().local_size)


@pytest.mark.parametrize(("cores", "ranks", "expected"), [(2, 1, 2), (2, 2, 1), (2, 3, 1), (16, 3, 5), (64, 8, 8),
                                                          (1, 4, 1), (8, 0, 8)])
def test_cores_divided_by_the_ranks_on_the_node_at_least_one(monkeypatch, cores, ranks, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "usable_cores", lambda: cores)
    threads = choose_threads(ranks, 0)
    assert threads.count == expected
    assert threads.source == f"{cores} affinity core(s) / {max(1, ranks)} rank(s) on this node"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_usable_cores_follow_the_affinity_mask():
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert usable_cores() == 1
    finally:
        os.sched_setaffinity(0, before)
    assert usable_cores() == len(before)
