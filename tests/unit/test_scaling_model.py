"""benchmarks/scaling_model.py: the α-β formulas, their fit, and the per-product sum, against
answers worked by hand."""

from __future__ import annotations

import math
import sys

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import scaling_model as sm  # noqa: E402


def test_collective_times_follow_the_alpha_beta_formulas():
    ab = sm.AlphaBeta(alpha=1e-6, beta=1e-9)
    assert sm.collective_time("allgather", 8e6, 1, ab) == 0.0
    assert sm.collective_time("allgather", 8e6, 8, ab) == pytest.approx(3e-6 + 8e6 * 1e-9 * 7 / 8, rel=1e-15)
    assert sm.collective_time("reduce_scatter", 8e6, 5, ab) == pytest.approx(3e-6 + 8e6 * 1e-9 * 4 / 5, rel=1e-15)
    assert sm.collective_time("allreduce", 8e6, 8, ab) == pytest.approx(2 * (3e-6 + 8e6 * 1e-9 * 7 / 8), rel=1e-15)


@pytest.mark.parametrize("kind", sm.KINDS)
def test_the_fit_recovers_alpha_and_beta_from_exact_timings(kind):
    truth = sm.AlphaBeta(alpha=3.5e-6, beta=2e-10)
    rows = [{"collective": kind, "ranks": r, "n": n, "seconds": sm.collective_time(kind, 8 * n, r, truth)}
            for r in (2, 3, 4) for n in (256, 4096, 65536, 1 << 20)]
    fitted = sm.fit_alpha_beta(rows, kind)
    assert fitted.alpha == pytest.approx(truth.alpha, rel=1e-9)
    assert fitted.beta == pytest.approx(truth.beta, rel=1e-9)


def test_product_time_is_the_sum_of_its_parts():
    ab = sm.AlphaBeta(2e-6, 1 / 24e9)
    machine = sm.Machine({kind: ab for kind in sm.KINDS}, flop_rate=1e13, staging_bps=25e9, memory_bps=1e11)
    job = sm.Job(lanczos_steps=100, probes=10, slq_steps=100, hvp_ratio=2.0)
    problem = sm.Problem("p", params=1e6, samples=1e5, forward_flop=1e9)
    got = sm.product_time(problem, machine, job, 16)
    vector, stages = 8e6, 4
    hvp = 2.0 * 3 * 1e9 * (1e5 / 16) / 1e13
    reorth = 2 * 50 * vector / 16 / 1e11  # two reads (Vᵀw, V·c) of a mean 50-vector basis slice
    comm = 2 * (2e-6 * stages + vector * 15 / 16 / 24e9) + 2 * 2 * (2e-6 * stages + 8 * 50 * 15 / 16 / 24e9)
    staging = 2 * vector / 25e9
    assert job.mean_basis == 50
    assert got["compute"] == pytest.approx(hvp + reorth, rel=1e-12)
    assert got["comm"] == pytest.approx(comm + staging, rel=1e-12)
    assert got["total"] == got["compute"] + got["comm"]


def test_strong_efficiency_is_one_when_communication_is_free():
    free = sm.Machine({kind: sm.AlphaBeta(0.0, 0.0) for kind in sm.KINDS}, 1e13, 0.0, math.inf)
    rows = sm.scaling_table(sm.Problem("p", 1e6, 1 << 20, 1e9), free, sm.Job(hvp_ratio=2.0))
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0] * len(rows), rel=1e-12)
    assert rows[-1]["basis_gib"] == pytest.approx(100 * 8e6 / 1024 / 2 ** 30, rel=1e-12)
