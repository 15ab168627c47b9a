"""The operator on batches from any iterable, any criterion and any model output, against dense
float64 Hessians of the mean loss over all the data (torch.func.hessian, no batching); the model's
modes restored; the ``auto`` method fixed by rule."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from helpers import classification_data, mlp, regression_data
from hpcspec import HessianOperator, InputError, Loss, block_lanczos, slq, trace
from hpcspec.curvature.method import rule
from hpcspec.problem.params import ParamLayout

SIZES = [5, 11, 3, 18]  # uneven batches of the 37 samples


def dense(model: nn.Module, mean_loss) -> torch.Tensor:
    """∇² of ``mean_loss(call)`` where ``call(*args, **kwargs)`` runs the model at the flat parameters."""
    layout = ParamLayout.of(model)

    def at(flat: torch.Tensor) -> torch.Tensor:
        params = dict(zip(layout.names, layout.split(flat)))
        return mean_loss(lambda *args, **kwargs: functional_call(model, params, args, kwargs))

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])
    return torch.func.hessian(at)(flat)


def uneven_loader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    starts = [sum(SIZES[:i]) for i in range(len(SIZES))]
    batches = [list(range(s, s + n)) for s, n in zip(starts, SIZES)]
    return DataLoader(TensorDataset(x, y), batch_sampler=batches)


def _vectors(size: int, k: int = 3) -> torch.Tensor:
    return torch.randn(size, k, dtype=torch.float64, generator=torch.Generator().manual_seed(4))


def _close(op: HessianOperator, expected: torch.Tensor, rtol: float = 1e-10) -> None:
    vectors = _vectors(op.size)
    product = op.apply(vectors)
    wanted = expected @ vectors
    assert torch.linalg.matrix_norm(product - wanted) <= rtol * torch.linalg.matrix_norm(wanted)


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse"])
def test_dataloader_with_uneven_batches_and_label_smoothing(method):
    x, y = classification_data()
    model = mlp()
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    op = HessianOperator(model, criterion, uneven_loader(x, y), method=method)
    assert op.batch_sizes == SIZES and op.total_count == 37
    _close(op, dense(model, lambda call: criterion(call(x), y)))
    loss, _ = op.loss_and_gradient()
    assert abs(loss - float(criterion(model(x), y).detach())) <= 1e-13


def test_list_of_pairs_with_a_sum_criterion_and_mse():
    x, y = regression_data()
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    pairs = [(x[:10], y[:10]), (x[10:13], y[10:13]), (x[13:], y[13:])]

    def squared(output, target):  # a user function summing over the batch
        return ((output - target) ** 2).sum()

    op = HessianOperator(model, Loss.of(squared, reduction="sum"), pairs)
    _close(op, dense(model, lambda call: squared(call(x), y) / len(x)))  # per-sample sum, mean over samples
    mse = HessianOperator(model, nn.MSELoss(), pairs)  # reduction="mean": mean over every element
    _close(mse, dense(model, lambda call: F.mse_loss(call(x), y)))


class _KeywordNet(nn.Module):
    """A model called with keyword arguments that returns a dict (as Hugging Face models do)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.body = nn.Linear(5, 3).double()

    def forward(self, features: torch.Tensor, scale: torch.Tensor) -> dict:
        return {"logits": torch.tanh(self.body(features)) * scale[:, None], "hidden": features}


def test_dict_batches_pass_keywords_and_take_the_logits():
    x, y = classification_data()
    scale = torch.linspace(0.5, 2.0, len(x), dtype=torch.float64)
    model = _KeywordNet()
    batches = [{"features": x[i:i + 9], "scale": scale[i:i + 9], "labels": y[i:i + 9]} for i in range(0, 37, 9)]
    op = HessianOperator(model, "cross_entropy", batches)
    op.check_data()
    _close(op, dense(model, lambda call: F.cross_entropy(call(features=x, scale=scale)["logits"], y)))
    renamed = [{"features": b["features"], "scale": b["scale"], "target": b["labels"]} for b in batches]
    other = HessianOperator(model, "cross_entropy", renamed, target_key="target")
    assert torch.equal(other.apply(_vectors(op.size)), op.apply(_vectors(op.size)))
    with pytest.raises(InputError, match="'labels'"):
        HessianOperator(model, "cross_entropy", renamed)


@dataclass
class _Output:  # what a Hugging Face ModelOutput offers: .logits
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class _Wrapped(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.net = kind, mlp()

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        return _Output(out) if self.kind == "object" else (out, x.sum())


@pytest.mark.parametrize("kind", ["object", "tuple"])
def test_model_outputs_other_than_a_tensor(kind):
    x, y = classification_data()
    model = _Wrapped(kind)
    expected = dense(model.net, lambda call: F.cross_entropy(call(x), y))
    _close(HessianOperator(model, "cross_entropy", (x, y), batch_size=8), expected)
    doubled = HessianOperator(model, "cross_entropy", (x, y), output_fn=lambda out: 2 * (out.logits if kind == "object"
                                                                                            else out[0]))
    _close(doubled, dense(model.net, lambda call: F.cross_entropy(2 * call(x), y)))


def test_token_weights_give_the_mean_over_unmasked_tokens():
    gen = torch.Generator().manual_seed(6)
    tokens = torch.randint(0, 4, (9, 5), generator=gen)
    targets = torch.randint(0, 4, (9, 5), generator=gen)
    targets[torch.rand(9, 5, generator=gen) < 0.3] = -100  # ignored positions, unevenly per batch
    torch.manual_seed(7)
    model = nn.Sequential(nn.Embedding(4, 3), nn.Tanh(), nn.Linear(3, 4)).double()
    criterion = nn.CrossEntropyLoss(label_smoothing=0.05)  # its mean is over the unmasked tokens

    def per_token(output, target):
        return criterion(output.reshape(-1, 4), target.reshape(-1))

    batches = [(tokens[:2], targets[:2]), (tokens[2:7], targets[2:7]), (tokens[7:], targets[7:])]
    loss = Loss.of(per_token, weight=lambda t: int((t != -100).sum()))
    op = HessianOperator(model, loss, batches)
    assert op.total_count == int((targets != -100).sum())
    _close(op, dense(model, lambda call: per_token(call(tokens), targets)))
    named = Loss.of(criterion, weight="tokens")  # the criterion's ignore_index
    assert named.count(targets) == op.total_count


class _Scores(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def forward(self, x: torch.Tensor) -> dict:
        return {"scores": self.net(x)}


def test_bad_data_and_criteria_are_one_line_input_errors():
    x, y = classification_data()
    with pytest.raises(InputError, match="one-pass iterator"):
        HessianOperator(mlp(), "cross_entropy", ((x[i:i + 5], y[i:i + 5]) for i in range(0, 37, 5)))
    with pytest.raises(InputError, match="reduction 'none'"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(reduction="none"), (x, y))
    with pytest.raises(InputError, match="unknown loss weight"):
        Loss.of(nn.CrossEntropyLoss(), weight="pixels")
    with pytest.raises(InputError, match="batch must be"):
        HessianOperator(mlp(), "cross_entropy", [(x, y, y)])
    with pytest.raises(InputError, match="must be a tensor, got list"):
        HessianOperator(mlp(), "cross_entropy", (x, y), output_fn=lambda out: out.tolist()).check_data()
    with pytest.raises(InputError, match=r"dict with 'logits'.*got dict with keys \['scores'\]"):
        HessianOperator(_Scores(), "cross_entropy", (x, y)).check_data()


def test_every_product_and_analysis_restores_modes_and_requires_grad():
    x, y = classification_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Dropout(0.3), nn.Tanh(), nn.Linear(7, 3)).double()
    model.train()
    op = HessianOperator(model, "cross_entropy", uneven_loader(x, y))
    model[0].bias.requires_grad_(False)  # a training script freezing a layer after the operator was built
    before = [(m.training) for m in model.modules()], [p.requires_grad for p in model.parameters()]
    v = _vectors(op.size)
    first = op.apply(v)
    assert torch.equal(op.apply(v), first)  # dropout off and running statistics inside: repeatable
    op.loss_and_gradient(), op.mean_loss(), op.check_data()
    block_lanczos(op, k=2), trace(op, matvecs=8), slq(op, probes=1, steps=4)
    after = [(m.training) for m in model.modules()], [p.requires_grad for p in model.parameters()]
    assert after == before and model.training and not model[0].bias.requires_grad
    model.eval()
    op.apply(v)
    assert not any(m.training for m in model.modules())  # eval mode is left as found too


class _Conv(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv, self.out = nn.Conv1d(1, 2, 3).to(dtype), nn.Linear(6, 3).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.conv(x[:, None, :])).flatten(1))


def test_auto_is_a_rule_the_same_on_every_construction():
    x, y = classification_data()
    assert {HessianOperator(mlp(), "cross_entropy", (x, y)).method for _ in range(5)} == {"double_backward"}
    assert rule(_Conv(torch.float32), torch.float32)[0] == "double_backward"
    picks = [HessianOperator(_Conv(torch.float64), "cross_entropy", (x, y)) for _ in range(3)]
    assert {(op.method, op.trial_products) for op in picks} == {("forward_over_reverse", 1)}
    assert "convolutions" in picks[0].method_reason
    named = HessianOperator(_Conv(torch.float64), "cross_entropy", (x, y), method="double_backward")
    assert (named.method, named.trial_products, named.method_reason) == ("double_backward", 0, "named")
    _close(picks[0], dense(picks[0].model, lambda call: F.cross_entropy(call(x), y)))
