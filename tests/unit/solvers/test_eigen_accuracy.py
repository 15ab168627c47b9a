"""Issue 3's accuracy figures for eigenpairs, on the default job's trained digits MLP and on
closed-form spectra: top-5 to 1e-8 within 80 products (float64), no ghost eigenvalues from a
200-step Lanczos on a float32 model, and the smallest (negative-curvature) end."""

import numpy as np
import pytest
import torch

from hpcspec import MatrixOperator, lanczos
from hpcspec.commands.demo import digits_mlp_operator
from hpcspec.solvers.lanczos import select


def rotated(eigenvalues: np.ndarray, seed: int = 0) -> MatrixOperator:
    n = len(eigenvalues)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    return MatrixOperator(q @ torch.diag(torch.from_numpy(eigenvalues)) @ q.T)


CLOSED_FORM = {
    # a few outliers over a bulk near zero: the shape of a trained network's Hessian (Ghorbani et al.)
    "outliers+bulk": np.concatenate([[9.0, 7.5, 6.0, 4.0, 3.2], np.random.default_rng(0).normal(0, 0.05, 995)]),
    # geometric decay without a clear gap
    "geometric": 0.9 ** np.arange(1000),
    # indefinite, negative end dominant in magnitude
    "indefinite": np.concatenate([[5.0, 4.5, 4.0, 3.0, 2.0], np.linspace(-8, 1.5, 795)]),
}


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_top5_closed_form_within_80_products(name):
    spectrum = CLOSED_FORM[name]
    result = lanczos(rotated(spectrum), 5, maxiter=80)
    exact = np.sort(spectrum)[::-1][:5]
    assert result.converged and result.num_matvecs <= 80
    assert np.max(np.abs(result.eigenvalues - exact) / np.abs(exact)) <= 1e-8


def test_top5_digits_mlp_within_80_products(digits_problem):
    op, _, exact = digits_problem
    result = lanczos(op, 5, maxiter=80)
    expected = exact[::-1][:5]
    assert result.converged and result.num_matvecs <= 80
    assert np.max(np.abs(result.eigenvalues - expected) / np.abs(expected)) <= 1e-8


@pytest.mark.parametrize("which", ["smallest", "both_ends", "largest_magnitude"])
def test_other_ends_digits_mlp(digits_problem, which):
    """Negative curvature: the smallest end of a trained network's spectrum is tiny and clustered,
    so it needs more steps; the answer must still match the dense eigendecomposition."""
    _, matrix, exact = digits_problem
    op = MatrixOperator(matrix)
    result = lanczos(op, 4, which=which, maxiter=600)
    expected = exact[select(exact, 4, which)]
    assert result.converged
    assert np.allclose(result.eigenvalues, expected, rtol=1e-6, atol=1e-8 * np.abs(exact).max())


def test_no_ghost_eigenvalues_float32_model_200_steps(digits_problem):
    """Without full reorthogonalisation, float32 Lanczos repeats converged eigenvalues (Ghorbani et
    al. 2019, appendix). With it, 200 steps on the float32 model give each converged Ritz value at
    most as many copies as the exact spectrum has eigenvalues there."""
    _, _, exact = digits_problem
    op32 = digits_mlp_operator(dtype=torch.float32)
    result = lanczos(op32, 200, maxiter=200, tol=0.0)
    assert result.iterations == 200
    scale = np.abs(exact).max()
    converged = result.eigenvalues[result.residuals <= 1e-3 * scale]
    assert len(converged) >= 20  # the test means something only if many Ritz values converged
    width = 1e-4 * scale  # float32 model: H itself differs from the float64 one by ~1e-6 relative
    for value in converged:
        copies = np.sum(np.abs(converged - value) <= width)
        present = np.sum(np.abs(exact - value) <= 2 * width)
        assert copies <= present, (value, copies, present)
    # and the top ones are the float64 model's eigenvalues to float32 accuracy
    assert np.allclose(result.eigenvalues[:10], exact[::-1][:10], rtol=1e-4)
