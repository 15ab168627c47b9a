"""The default top-k solver (block Lanczos, thick restart, locking, completeness check) against
exact answers on operators whose eigenvalues repeat: designed spectra and linear models under MSE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import REPO, dense_hessian, mpirun, mpirun_available, regression_data
from torch import nn

from hpcspec import HessianOperator, MatrixOperator
from hpcspec.solvers.block_lanczos import (
    DEFAULT_BLOCK_SIZE,
    BlockLanczos,
    block_lanczos,
)
from hpcspec.solvers.lanczos import WHICH, lanczos

BULK = 150


def designed(values: list[float], seed: int = 0) -> tuple[MatrixOperator, np.ndarray]:
    """Q diag(values ∪ bulk) Qᵀ with a uniform bulk in [-1, 1] under the designed values."""
    gen = np.random.default_rng(seed)
    spectrum = np.concatenate([values, gen.uniform(-1.0, 1.0, BULK)])
    q, _ = torch.linalg.qr(torch.randn(len(spectrum), len(spectrum), dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(seed)))
    return MatrixOperator((q * torch.from_numpy(spectrum)) @ q.T), spectrum


def expected(spectrum: np.ndarray, k: int, which: str) -> np.ndarray:
    ordered = np.sort(spectrum)
    if which == "largest":
        return ordered[::-1][:k]
    if which == "smallest":
        return ordered[:k]
    if which == "largest_magnitude":
        return ordered[np.argsort(-np.abs(ordered), kind="stable")][:k]
    return np.sort(np.concatenate([ordered[::-1][:(k + 1) // 2], ordered[: k // 2]]))[::-1]


def sin_angle(found: torch.Tensor, exact_basis: torch.Tensor) -> float:
    """Sine of the largest principal angle between span(found) and the span of ``exact_basis``."""
    q, _ = torch.linalg.qr(found)
    return float(torch.linalg.matrix_norm(q - exact_basis @ (exact_basis.T @ q), ord=2))


def eigenspace(matrix: torch.Tensor, value: float, width: float = 1e-9) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors[:, (values - value).abs() <= width * max(1.0, abs(value))]


@pytest.mark.parametrize("multiplicity", [2, 3, 5, 8])
@pytest.mark.parametrize("cluster", [False, True], ids=["exact", "cluster-1e-7"])
@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("block_size", [DEFAULT_BLOCK_SIZE, 4], ids=["default-one-vector", "block-of-4"])
def test_repeated_eigenvalues_are_all_found(multiplicity, cluster, which, block_size):
    """m copies of ±4 (8 > the default block size), optionally a value 1e-7 (relative) below +4, and
    a pair ±3; k takes every copy on the side(s) asked for, and one more value where it fits."""
    top = [4.0] * multiplicity + ([4.0 * (1 - 1e-7)] if cluster else []) + [3.0, 3.0]
    values = top + [-4.0] * multiplicity + [-3.0]
    op, spectrum = designed(values, seed=multiplicity)
    k = {"largest": multiplicity + 1, "smallest": multiplicity + 1, "largest_magnitude": 2 * multiplicity,
         "both_ends": 2 * multiplicity}[which]
    result = block_lanczos(op, k, which=which, tol=1e-10, block_size=block_size)
    assert result.converged and result.complete, result
    want = expected(spectrum, k, which)
    assert np.allclose(np.sort(result.eigenvalues), np.sort(want), rtol=0, atol=1e-8 * 4), (result.eigenvalues, want)
    vectors = result.eigenvectors
    assert torch.allclose(vectors.T @ vectors, torch.eye(k, dtype=torch.float64), atol=1e-10)
    true = torch.linalg.vector_norm(op.matrix @ vectors - vectors * torch.from_numpy(result.eigenvalues), dim=0)
    assert float(true.max()) <= 1e-9 * 4
    if not cluster:  # the copies of +4 (or -4) span the whole eigenspace
        for value in (4.0, -4.0):
            chosen = np.abs(result.eigenvalues - value) <= 1e-8
            if chosen.sum() == multiplicity:
                assert sin_angle(vectors[:, chosen], eigenspace(op.matrix, value)) <= 1e-6


def test_single_vector_lanczos_misses_copies_the_block_solver_finds():
    """The failure this solver exists for: converged, tiny residuals, and wrong."""
    op, spectrum = designed([4.0] * 3 + [3.0] * 2, seed=1)
    plain = lanczos(op, 5, tol=1e-10)
    assert plain.converged and np.max(plain.residuals) <= 1e-9 * 4
    block = block_lanczos(op, 5, tol=1e-10)
    assert np.allclose(block.eigenvalues, [4, 4, 4, 3, 3], atol=1e-9)


def test_the_check_is_deflated_against_the_search_basis():
    """Single vector on outliers, then values the search nearly converges too, over a bulk: the
    check round, deflated against the search's nearly converged Ritz vectors, works on an operator
    whose top lies far below the k-th value, so it is far shorter than the search (and than the
    round deflated against the locked pairs only); a 3-fold value the search sees once is still
    found, the copies spanning the eigenspace."""
    op, spectrum = designed([5.0, 4.5, 4.0, 3.5, 3.0, 2.9, 2.8, 2.7, 2.6, 2.5], seed=3)
    solver = BlockLanczos(op, 5, tol=1e-10, block_size=1)
    result = solver.run()
    assert result.complete and np.allclose(result.eigenvalues, [5, 4.5, 4, 3.5, 3], atol=1e-9)
    assert "the search's Krylov basis" in result.guarantee and result.checks == 1
    check = solver.passes - solver.search_passes
    assert check <= solver.search_passes // 2, (solver.passes, solver.search_passes)
    plain = BlockLanczos(op, 5, tol=1e-10, block_size=1)
    plain.breakdowns = 1  # as after a breakdown: the round is deflated against the locked pairs only
    same = plain.run()
    assert "the search's Krylov basis" not in same.guarantee and np.allclose(same.eigenvalues, result.eigenvalues)
    assert plain.passes - plain.search_passes >= 2 * check
    op, _ = designed([5.0] * 3 + [4.0, 3.5], seed=4)
    result = block_lanczos(op, 5, tol=1e-10, block_size=1)
    assert result.complete and np.allclose(result.eigenvalues, [5, 5, 5, 4, 3.5], atol=1e-9), result.eigenvalues
    assert "the search's Krylov basis" in result.guarantee
    assert sin_angle(result.eigenvectors[:, :3], eigenspace(op.matrix, 5.0)) <= 1e-6


def test_a_search_that_broke_down_checks_against_the_locked_pairs_only():
    """Few distinct values: the single-vector search meets an invariant subspace and draws a fresh
    probe, so its basis is no single Krylov space; the check then deflates the locked pairs only."""
    values = torch.tensor([5.0, 5.0, 5.0, 2.0, 1.0, -1.0], dtype=torch.float64).repeat(10)
    q, _ = torch.linalg.qr(torch.randn(60, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    op = MatrixOperator((q * values) @ q.T)
    result = block_lanczos(op, 4, tol=1e-10, block_size=1)
    assert result.complete and np.allclose(result.eigenvalues, [5, 5, 5, 5], atol=1e-9), result.eigenvalues
    assert "the search's Krylov basis" not in result.guarantee


def test_k_cutting_through_a_multiplet():
    """k = 4 of a 3-fold value and a 2-fold one: three copies span the first eigenspace, the fourth
    vector lies in the second."""
    op, _ = designed([5.0] * 3 + [4.0] * 2, seed=2)
    result = block_lanczos(op, 4, tol=1e-10)
    assert np.allclose(result.eigenvalues, [5, 5, 5, 4], atol=1e-9) and result.complete
    assert sin_angle(result.eigenvectors[:, :3], eigenspace(op.matrix, 5.0)) <= 1e-6
    assert sin_angle(result.eigenvectors[:, 3:], eigenspace(op.matrix, 4.0)) <= 1e-6


@pytest.mark.parametrize("outputs", [2, 3, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_model_mse_kronecker_spectrum(outputs, bias):
    """A linear layer under MSE: H = I_d ⊗ (X̃ᵀX̃)·2/(N d), every eigenvalue d times. Batches of 16
    of 41 samples (a short last batch). Top-k = two whole multiplets, to 1e-8, spanning them."""
    x, y = regression_data(n=41, features=6, outputs=outputs)
    torch.manual_seed(0)
    model = nn.Linear(6, outputs, bias=bias).double()
    matrix = dense_hessian(model, "mse", x, y)
    exact = np.linalg.eigvalsh(matrix.numpy())[::-1]
    k = 2 * outputs
    op = HessianOperator(model, "mse", (x, y), batch_size=16, method="double_backward")
    result = block_lanczos(op, k)
    assert result.converged and result.complete
    assert np.max(np.abs(result.eigenvalues - exact[:k]) / exact[:k]) <= 1e-8, (result.eigenvalues, exact[:k])
    for first in (0, outputs):
        found = result.eigenvectors[:, first:first + outputs]
        assert sin_angle(found, eigenspace(matrix, float(exact[first]), 1e-7)) <= 1e-6


def test_basis_never_exceeds_max_basis():
    op, spectrum = designed([4.0] * 6 + [3.0] * 2, seed=3)
    solver = BlockLanczos(op, 8, block_size=2, max_basis=14, tol=1e-10)
    allocated = []
    while not solver.done:
        solver.step()
        allocated.append(solver.buffer.data.shape[0])
        assert solver.nl + solver.m + solver.w <= 14
    result = solver.result()
    assert max(allocated) <= 14 and result.peak_basis <= 14 and result.restarts >= 3
    assert np.allclose(result.eigenvalues, expected(spectrum, 8, "largest"), atol=1e-9)


def test_defaults_and_arguments():
    op, _ = designed([2.0, 1.5], seed=4)
    result = block_lanczos(op, 2)
    assert result.block_size == DEFAULT_BLOCK_SIZE and result.method == "block"
    assert result.data_passes * DEFAULT_BLOCK_SIZE >= result.num_matvecs > 0
    assert f"multiplicity <= {DEFAULT_BLOCK_SIZE}" in result.guarantee
    same = block_lanczos(op, 2)
    assert np.array_equal(result.eigenvalues, same.eigenvalues) and torch.equal(result.eigenvectors, same.eigenvectors)
    for kwargs, message in [({"k": 0}, "k must be"), ({"block_size": 0}, "block_size"),
                            ({"max_basis": 5, "k": 3}, "max_basis = 5 is too small"),
                            ({"which": "middle"}, "which must be"), ({"tol": float("nan")}, "nan")]:
        with pytest.raises(ValueError, match=message):
            BlockLanczos(op, **{"k": 2, **kwargs})


class ColumnMajorProducts(MatrixOperator):
    """Products with column strides: a (P, 1) product laid out as a transposed (1, P) row, as
    gloo's emulated reduce-scatter once returned it."""

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        product = super().apply(vectors)
        columns = product[:, None] if product.ndim == 1 else product
        laid_out = torch.empty(columns.shape[::-1], dtype=columns.dtype).copy_(columns.T).T
        return laid_out[:, 0] if product.ndim == 1 else laid_out


@pytest.mark.parametrize("block_size", [1, 3])
def test_the_bits_do_not_depend_on_the_strides_of_a_product(block_size):
    """A BLAS product picks its summation order from its operands' strides: the solver lays each
    product out row-major first, so the backend's layout cannot change the last bits."""
    op, _ = designed([4.0, 4.0, 3.0])
    plain = block_lanczos(op, 3, block_size=block_size, seed=2)
    strided = block_lanczos(ColumnMajorProducts(op.matrix), 3, block_size=block_size, seed=2)
    assert np.array_equal(plain.eigenvalues, strided.eigenvalues)
    assert torch.equal(plain.eigenvectors, strided.eigenvectors)


def test_exhausted_space_is_exact():
    """A 6×6 operator with k = 5: the basis spans everything; the answer is exact."""
    values = torch.tensor([3.0, 3.0, 3.0, 1.0, 1.0, -2.0], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    result = block_lanczos(MatrixOperator((q * values) @ q.T), 5, tol=1e-12)
    assert result.complete and np.allclose(result.eigenvalues, [3, 3, 3, 1, 1], atol=1e-12)


def test_out_of_budget_returns_the_partial_pairs():
    op, _ = designed([4.0] * 3, seed=5)
    result = block_lanczos(op, 3, tol=1e-14, maxiter=12)
    assert not result.converged and not result.complete and len(result.eigenvalues) == 3
    assert "NOT checked" in result.guarantee


@pytest.mark.mpi
@pytest.mark.skipif(not mpirun_available(), reason="needs mpirun and mpi4py")
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_sharded_and_replicated_on_1_2_3_ranks(tmp_path, ranks):
    """Linear MSE models with 3 outputs, uneven shards, a short last batch, sharded and replicated
    vectors: the dense eigenvalues to 1e-8, the eigenspaces to 1e-6, each rank holding its slice."""
    out = tmp_path / "block.json"
    proc = mpirun(ranks, [str(REPO / "tests" / "mpi" / "mpi_block.py"), str(out)], cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == ranks
    for record in records:
        for case in record["cases"]:
            assert case["eigen_error"] <= 1e-8, case
            assert case["sin_angle"] <= 1e-6, case
            assert case["complete"] and case["rows_held"] == case["slice"], case
            assert case["peak_basis"] <= case["max_basis"], case


def loose_operator(seed: int, noise: float = 0.0, n: int = 80) -> tuple[MatrixOperator, np.ndarray]:
    """Ten values in [1, 3], four in [-3, -1] and a bulk N(0, 0.05²); ``noise``: i.i.d. entries added
    (not symmetric, as bfloat16 products are not). The spectrum returned is the symmetric part's."""
    gen = np.random.default_rng(seed)
    q, _ = np.linalg.qr(gen.standard_normal((n, n)))
    spectrum = np.concatenate([gen.uniform(1, 3, 10), -gen.uniform(1, 3, 4), gen.normal(0, 0.05, n - 14)])
    matrix = (q * spectrum) @ q.T + noise * gen.standard_normal((n, n))
    return MatrixOperator(torch.from_numpy(matrix)), spectrum


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("tol", [0.5, 0.25, 0.1, 1.6e-2])
def test_loose_tolerances_stay_within_max_basis(which, tol):
    """At a loose tol every pair within tol of the k-th value counts as a copy in a check round and
    is locked; once they fill the basis the check stops (complete False) instead of overflowing it.
    Every converged pair's value is within tol · max|λ| of a true eigenvalue; at the bfloat16 tol
    (1.6e-2, gaps here ≫ tol) the k values are the true wanted ones to tol · max|λ|."""
    for seed in range(2):
        op, spectrum = loose_operator(seed)
        scale = float(np.abs(spectrum).max())
        for k in (1, 3, 5):
            for block_size in (1, 2, 4):
                for max_basis in (32, k + 3 * block_size):
                    solver = BlockLanczos(op, k, which=which, tol=tol, block_size=block_size, max_basis=max_basis)
                    result = solver.run()
                    assert solver.peak_rows <= max_basis and result.converged, (seed, k, block_size, max_basis)
                    nearest = np.abs(result.eigenvalues[:, None] - spectrum[None]).min(axis=1)
                    assert np.all(nearest <= tol * scale), (seed, k, block_size, max_basis, nearest)
                    if tol <= 1.6e-2:
                        error = np.abs(np.sort(result.eigenvalues) - np.sort(expected(spectrum, k, which))).max()
                        assert error <= tol * scale, (seed, k, block_size, max_basis, error)
        noisy, _ = loose_operator(seed, noise=1e-2)
        for k, block_size in ((3, 1), (5, 2), (5, 4)):
            solver = BlockLanczos(noisy, k, which=which, tol=tol, block_size=block_size, max_basis=32)
            result = solver.run()
            assert solver.peak_rows <= 32 and len(result.eigenvalues) == k


def test_loose_tolerance_resumes_bitwise_and_checks_the_basis_it_gets():
    """Saved in a check round with many copies locked, resumed: the same bits; resumed into a
    smaller max_basis than the state holds: a ValueError naming max_basis."""
    op, _ = loose_operator(0)
    straight = BlockLanczos(op, 3, tol=0.5, block_size=1, max_basis=32).run()
    assert not straight.complete and straight.locked > 20  # the check stopped with the basis full
    first = BlockLanczos(op, 3, tol=0.5, block_size=1, max_basis=32)
    while first.nl < 15:
        first.step()
    state = first.state_dict()
    second = BlockLanczos(op, 3, tol=0.5, block_size=1, max_basis=32)
    second.load_state_dict(state)
    resumed = second.run()
    assert np.array_equal(resumed.eigenvalues, straight.eigenvalues)
    assert torch.equal(resumed.eigenvectors, straight.eigenvectors) and resumed.num_matvecs == straight.num_matvecs
    with pytest.raises(ValueError, match="more than max_basis = 10: resume with max_basis >= 1"):
        BlockLanczos(op, 3, tol=0.5, block_size=1, max_basis=10).load_state_dict(state)
