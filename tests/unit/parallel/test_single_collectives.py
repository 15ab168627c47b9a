"""The Communicator protocol's collectives in one process (SingleProcess), against numpy: the same
checks that tests/mpi/test_comm_collectives.py runs under mpirun with 1–3 ranks."""

from __future__ import annotations

import pytest
from collectives import CHECKS, bounds_cases, check_float32_rows, run_checks

from hpcspec.parallel.comm import SingleProcess


@pytest.mark.parametrize("name", list(CHECKS))
def test_single_process_collective(name):
    CHECKS[name](SingleProcess())


def test_single_process_passes_float32_rows_through():
    check_float32_rows(SingleProcess(), refused=False)


def test_every_check_runs():
    assert run_checks(SingleProcess(), float32_refused=False) == [*CHECKS, "float32 rows"]


def test_bounds_cases_cover_the_rows_once_with_empty_shards():
    for size in (1, 2, 3):
        cases = bounds_cases(size)
        for bounds in cases:
            assert len(bounds) == size and bounds[0][0] == 0
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert any(lo == hi for bounds in cases for lo, hi in bounds)  # an empty shard
