"""Operator sanity checks, module-mode checks, and BatchNorm's bn_mode."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import classification_data, dense_hessian, mlp
from torch import nn

from hpcspec import HessianOperator, InputError, MatrixOperator
from hpcspec.curvature.operator import HVP_METHODS
from hpcspec.curvature.preflight import (
    CHECK_MATVECS,
    SYMMETRY_TOL,
    check_model_modes,
    check_operator,
    check_operator_modes,
    nondeterministic_modules,
    symmetry_error,
)


def _random_vectors(size: int, k: int, seed: int = 7) -> torch.Tensor:
    return torch.randn(size, k, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# --- check_operator ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
@pytest.mark.parametrize("method", HVP_METHODS)
def test_deterministic_mlp_passes_with_tiny_symmetry_error(dtype, bound, method):
    x, y = classification_data()
    op = HessianOperator(mlp().to(dtype), "cross_entropy", (x, y), batch_size=10, method=method)
    calls = op.num_matvecs
    check = check_operator(op)
    assert check.repeatable and check.num_matvecs == CHECK_MATVECS == op.num_matvecs - calls
    assert 0 <= check.symmetry_error <= bound < SYMMETRY_TOL[dtype]


def test_symmetry_error_is_scale_free():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(30, 30, dtype=torch.float64, generator=gen)
    u, v = (torch.randn(30, dtype=torch.float64, generator=gen) for _ in range(2))
    base = symmetry_error(u, v, a @ u, a @ v)
    assert base > 1e-2  # a random matrix is far from symmetric
    assert symmetry_error(3 * u, 0.5 * v, 1e4 * a @ (3 * u), 1e4 * a @ (0.5 * v)) == pytest.approx(base, rel=1e-12)
    assert symmetry_error(u, v, torch.zeros(30, dtype=torch.float64), torch.zeros(30, dtype=torch.float64)) == 0.0


class _Noisy(nn.Module):
    """An MLP whose forward itself draws random numbers, whatever its mode."""

    def __init__(self, kind: str):
        super().__init__()
        self.net = mlp()
        self.kind = kind

    def forward(self, x):
        h = self.net(x)
        if self.kind == "noise":
            return h + 1e-3 * torch.randn_like(h)
        return F.dropout(h, 0.1, training=True)


class _RestoringOperator:
    """Wraps an operator so that every product starts from the same global RNG state: the two
    products of the check would be equal if the check did not seed them differently."""

    def __init__(self, inner):
        self.inner, self.size, self.comm = inner, inner.size, inner.comm

    def apply(self, vectors):
        with torch.random.fork_rng():
            return self.inner.apply(vectors)


@pytest.mark.parametrize("kind", ["noise", "dropout"])
@pytest.mark.parametrize("restoring", [False, True])
def test_randomness_in_forward_is_refused_as_not_repeatable(kind, restoring):
    x, y = classification_data()
    # graph_budget_mb=0: every product reruns the forward (a kept graph would replay one draw)
    op = HessianOperator(_Noisy(kind), "cross_entropy", (x, y), batch_size=10, graph_budget_mb=0)
    assert nondeterministic_modules(op.model) == []  # invisible to the module scan...
    state = torch.get_rng_state()
    with pytest.raises(InputError, match="not repeatable") as caught:
        check_operator(_RestoringOperator(op) if restoring else op)  # ...but not to the products
    message = str(caught.value)
    assert "\n" not in message and "hessian.check = false" in message and "non-deterministic" in message
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is left alone


class _NotTwiceDifferentiable(torch.autograd.Function):
    """tanh whose backward runs under no_grad, like an extension kernel without double backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        with torch.no_grad():
            return grad * (1 - torch.tanh(x) ** 2)


class _Asymmetric(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Linear(5, 7).double(), nn.Linear(7, 3).double()

    def forward(self, x):
        return self.second(_NotTwiceDifferentiable.apply(self.first(x)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backward_that_is_not_differentiable_is_refused_as_asymmetric(dtype):
    x, y = classification_data()
    op = HessianOperator(_Asymmetric().to(dtype), "cross_entropy", (x, y), method="double_backward")
    with pytest.raises(InputError, match="not symmetric") as caught:
        check_operator(op)
    assert "\n" not in str(caught.value) and "hessian.check = false" in str(caught.value)


def test_matrix_operators_and_an_explicit_tolerance():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(40, 40, dtype=torch.float64, generator=gen)
    symmetric = a + a.T
    assert check_operator(MatrixOperator(symmetric)).symmetry_error <= 1e-14
    skew = a - a.T
    nearly = MatrixOperator(symmetric + 1e-6 * skew)  # asymmetry ~1e-6: fails float64's default
    with pytest.raises(InputError, match="not symmetric"):
        check_operator(nearly)
    assert check_operator(nearly, symmetry_tol=1e-3).symmetry_error < 1e-3
    broken = symmetric.clone()
    broken[3, 4] = float("nan")
    with pytest.raises(InputError, match="NaN or infinite"):
        check_operator(MatrixOperator(broken))


# --- module modes --------------------------------------------------------------------------------

class _OddModes(nn.Module):
    """Overrides train()/eval() so that they never reach the children (a real-world bug)."""

    def __init__(self, norm: nn.Module | None = None, p: float = 0.5):
        super().__init__()
        torch.manual_seed(0)
        self.hidden = nn.Linear(5, 7).double()
        self.norm = norm if norm is not None else nn.Identity()
        self.drop = nn.Dropout(p)
        self.out = nn.Linear(7, 3).double()

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, x):
        return self.out(self.drop(torch.tanh(self.norm(self.hidden(x)))))


def test_dropout_left_in_training_mode_is_found_and_refused():
    x, y = classification_data()
    op = HessianOperator(_OddModes(), "cross_entropy", (x, y))
    with op.modes():
        assert not op.model.training and op.model.drop.training  # eval() did not reach the dropout
        assert nondeterministic_modules(op.model) == ["drop"]
    with pytest.raises(InputError, match=r"'drop' \(Dropout in training mode\)") as caught:
        check_operator_modes(op)
    assert "eval()" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(InputError, match="not repeatable"):  # and the products agree
        check_operator(op)


def test_clean_models_and_harmless_modules_pass():
    assert nondeterministic_modules(mlp().eval()) == []
    assert nondeterministic_modules(_OddModes(p=0.0)) == []  # Dropout(p=0) draws nothing
    check_model_modes(mlp().eval(), "eval")
    root_dropout = nn.Dropout(0.1)  # the model itself is the offender
    assert nondeterministic_modules(root_dropout) == ["(root)"]
    with pytest.raises(InputError, match="unknown bn_mode"):
        nondeterministic_modules(mlp(), "population")


def test_batchnorm_modes_are_judged_against_bn_mode():
    odd = _OddModes(norm=nn.BatchNorm1d(7).double(), p=0.0)  # its BatchNorm stays in training mode
    odd.eval()
    assert nondeterministic_modules(odd, "eval") == ["norm"]
    assert nondeterministic_modules(odd, "train") == []  # batch statistics asked for
    with pytest.raises(InputError, match='hessian.bn_mode = "train"'):
        check_model_modes(odd, "eval")
    check_model_modes(odd, "train")
    untracked = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7, track_running_stats=False)).eval()
    assert nondeterministic_modules(untracked, "eval") == ["1"]  # batch statistics in every mode
    with pytest.raises(InputError, match="track_running_stats=True"):
        check_model_modes(untracked, "eval")


# --- bn_mode -------------------------------------------------------------------------------------

def _batchnorm_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, 3)).double()
    with torch.no_grad():  # running statistics unlike any batch's, so the two modes differ
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].num_batches_tracked.fill_(11)
    return model


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers()}


@pytest.mark.parametrize("method", [*HVP_METHODS, "auto"])  # auto: the timing forwards too
def test_bn_mode_train_uses_batch_statistics_and_never_updates_running_ones(method):
    x, y = classification_data()
    model = _batchnorm_model()
    before = _buffers(model)
    vectors = _random_vectors(80, 2)  # 80 parameters
    small = HessianOperator(model, "cross_entropy", (x, y), batch_size=8, method=method, bn_mode="train")
    with small.modes():
        assert small.bn_mode == "train" and model[1].training and not model[0].training and not model.training
    assert model.training and model[0].training  # the model's own (training) modes, restored
    small.check_data()
    check_operator_modes(small)
    assert check_operator(small).symmetry_error <= 1e-13
    by_8 = small.apply(vectors)
    small.loss_and_gradient()
    whole = HessianOperator(model, "cross_entropy", (x, y), batch_size=1000, method=method, bn_mode="train")
    by_all = whole.apply(vectors)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name
    assert not torch.allclose(by_8, by_all, rtol=1e-3)  # H depends on the batch size
    # One batch holding every sample: the Hessian of the loss with whole-data batch statistics,
    # checked against central differences of autograd gradients. (torch.func.hessian, used by
    # helpers.dense_hessian, is off by ~3% for train-mode BatchNorm, so it cannot serve here.)
    reference = copy.deepcopy(model).train()
    reference[1].track_running_stats = False
    expected = torch.stack([_gradient_difference(reference, x, y, vectors[:, j]) for j in range(2)], dim=1)
    assert torch.linalg.matrix_norm(by_all - expected) <= 1e-6 * torch.linalg.matrix_norm(expected)


def _gradient_difference(model: nn.Module, x, y, v: torch.Tensor, step: float = 1e-5) -> torch.Tensor:
    """``(∇L(θ + hv) − ∇L(θ − hv)) / 2h`` for the mean cross-entropy (error O(h²) ≈ 1e-8 here)."""
    params = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def gradient(point: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(point, params)
        loss = F.cross_entropy(model(x), y)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    difference = (gradient(flat + step * v) - gradient(flat - step * v)) / (2 * step)
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(flat, params)
    return difference


def test_bn_mode_eval_is_independent_of_batch_size():
    x, y = classification_data()
    model = _batchnorm_model()
    vectors = _random_vectors(80, 2)  # 80 parameters
    small = HessianOperator(model, "cross_entropy", (x, y), batch_size=8)
    with small.modes():
        assert small.bn_mode == "eval" and not model[1].training
    whole = HessianOperator(model, "cross_entropy", (x, y), batch_size=1000)
    assert model.training  # the operators leave the model's modes alone
    expected = dense_hessian(model.eval(), "cross_entropy", x, y) @ vectors
    for op in (small, whole):
        assert torch.linalg.matrix_norm(op.apply(vectors) - expected) <= 1e-10 * torch.linalg.matrix_norm(expected)
    train_mode = HessianOperator(copy.deepcopy(model), "cross_entropy", (x, y), batch_size=1000, bn_mode="train")
    assert not torch.allclose(train_mode.apply(vectors), expected, rtol=1e-3)  # the modes differ


def test_unknown_bn_mode_is_an_input_error():
    x, y = classification_data()
    with pytest.raises(InputError, match="unknown bn_mode 'batch'"):
        HessianOperator(_batchnorm_model(), "cross_entropy", (x, y), bn_mode="batch")
