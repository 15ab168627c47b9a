"""The Hessian operator against a dense float64 Hessian of the whole data set."""

import pytest
import torch
from torch import nn

from helpers import classification_data, dense_hessian, mlp, regression_data
from hpcspec import HessianOperator, InputError
from hpcspec.curvature.operator import HVP_METHODS


def _problem(kind: str):
    if kind == "mlp-cross_entropy":
        return mlp(sizes=(5, 7, 3)), "cross_entropy", classification_data()
    torch.manual_seed(3)
    return nn.Linear(6, 2).double(), "mse", regression_data()


@pytest.mark.parametrize("kind", ["mlp-cross_entropy", "linear-mse"])
@pytest.mark.parametrize("method", HVP_METHODS)
@pytest.mark.parametrize("batch_size", [8, 1000])
def test_hvp_equals_dense_hessian_times_v(kind, method, batch_size):
    model, loss, (x, y) = _problem(kind)
    dense = dense_hessian(model, loss, x, y)
    op = HessianOperator(model, loss, (x, y), batch_size=batch_size, method=method)
    vectors = torch.randn(op.size, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = dense @ vectors
    block = op.apply(vectors)
    assert torch.linalg.matrix_norm(block - expected) <= 1e-10 * torch.linalg.matrix_norm(expected)
    single = op.apply(vectors[:, 1])
    assert single.shape == (op.size,)
    assert torch.allclose(single, block[:, 1], rtol=1e-13, atol=0)


@pytest.mark.parametrize("method", HVP_METHODS)
def test_symmetric_and_bitwise_repeatable(method):
    model, loss, (x, y) = _problem("mlp-cross_entropy")
    op = HessianOperator(model, loss, (x, y), batch_size=10, method=method)
    gen = torch.Generator().manual_seed(5)
    u, v = (torch.randn(op.size, dtype=torch.float64, generator=gen) for _ in range(2))
    hv = op.apply(v)
    assert abs(u @ hv - v @ op.apply(u)) <= 1e-12 * u.norm() * hv.norm()
    assert torch.equal(hv, op.apply(v))


def test_float32_model_is_accumulated_in_float64():
    model, loss, (x, y) = _problem("mlp-cross_entropy")
    dense = dense_hessian(model, loss, x, y)
    op = HessianOperator(model.float(), loss, (x, y), batch_size=10)
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    hv = op.apply(v)
    assert hv.dtype == torch.float64
    assert (hv - dense @ v).norm() <= 1e-5 * (dense @ v).norm()


def test_frozen_parameter_is_excluded_and_unused_one_is_zero():
    model, loss, (x, y) = _problem("mlp-cross_entropy")
    model[0].bias.requires_grad_(False)
    model.register_parameter("unused", nn.Parameter(torch.ones(4, dtype=torch.float64)))
    op = HessianOperator(model, loss, (x, y))
    assert op.layout.excluded == ("0.bias",)
    assert "unused" in op.layout.names
    hv = op.apply(torch.ones(op.size, dtype=torch.float64))
    begin = op.layout.offsets[op.layout.names.index("unused")]
    assert torch.count_nonzero(hv[begin:begin + 4]) == 0


def test_gradient_and_loss_match_autograd():
    model, loss, (x, y) = _problem("linear-mse")
    op = HessianOperator(model, loss, (x, y), batch_size=7)
    value, gradient = op.loss_and_gradient()
    reference = nn.functional.mse_loss(model(x), y)
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(reference, list(model.parameters()))])
    assert value == pytest.approx(reference.item(), rel=1e-13)
    assert torch.allclose(gradient, expected, rtol=1e-12, atol=1e-15)


def test_bad_method_and_targets_are_input_errors():
    model, loss, (x, y) = _problem("mlp-cross_entropy")
    with pytest.raises(InputError, match="unknown HVP method"):
        HessianOperator(model, loss, (x, y), method="finite_differences")
    op = HessianOperator(model, "cross_entropy", (x, y.double()))
    with pytest.raises(InputError, match="integer class labels"):
        op.check_data()
    op = HessianOperator(model, "mse", (x, y))
    with pytest.raises(InputError, match="3 target values per sample"):
        op.check_data()


class _SquareWithoutForwardMode(torch.autograd.Function):
    """Twice differentiable by reverse mode, but unusable under torch.func (no setup_context)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class _SquareNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 3).double()

    def forward(self, x):
        return _SquareWithoutForwardMode.apply(self.linear(x))


def test_auto_times_both_methods_and_skips_one_that_fails():
    model, loss, (x, y) = _problem("mlp-cross_entropy")
    assert HessianOperator(model, loss, (x, y), method="auto").method in HVP_METHODS
    torch.manual_seed(0)
    op = HessianOperator(_SquareNet(), "cross_entropy", (x, y), method="auto")
    assert op.method == "double_backward"
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    assert torch.isfinite(op.apply(v)).all()


def _bn_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()


@pytest.mark.parametrize("make, bn_mode", [(mlp, "eval"), (_bn_net, "eval"), (_bn_net, "train")])
def test_kept_graphs_give_the_same_bits_as_recomputing(make, bn_mode):
    x, y = classification_data(n=45)
    kept = HessianOperator(make(), "cross_entropy", (x, y), batch_size=16, method="double_backward",
                           bn_mode=bn_mode, graph_budget_mb=64)
    model = make()
    fresh = HessianOperator(model, "cross_entropy", (x, y), batch_size=16, method="double_backward", bn_mode=bn_mode)
    gen = torch.Generator().manual_seed(0)
    for vectors in (torch.randn(kept.size, generator=gen, dtype=torch.float64),
                    torch.randn(kept.size, 3, generator=gen, dtype=torch.float64)):
        for _ in range(2):  # the first product builds the graphs, the second reuses them
            assert torch.equal(kept.apply(vectors), fresh.apply(vectors))
    assert kept.graph_bytes and 0 < kept.graph_bytes <= 64 * 2**20


def test_kept_graphs_follow_the_weights_and_respect_the_budget():
    x, y = classification_data(n=45)
    model = mlp()
    kept = HessianOperator(model, "cross_entropy", (x, y), batch_size=16, method="double_backward", graph_budget_mb=64)
    tiny = HessianOperator(model, "cross_entropy", (x, y), batch_size=16, method="double_backward",
                           graph_budget_mb=1e-4)  # 105 bytes: never fits
    v = torch.randn(kept.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    before = kept.apply(v)
    with torch.no_grad():
        next(model.parameters())[0, 0] += 0.5  # as training would
    after = kept.apply(v)
    exact = dense_hessian(model, "cross_entropy", x, y) @ v
    assert not torch.equal(before, after)
    assert torch.allclose(after, exact, rtol=1e-10, atol=1e-12)
    assert torch.equal(tiny.apply(v), after) and tiny.graph_bytes is None
    with pytest.raises(InputError, match="graph_budget_mb must be >= 0"):
        HessianOperator(model, "cross_entropy", (x, y), graph_budget_mb=-1)
