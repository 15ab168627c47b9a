"""Power iteration with deflation (PyHessian's method) against known spectra and a dense Hessian."""

import numpy as np
import pytest
import torch

from helpers import classification_data, dense_hessian, mlp
from hpcspec import HessianOperator, MatrixOperator
from hpcspec.parallel.comm import SingleProcess
from hpcspec.solvers.power import PowerResult, power_iteration


def rotated(eigenvalues: list[float], bulk: int = 196, seed: int = 0) -> tuple[MatrixOperator, torch.Tensor]:
    """A dense operator with the given outliers plus a bulk in [-0.5, 0.5], and its eigenvectors."""
    values = torch.cat([torch.tensor(eigenvalues, dtype=torch.float64), torch.linspace(-0.5, 0.5, bulk, dtype=torch.float64)])
    n = len(values)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return MatrixOperator(q @ torch.diag(values) @ q.T), q


def true_residuals(matrix: torch.Tensor, result: PowerResult) -> np.ndarray:
    vectors = result.eigenvectors
    return torch.linalg.vector_norm(matrix @ vectors - vectors * torch.from_numpy(result.eigenvalues), dim=0).numpy()


# |λ| = 10, 5, 2.5, 1: each ratio |λ_{j+1}/λ_j| ≤ 1/2, a good gap.
OUTLIERS = [10.0, -5.0, 2.5, 1.0]


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_top_k_to_the_accuracy_of_pyhessians_rule(tol):
    """With ratio ρ the Rayleigh quotient's error shrinks by ρ² per product, so when its relative
    change first drops below tol the remaining error is about tol·ρ²/(1−ρ²) ≈ tol/3 for ρ = 1/2
    (a little more for later pairs, deflated against inexact vectors): below tol."""
    op, _ = rotated(OUTLIERS)
    result = power_iteration(op, 3, tol=tol)
    assert result.converged
    exact = np.array([10.0, -5.0, 2.5])
    assert np.all(np.abs(result.eigenvalues - exact) <= tol * np.abs(exact))
    assert result.num_matvecs == op.num_matvecs == result.iterations.sum()
    assert np.all(result.iterations <= 30)


def test_residuals_are_the_true_residuals_and_bound_the_error():
    op, _ = rotated(OUTLIERS)
    result = power_iteration(op, 3)  # PyHessian's defaults: loose, so residuals are far from 0
    residuals = true_residuals(op.matrix, result)
    assert np.allclose(result.residuals, residuals, rtol=1e-10, atol=1e-14)
    assert np.all(result.residuals > 1e-3)  # tol = 1e-3 leaves visible residuals...
    exact = np.linalg.eigvalsh(op.matrix.numpy())
    for theta, residual in zip(result.eigenvalues, result.residuals):
        assert np.min(np.abs(exact - theta)) <= residual  # ...which bound the eigenvalue error


def test_deflation_finds_distinct_eigenpairs():
    op, q = rotated(OUTLIERS)
    result = power_iteration(op, 4, tol=1e-12, maxiter=500)
    assert result.converged
    assert np.allclose(result.eigenvalues, OUTLIERS, rtol=1e-10)
    vectors = result.eigenvectors
    assert vectors.shape == (op.size, 4)
    assert torch.allclose(vectors.T @ vectors, torch.eye(4, dtype=torch.float64), atol=1e-12)
    overlaps = (q[:, :4].T @ vectors).abs()  # true eigenvectors are the first columns of q
    assert torch.allclose(overlaps, torch.eye(4, dtype=torch.float64), atol=1e-5)
    assert np.all(result.residuals <= 1e-4)
    # the sign convention of lanczos.py: the largest-magnitude entry is positive
    assert torch.all(vectors.gather(0, vectors.abs().argmax(dim=0, keepdim=True)) > 0)


def test_negative_dominant_eigenvalue_is_found_first():
    op, _ = rotated([-8.0, 4.0, 2.0])
    result = power_iteration(op, 2, tol=1e-10, maxiter=500)
    assert result.converged
    assert np.allclose(result.eigenvalues, [-8.0, 4.0], rtol=1e-9)


def test_pyhessians_rule_is_fooled_by_plus_minus_lambda_but_the_residual_is_not():
    """With ±5 the iterate alternates between two vectors with the same Rayleigh quotient
    θ = 5(a² − b²)/(a² + b²), set by the start: the relative change is ~0 at once, but θ is no
    eigenvalue, and the residual √(25 − θ²) says so."""
    op, _ = rotated([5.0, -5.0, 1.0])
    for seed in range(3):
        result = power_iteration(op, 1, seed=seed)
        assert result.converged and result.iterations[0] <= 10
        theta, residual = result.eigenvalues[0], result.residuals[0]
        assert residual == pytest.approx(np.sqrt(25 - theta**2), rel=1e-3)
        assert residual > 0.1
    assert np.allclose(result.residuals, true_residuals(op.matrix, result), rtol=1e-10)


def test_maxiter_exhaustion_returns_partial_pairs_unconverged():
    op, _ = rotated([10.0, 9.99])  # ratio 0.999: the rule cannot be met in a few products
    result = power_iteration(op, 2, maxiter=4, tol=1e-12)
    assert not result.converged
    assert list(result.iterations) == [4, 4] and result.num_matvecs == 8
    assert np.allclose(result.residuals, true_residuals(op.matrix, result), rtol=1e-10)
    one = power_iteration(op, 1, maxiter=1)  # one product never meets a relative-change rule
    assert not one.converged and one.num_matvecs == 1


def test_zero_operator_gives_exact_zero_pairs():
    result = power_iteration(MatrixOperator(torch.zeros(6, 6, dtype=torch.float64)), 2)
    assert result.converged
    assert list(result.eigenvalues) == [0.0, 0.0] and list(result.residuals) == [0.0, 0.0]
    assert list(result.iterations) == [1, 1]
    assert torch.allclose(result.eigenvectors.T @ result.eigenvectors, torch.eye(2, dtype=torch.float64), atol=1e-14)


def test_same_seed_same_bits_and_rank_zero_decides():
    op, _ = rotated(OUTLIERS)
    first, second = power_iteration(op, 2, seed=3), power_iteration(op, 2, seed=3)
    assert torch.equal(first.eigenvectors, second.eigenvectors)
    assert np.array_equal(first.eigenvalues, second.eigenvalues)

    class NeverStop(SingleProcess):
        """Rank 0 says "go on" whatever this rank concluded."""

        def bcast_object(self, obj, root=0):
            return False

    op.comm = NeverStop()
    forced = power_iteration(op, 2, seed=3, maxiter=40)
    assert not forced.converged and list(forced.iterations) == [40, 40]


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 0}, "k must be between 1"),
    ({"k": 201}, "k must be between 1"),
    ({"maxiter": 0}, "maxiter must be at least 1"),
    ({"tol": -1e-3}, r"tol = -0.001 is outside \[0, 0.02\]"),
    ({"tol": float("nan")}, "tol = nan is outside"),
    ({"tol": 0.5}, "certifies nothing"),
])
def test_argument_errors(kwargs, match):
    op, _ = rotated(OUTLIERS)
    with pytest.raises(ValueError, match=match):
        power_iteration(op, **kwargs)


def test_agrees_with_dense_hessian_of_an_mlp():
    model, (x, y) = mlp(sizes=(5, 7, 3)), classification_data(n=60)
    matrix = dense_hessian(model, "cross_entropy", x, y)
    exact = np.linalg.eigvalsh(matrix.numpy())
    by_magnitude = exact[np.argsort(-np.abs(exact))]
    op = HessianOperator(model, "cross_entropy", (x, y), batch_size=16)

    loose = power_iteration(op, 3)  # PyHessian's defaults
    assert np.allclose(loose.residuals, true_residuals(matrix, loose), rtol=1e-8, atol=1e-14)
    for theta, residual in zip(loose.eigenvalues, loose.residuals):
        assert np.min(np.abs(exact - theta)) <= residual
    assert abs(loose.eigenvalues[0] - by_magnitude[0]) <= 1e-2 * abs(by_magnitude[0])

    tight = power_iteration(op, 3, tol=1e-12, maxiter=3000)
    assert tight.converged
    assert np.allclose(tight.eigenvalues, by_magnitude[:3], rtol=1e-8)
    assert np.all(tight.residuals <= 1e-5 * abs(by_magnitude[0]))
