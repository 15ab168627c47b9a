"""The generalised Gauss-Newton operator against its dense float64 definition Σ Jᵀ H_out J / C."""

import numpy as np
import pytest
import torch
from torch import nn

from helpers import classification_data, dense_ggn, dense_hessian, mlp, regression_data
from hpcspec import HessianOperator, lanczos
from hpcspec.curvature.ggn import GaussNewtonOperator


CASES = {"mlp-cross_entropy": lambda: (mlp(sizes=(5, 7, 3)), "cross_entropy", classification_data()),
         "mlp-mse": lambda: (mlp(sizes=(6, 5, 2)), "mse", regression_data())}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("batch_size", [8, 1000])
def test_products_equal_the_dense_ggn(case, batch_size):
    model, loss, (x, y) = CASES[case]()
    dense = dense_ggn(model, loss, x, y)
    op = GaussNewtonOperator(model, loss, (x, y), batch_size=batch_size)
    vectors = torch.randn(op.size, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = dense @ vectors
    assert torch.linalg.matrix_norm(op.apply(vectors) - expected) <= 1e-10 * torch.linalg.matrix_norm(expected)
    assert torch.allclose(op.apply(vectors[:, 0]), op.apply(vectors)[:, 0], rtol=1e-13, atol=1e-16)


def test_positive_semidefinite_with_the_dense_top_eigenvalues():
    model, loss, (x, y) = CASES["mlp-cross_entropy"]()
    dense = dense_ggn(model, loss, x, y)
    values = np.linalg.eigvalsh(dense.numpy())
    assert values.min() >= -1e-12 * values.max()
    op = GaussNewtonOperator(model, loss, (x, y), batch_size=10)
    found = lanczos(op, 3, tol=1e-10)
    assert np.allclose(found.eigenvalues, values[::-1][:3], rtol=1e-8)


def test_a_linear_model_under_mse_has_ggn_equal_to_the_hessian():
    torch.manual_seed(3)
    model = nn.Linear(6, 2).double()
    x, y = regression_data()
    ggn = GaussNewtonOperator(model, "mse", (x, y), batch_size=16)
    hessian = HessianOperator(model, "mse", (x, y), batch_size=16)
    vectors = torch.randn(ggn.size, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(ggn.apply(vectors), hessian.apply(vectors), rtol=1e-12, atol=1e-14)
    assert torch.allclose(ggn.apply(vectors), dense_hessian(model, "mse", x, y) @ vectors, rtol=1e-10, atol=1e-13)



def test_a_small_cnn_with_batchnorm_in_eval_equals_the_dense_ggn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3)).double()
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(20, 1, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    model.eval()  # the dense form with the running statistics, as the operator's products take them
    dense = dense_ggn(model, "cross_entropy", x, y)
    model.train()  # the operator switches to eval inside and back after
    op = GaussNewtonOperator(model, "cross_entropy", (x, y), batch_size=6)
    vectors = torch.randn(op.size, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    expected = dense @ vectors
    assert torch.linalg.matrix_norm(op.apply(vectors) - expected) <= 1e-10 * torch.linalg.matrix_norm(expected)
    assert model.training
