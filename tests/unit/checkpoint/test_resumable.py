"""Checkpoint/restart of every resumable solver: interrupted anywhere, resumed bitwise the same.

For each case the solver is run uninterrupted; then, for every step i (0 = a fresh solver, N = a
finished one), a solver run for i steps hands its state through a checkpoint-like copy to a fresh
solver built with the same arguments, which runs to the end. Results, product counts and the
sequence of broadcast decisions (the collectives every rank must make in the same order) must
match the uninterrupted run exactly.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import numpy as np
import pytest
import torch
from helpers import classification_data, mlp

from hpcspec.curvature.operator import HessianOperator
from hpcspec.parallel.comm import SingleProcess
from hpcspec.solvers import PowerIteration, TraceEstimator, power_iteration, trace
from hpcspec.solvers.base import IterativeSolver, State, check_state
from hpcspec.solvers.block_lanczos import BlockLanczos
from hpcspec.solvers.density import SLQ, slq
from hpcspec.solvers.lanczos import Lanczos, lanczos
from hpcspec.solvers.matrix import MatrixOperator

Operator = MatrixOperator | HessianOperator
MakeSolver = Callable[[Operator], IterativeSolver]


class RecordingComm(SingleProcess):
    """One rank that records every broadcast decision, in order."""

    def __init__(self) -> None:
        self.decisions: list[Any] = []

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        self.decisions.append(obj)
        return obj


def random_symmetric(n: int, seed: int, eigenvalues: torch.Tensor | None = None) -> torch.Tensor:
    """``Q diag(λ) Qᵀ``: λ a positive decaying spectrum with an indefinite bulk unless given."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    if eigenvalues is None:
        decay = 4.0 * torch.exp(-torch.arange(n, dtype=torch.float64) / 6)
        eigenvalues = decay + 0.3 * torch.rand(n, dtype=torch.float64, generator=gen) - 0.1
    return q @ torch.diag(eigenvalues.to(torch.float64)) @ q.T


def few_distinct(n: int, values: list[float], seed: int = 3) -> torch.Tensor:
    """A symmetric matrix with only ``len(values)`` distinct eigenvalues: Krylov spaces break down early."""
    return random_symmetric(n, seed, torch.tensor(values, dtype=torch.float64).repeat(n)[:n])


def paired(n: int = 60, pairs: int = 10) -> torch.Tensor:
    """``0.5 I + Σ_k (c_k − 0.5) u_k u_kᵀ`` with ``u_k = (e_{2k} + e_{2k+1})/√2``, exact in binary.

    A Rademacher probe z has a component along u_k only when ``z_{2k} = z_{2k+1}``, so each probe's
    Krylov space has dimension 1 + (number of such pairs): probes break down at different steps.
    """
    matrix = 0.5 * torch.eye(n, dtype=torch.float64)
    for k in range(pairs):
        half = (1.0 + k - 0.5) / 2
        i = 2 * k
        matrix[i:i + 2, i:i + 2] += half
    return matrix


MATRIX = random_symmetric(80, 0)
#: Outliers 10 and 4.9 with gaps, −5 just beside 4.9: some pairs meet PyHessian's rule, one uses up maxiter.
GAPPED = random_symmetric(80, 2, torch.cat([torch.tensor([10.0, -5.0, 4.9, 1.0]), torch.linspace(-0.5, 0.5, 76)]))
LOW_RANK = random_symmetric(70, 1, torch.cat([torch.tensor([5.0, 3.0, -2.0, 1.0, 0.5]), torch.zeros(65)]))


def matrix_op(matrix: torch.Tensor) -> Callable[[], Operator]:
    return lambda: MatrixOperator(matrix, comm=RecordingComm())


def hessian_op() -> Operator:
    return HessianOperator(mlp(), "cross_entropy", classification_data(), comm=RecordingComm(),
                           method="double_backward")


# --- the cases: (operator factory, solver factory) ----------------------------------------------

def power(**kwargs: Any) -> MakeSolver:
    return lambda op: PowerIteration(op, **kwargs)


def estimator(**kwargs: Any) -> MakeSolver:
    return lambda op: TraceEstimator(op, **kwargs)


CASES: dict[str, tuple[Callable[[], Operator], MakeSolver]] = {
    # power iteration: pairs that meet the rule and pairs that use up maxiter; a zero operator
    "power": (matrix_op(GAPPED), power(k=3, maxiter=15, tol=1e-5, seed=1)),
    "power-zero": (matrix_op(torch.zeros(30, 30, dtype=torch.float64)), power(k=2, maxiter=5)),
    "power-hessian": (hessian_op, power(k=2, maxiter=8, tol=1e-4)),
    # trace estimators, fixed budget
    "hutchinson": (matrix_op(MATRIX), estimator(method="hutchinson", matvecs=20, block_size=3)),
    "hutchpp": (matrix_op(MATRIX), estimator(method="hutchpp", matvecs=30, block_size=4)),
    "krylov": (matrix_op(MATRIX), estimator(method="krylov", matvecs=40, seed=2)),
    "krylov-wide": (matrix_op(MATRIX), estimator(method="krylov", matvecs=130, sketch=60, block_size=7)),
    "krylov-invariant": (matrix_op(LOW_RANK), estimator(method="krylov", matvecs=40, distribution="gaussian")),
    "xtrace": (matrix_op(MATRIX), estimator(method="xtrace", matvecs=30, block_size=4)),
    "xtrace-gaussian": (matrix_op(MATRIX), estimator(method="xtrace", matvecs=24, distribution="gaussian")),
    "xtrace-rank-deficient": (matrix_op(LOW_RANK), estimator(method="xtrace", matvecs=20)),
    # adaptive: one round per step, stopping on rank 0's decision or out of budget
    "hutchinson-rtol": (matrix_op(MATRIX), estimator(method="hutchinson", matvecs=80, rtol=0.05)),
    "hutchinson-rtol-budget": (matrix_op(MATRIX), estimator(method="hutchinson", matvecs=47, rtol=1e-9,
                                                            block_size=6)),
    "hutchpp-rtol": (matrix_op(MATRIX), estimator(method="hutchpp", matvecs=80, sketch=5, rtol=0.05)),
    "hutchpp-rtol-budget": (matrix_op(MATRIX), estimator(method="hutchpp", matvecs=40, rtol=1e-9, block_size=4)),
    "krylov-rtol": (matrix_op(MATRIX), estimator(method="krylov", matvecs=120, sketch=10, rtol=0.02)),
    "krylov-rtol-budget": (matrix_op(MATRIX), estimator(method="krylov", matvecs=36, rtol=1e-9, block_size=5)),
    # the same on a small network's Hessian (P = 66)
    "krylov-hessian": (hessian_op, estimator(method="krylov", matvecs=24, block_size=3)),
    "hutchpp-rtol-hessian": (hessian_op, estimator(method="hutchpp", matvecs=40, sketch=4, rtol=0.15,
                                                   block_size=5)),
    "xtrace-hessian": (hessian_op, estimator(method="xtrace", matvecs=20)),
    # Lanczos: plain; an invariant subspace that ends the run; invariant subspaces that force restarts
    "lanczos": (matrix_op(MATRIX[:60, :60].contiguous()), lambda op: Lanczos(op, 3, tol=1e-8, maxiter=40)),
    "lanczos-invariant": (matrix_op(few_distinct(60, [3.0, -1.0, 0.5])), lambda op: Lanczos(op, 2)),
    "lanczos-restart": (matrix_op(few_distinct(60, [3.0, -1.0, 0.5])), lambda op: Lanczos(op, 4, which="both_ends")),
    # block Lanczos: restarts with locking, a 5-fold value the block of 2 cannot see (check rounds
    # that lock missed copies), an invariant subspace, both ends, and a run cut short by maxiter
    "block": (matrix_op(MATRIX), lambda op: BlockLanczos(op, 3, block_size=2, max_basis=12, tol=1e-8)),
    "block-missed-copies": (matrix_op(few_distinct(60, [5.0, 5.0, 5.0, 5.0, 5.0, 2.0, 1.0, 0.5, -1.0])),
                            lambda op: BlockLanczos(op, 6, block_size=2, max_basis=14, tol=1e-10)),
    "block-both-ends": (matrix_op(MATRIX), lambda op: BlockLanczos(op, 3, which="both_ends", block_size=3,
                                                                    max_basis=14, tol=1e-8)),
    # single vector: a 3-fold value the search sees once, found by check rounds deflated against the
    # search's Krylov basis (the default hand-over from the search to the check)
    "block-deflated-check": (matrix_op(random_symmetric(80, 4, torch.cat([torch.tensor([5.0, 5.0, 5.0, 3.0]),
                                                                           torch.linspace(-1.0, 1.0, 76)]))),
                             lambda op: BlockLanczos(op, 4, block_size=1, max_basis=30, tol=1e-10)),
    "block-budget": (matrix_op(MATRIX), lambda op: BlockLanczos(op, 4, block_size=2, max_basis=12, maxiter=20)),
    "block-hessian": (hessian_op, lambda op: BlockLanczos(op, 3, block_size=2, max_basis=10, tol=1e-6)),
    # SLQ: probes breaking down at different steps, some reaching the step limit
    "slq": (matrix_op(MATRIX), lambda op: SLQ(op, probes=3, steps=12, seed=4)),
    "slq-breakdown": (matrix_op(paired()), lambda op: SLQ(op, probes=6, steps=30)),
    "slq-breakdown-capped": (matrix_op(paired()), lambda op: SLQ(op, probes=6, steps=6, seed=1)),
}


# --- helpers ------------------------------------------------------------------------------------

def checkpoint_copy(state: State, size: int) -> State:
    """What a checkpoint store hands back: checked, then every value copied (tensors contiguous)."""
    check_state(state, size)
    copied: State = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            copied[key] = torch.from_numpy(value.detach().numpy().copy())
        elif isinstance(value, np.ndarray):
            copied[key] = np.array(value, copy=True, order="C")
        else:
            copied[key] = value
    return copied


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of results (dataclasses of tensors, arrays and scalars) or states (dicts)."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for field in dataclasses.fields(a):
            assert_same(getattr(a, field.name), getattr(b, field.name), f"{where}.{field.name}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), where
        for j, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{j}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b), where
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def snapshot(solver: IterativeSolver) -> dict[str, Any]:
    """Every attribute of the solver that a state could carry, with the tensors' memory layout (the
    layout decides BLAS's summation order, so a restored tensor must have the original's strides)."""
    out: dict[str, Any] = {}
    for name, value in vars(solver).items():
        if isinstance(value, torch.Tensor):
            out[name] = (value.clone(), value.stride())
        elif isinstance(value, np.ndarray):
            out[name] = value.copy()
        elif isinstance(value, (bool, int, float, str, type(None), list)):
            out[name] = copy.deepcopy(value)
        elif hasattr(value, "rows"):  # Lanczos's basis buffer
            out[name] = (value.rows.clone(), value.rows.stride())
    return out


def reference(case: str) -> tuple[Any, int, list[Any]]:
    make_op, make_solver = CASES[case]
    op = make_op()
    solver = make_solver(op)
    steps = 0
    while not solver.done:
        solver.step()
        steps += 1
    return solver.result(), steps, op.comm.decisions


# --- every interruption point -------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_resumed_anywhere_is_bitwise_the_uninterrupted_run(case):
    make_op, make_solver = CASES[case]
    expected, steps, decisions = reference(case)
    assert steps >= 1
    for i in range(steps + 1):
        first_op = make_op()
        first = make_solver(first_op)
        for _ in range(i):
            first.step()
        assert first.done == (i == steps)
        state = first.state_dict()
        assert state["kind"] == first.kind
        saved = checkpoint_copy(state, first_op.size)
        before = snapshot(first)
        decided, multiplied = len(first_op.comm.decisions), first_op.num_matvecs
        # taking a state changes nothing, and the state does not alias the solver's buffers
        assert_same(first.run(), expected, f"{case}, not interrupted at {i}")
        assert_same(state, saved, f"{case}, state taken at {i} changed as the run went on")
        second_op = make_op()
        second = make_solver(second_op)
        second_op.comm.decisions.clear()  # what building the solver broadcast (nothing, here) is not resumed
        second.load_state_dict(saved)
        if not first.done:  # a finished state drops its bulk (bases) by design: only its result must match
            assert_same(snapshot(second), before, f"{case}, solver restored after step {i}")
        assert_same(second.state_dict(), saved, f"{case}, state loaded at {i} and taken again")
        resumed = second.run()
        assert_same(resumed, expected, f"{case}, resumed after step {i}")
        # the collectives: the first run's up to step i, then the resumed run's, are the uninterrupted
        # sequence; and the resumed run does exactly the products that were left
        assert_same(first_op.comm.decisions, decisions, f"{case}, decisions")
        assert_same(first_op.comm.decisions[:decided] + second_op.comm.decisions, decisions, f"{case}, resumed decisions")
        assert multiplied + second_op.num_matvecs == first_op.num_matvecs


def test_the_cases_cover_what_they_claim():
    """The interesting branches are really taken: restarts, breakdowns, early and late stops."""
    power_result = reference("power")[0]
    assert not power_result.converged and 0 < power_result.iterations.min() < 15 == power_result.iterations.max()
    assert reference("power-zero")[0].eigenvalues.tolist() == [0.0, 0.0]
    for case in ("hutchinson-rtol", "hutchpp-rtol", "krylov-rtol", "hutchpp-rtol-hessian"):
        result = reference(case)[0]
        assert result.converged and result.num_matvecs < CASES[case][1](CASES[case][0]()).matvecs, case
    for case in ("hutchinson-rtol-budget", "hutchpp-rtol-budget", "krylov-rtol-budget"):
        result = reference(case)[0]
        assert not result.converged and result.num_matvecs == CASES[case][1](CASES[case][0]()).matvecs, case
    assert reference("krylov-invariant")[2].count(0) == 1  # a Krylov block of width 0: the space is invariant
    assert reference("xtrace-rank-deficient")[2] == [False]
    restarted = CASES["lanczos-restart"][1](CASES["lanczos-restart"][0]())
    restarted.run()
    assert restarted.restarts >= 1 and restarted.converged
    invariant = CASES["lanczos-invariant"][1](CASES["lanczos-invariant"][0]())
    invariant.run()
    assert invariant.restarts == 0 and invariant.converged and len(invariant.alpha) == 3
    block = reference("block")[0]
    assert block.restarts >= 1 and block.converged and block.complete and block.peak_basis <= 12
    missed = reference("block-missed-copies")[0]
    assert missed.checks >= 2 and np.allclose(missed.eigenvalues, [5.0] * 5 + [2.0], atol=1e-9)
    assert not reference("block-budget")[0].converged
    steps = reference("slq-breakdown")[0].steps
    assert len(set(steps.tolist())) > 1 and steps.max() < 30
    capped = reference("slq-breakdown-capped")[0].steps
    assert capped.min() < 6 == capped.max()


# --- wrappers, state checks ---------------------------------------------------------------------

def test_wrappers_run_the_solvers():
    op = MatrixOperator(MATRIX)
    assert_same(power_iteration(op, 2, maxiter=20, seed=3), PowerIteration(op, 2, maxiter=20, seed=3).run())
    for method in ("hutchinson", "hutchpp", "krylov", "xtrace"):
        rtol = 0.0 if method == "xtrace" else 0.05
        kwargs = dict(method=method, matvecs=60, rtol=rtol, seed=5, block_size=4)
        assert_same(trace(op, **kwargs), TraceEstimator(op, **kwargs).run(), method)
    assert_same(lanczos(op, 2, seed=1), Lanczos(op, 2, seed=1).run())
    assert_same(slq(op, probes=2, steps=5), SLQ(op, probes=2, steps=5).run())


def test_trace_estimator_validates_like_trace():
    op = MatrixOperator(MATRIX)
    for kwargs in (dict(method="nope"), dict(matvecs=2), dict(method="hutchpp", matvecs=3), dict(matvecs=1.5),
                   dict(method="xtrace", rtol=0.1), dict(method="hutchinson", sketch=3), dict(block_size=-1),
                   dict(rtol=float("nan")), dict(distribution="uniform"), dict(method="krylov", sketch=0)):
        with pytest.raises(ValueError) as from_trace:
            trace(op, **kwargs)
        with pytest.raises(ValueError) as from_class:
            TraceEstimator(op, **kwargs)
        assert str(from_trace.value) == str(from_class.value)


def test_a_state_of_another_kind_is_refused():
    op = MatrixOperator(MATRIX)
    solvers: list[IterativeSolver] = [PowerIteration(op, 2), TraceEstimator(op, matvecs=20), Lanczos(op, 2),
                                      SLQ(op, probes=2, steps=4)]
    for solver in solvers:
        solver.step()
    for given in solvers:
        for taker in solvers:
            if taker.kind != given.kind:
                with pytest.raises(ValueError, match="solver given to a"):
                    taker.load_state_dict(given.state_dict())
    hutchpp = TraceEstimator(op, method="hutchpp", matvecs=20)
    hutchpp.step()
    with pytest.raises(ValueError, match="'hutchpp' trace estimate given to a 'krylov'"):
        TraceEstimator(op, method="krylov", matvecs=20).load_state_dict(hutchpp.state_dict())
    small = PowerIteration(MatrixOperator(MATRIX[:50, :50]), 2).state_dict()
    with pytest.raises(ValueError, match="does not fit"):
        PowerIteration(op, 2).load_state_dict(small)


def test_states_hold_only_what_a_checkpoint_can_store():
    """Long vectors as (k, P) float64 tensors, the rest small arrays and scalars, at every phase."""
    for case in ("power", "hutchpp", "krylov", "xtrace", "hutchinson-rtol"):
        make_op, make_solver = CASES[case]
        op = make_op()
        solver = make_solver(op)
        while True:
            state = solver.state_dict()
            check_state(state, op.size)
            if solver.done:
                break
            solver.step()
    power_state = PowerIteration(MatrixOperator(MATRIX), 3).state_dict()
    assert set(power_state) == {"kind", "pair", "pair_step", "v", "theta_prev", "found", "eigenvalues", "residuals",
                                "iterations", "converged", "num_matvecs", "done"}
    assert power_state["found"].shape == (3, 80)
    trace_state = TraceEstimator(MatrixOperator(MATRIX), method="krylov", matvecs=130, sketch=60).state_dict()
    assert set(trace_state) == {"kind", "method", "phase", "basis", "block", "r", "diag", "deflated", "scale",
                                "samples", "num_matvecs", "converged", "done"}
    assert trace_state["phase"] == "krylov" and trace_state["block"].shape == (2, 80)
    assert trace_state["basis"].shape == (0, 80)
