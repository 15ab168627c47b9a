"""Eval-mode BatchNorm as its affine map in the products: the same Hessian, dense-checked."""

import pytest
import torch
from torch import nn

from helpers import dense_hessian
from hpcspec import HessianOperator
from hpcspec.curvature.affine import affine_forward, affine_norms
from hpcspec.curvature.operator import HVP_METHODS


def _conv_bn_net() -> nn.Module:
    """Conv → BatchNorm2d (random running statistics) → ReLU → pool → Linear, float64, eval mode."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.BatchNorm1d(12), nn.Linear(12, 3)).double()
    with torch.no_grad():
        for norm in (model[1], model[5]):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.normal_()
            norm.bias.normal_()
    return model.eval()


def _data(n: int = 21):
    gen = torch.Generator().manual_seed(2)
    return torch.randn(n, 2, 5, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def test_affine_forward_is_batchnorm_in_eval_mode_and_is_removed_after():
    model = _conv_bn_net()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    assert torch.allclose(affine_forward(model[1], x), model[1](x), rtol=1e-13, atol=1e-13)
    with affine_norms(model):
        assert "forward" in vars(model[1]) and "forward" in vars(model[5])
    assert "forward" not in vars(model[1]) and "forward" not in vars(model[5])
    model[1].train()  # batch statistics: left to torch
    with affine_norms(model):
        assert "forward" not in vars(model[1]) and "forward" in vars(model[5])
    with affine_norms(model, enabled=False):
        assert "forward" not in vars(model[5])


@pytest.mark.parametrize("method", HVP_METHODS)
@pytest.mark.parametrize("budget", [0, 64])
def test_products_equal_the_dense_hessian_of_torch_batchnorm(method, budget):
    model = _conv_bn_net()
    x, y = _data()
    dense = dense_hessian(model, "cross_entropy", x, y)  # torch's own BatchNorm, whole data at once
    op = HessianOperator(model, "cross_entropy", (x, y), batch_size=8, method=method, graph_budget_mb=budget)
    assert op.affine_norms
    vectors = torch.randn(op.size, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = dense @ vectors
    for _ in range(2):  # with a budget: the first product builds the graphs, the second reuses them
        block = op.apply(vectors)
        assert torch.linalg.matrix_norm(block - expected) <= 1e-11 * torch.linalg.matrix_norm(expected)
    assert torch.equal(op.apply(vectors), block)  # bitwise repeatable
    op.affine_norms = False  # torch's BatchNorm in the graphs: the same H to rounding, new graphs
    native = op.apply(vectors)
    assert not torch.equal(native, block)
    assert torch.linalg.matrix_norm(native - block) <= 1e-12 * torch.linalg.matrix_norm(expected)


def test_kept_graphs_with_affine_norms_give_the_bits_of_recomputing():
    x, y = _data()
    kept = HessianOperator(_conv_bn_net(), "cross_entropy", (x, y), batch_size=8, method="double_backward",
                           graph_budget_mb=64)
    fresh = HessianOperator(_conv_bn_net(), "cross_entropy", (x, y), batch_size=8, method="double_backward",
                            graph_budget_mb=0)
    v = torch.randn(kept.size, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(kept.apply(v), fresh.apply(v)) and torch.equal(kept.apply(v), fresh.apply(v))
