"""Lanczos against operators with known spectra and against a dense float64 Hessian."""

import numpy as np
import pytest
import torch

from helpers import classification_data, dense_hessian, mlp, relative_error, top_eigenvalues
from hpcspec import HessianOperator, MatrixOperator, lanczos


def operator_with_spectrum(eigenvalues: torch.Tensor, seed: int = 0) -> MatrixOperator:
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return MatrixOperator(q @ torch.diag(eigenvalues) @ q.T)


SPECTRUM = torch.cat([torch.tensor([40.0, 25.0, 12.0, 6.0, 5.5, -9.0, -3.0], dtype=torch.float64),
                      torch.linspace(-1, 1, 193, dtype=torch.float64)])


@pytest.mark.parametrize("which, expected", [
    ("largest", [40.0, 25.0, 12.0, 6.0, 5.5]),
    ("smallest", [-9.0, -3.0, -1.0, -1.0 + 2 / 192, -1.0 + 4 / 192]),
    ("largest_magnitude", [40.0, 25.0, 12.0, -9.0, 6.0]),
    ("both_ends", [40.0, 25.0, 12.0, -3.0, -9.0]),
])
def test_known_spectrum(which, expected):
    result = lanczos(operator_with_spectrum(SPECTRUM), 5, which=which, tol=1e-10, maxiter=200)
    assert result.converged
    assert np.allclose(result.eigenvalues, expected, rtol=1e-8, atol=1e-8)


def test_eigenvectors_and_residuals_are_true():
    op = operator_with_spectrum(SPECTRUM)
    result = lanczos(op, 4, tol=1e-10)
    vectors = result.eigenvectors
    assert torch.allclose(vectors.T @ vectors, torch.eye(4, dtype=torch.float64), atol=1e-12)
    true_residuals = torch.linalg.vector_norm(op.matrix @ vectors - vectors * torch.from_numpy(result.eigenvalues), dim=0)
    assert np.all(true_residuals.numpy() <= 1e-9 * 40)
    assert np.allclose(true_residuals.numpy(), result.residuals, atol=1e-11)


def test_top5_of_dense_mlp_hessian_to_1e8():
    model, (x, y) = mlp(sizes=(5, 9, 3)), classification_data(n=60)
    exact = top_eigenvalues(dense_hessian(model, "cross_entropy", x, y), 5)
    op = HessianOperator(model, "cross_entropy", (x, y), batch_size=16)
    result = lanczos(op, 5, tol=1e-10)
    assert result.converged and result.num_matvecs <= op.size
    assert relative_error(result.eigenvalues, exact) <= 1e-8


def test_invariant_subspace_restarts_and_finds_zero_eigenvalues():
    low_rank = torch.cat([torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64), torch.zeros(47, dtype=torch.float64)])
    result = lanczos(operator_with_spectrum(low_rank), 5)
    assert result.converged
    assert np.allclose(result.eigenvalues, [3, 2, 1, 0, 0], atol=1e-12)
    assert 0.0 in result.beta  # the restart is recorded as a zero off-diagonal


def test_no_convergence_returns_partial_result():
    result = lanczos(operator_with_spectrum(torch.linspace(1, 2, 300, dtype=torch.float64)), 5, tol=1e-14, maxiter=10)
    assert not result.converged and result.iterations == 10 and len(result.eigenvalues) == 5


def test_exhausted_krylov_space_is_exact():
    result = lanczos(operator_with_spectrum(torch.arange(1.0, 7.0, dtype=torch.float64)), 6, tol=0.0)
    assert result.converged
    assert np.allclose(result.eigenvalues, [6, 5, 4, 3, 2, 1], rtol=1e-12)


def test_same_seed_same_bits_and_bad_arguments():
    op = operator_with_spectrum(SPECTRUM)
    first, second = lanczos(op, 3, seed=7), lanczos(op, 3, seed=7)
    assert np.array_equal(first.alpha, second.alpha) and np.array_equal(first.eigenvalues, second.eigenvalues)
    with pytest.raises(ValueError, match="k must be between"):
        lanczos(op, 0)
    with pytest.raises(ValueError, match="which must be"):
        lanczos(op, 2, which="top")
