"""Hugging Face causal LMs (GPT-2, Llama) and torchvision's ResNet-18 through ``HessianOperator``:
products and top eigenvalues against an exact float64 Hessian on a parameter subset.

Skipped, with the reason, where transformers or torchvision is absent or does not import
(``pip install 'hpcspec[models]'``)."""

import pytest
import torch
from torch import nn

import zoo_models
from helpers import relative_error, top_eigenvalues
from hpcspec import HessianOperator, Loss, lanczos
from hpcspec.curvature.dense import dense_hessian
from hpcspec.errors import InputError
from hpcspec.problem.params import ParamLayout, select_parameters


@pytest.fixture
def transformers_ok():
    zoo_models.import_or_skip("transformers", "GPT2LMHeadModel", "LlamaForCausalLM")


def _dict_batches(ids, sizes):
    """``{"input_ids", "labels"}`` batches of the given sizes (Hugging Face's labels convention)."""
    out, start = [], 0
    for size in sizes:
        out.append({"input_ids": ids[start:start + size], "labels": ids[start:start + size]})
        start += size
    return out


def make_selected(make, params):
    return zoo_models.select(make(), params)


def _matrix_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


#: Llama's RMSNorm, rotary embedding and eager softmax compute in float32 whatever the model's dtype
#: (transformers' modeling_llama), so even its exact Hessian is float32-accurate (asymmetric by ~1e-7).
@pytest.mark.parametrize("make, params, rtol", [(zoo_models.make_gpt2, zoo_models.GPT2_PARAMS, 1e-10),
                                                (zoo_models.make_llama, zoo_models.LLAMA_PARAMS, 1e-6)],
                         ids=["gpt2", "llama"])
def test_causal_lm_dict_batches_match_exact_hessian(transformers_ok, make, params, rtol):
    model = zoo_models.select(make(), params)
    ids = zoo_models.token_sequences()
    exact = zoo_models.lm_hessian(make_selected(make, params), ids)
    model.train()  # as a training script leaves it: dropout on (GPT-2's 0.1); the operator uses eval mode
    op = HessianOperator(model, Loss.causal_lm(), _dict_batches(ids, (4, 3, 3)), method="double_backward")
    assert op.total_count == ids.shape[0] * (ids.shape[1] - 1)  # every predicted token, once
    matrix = dense_hessian(op)
    assert model.training and all(module.training for module in model.modules())
    assert _matrix_error(matrix, exact) <= rtol
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    product = op.apply(v)
    assert torch.equal(product, op.apply(v))  # deterministic: no dropout inside
    assert _matrix_error(product, exact @ v) <= rtol
    result = lanczos(op, k=3, tol=1e-12, maxiter=120)
    assert relative_error(result.eigenvalues, top_eigenvalues(exact, 3)) <= 10 * rtol


def test_causal_lm_conventions_agree_and_match_hugging_face_loss(transformers_ok):
    """Labels shifted by ``Loss.causal_lm`` and pre-shifted (tokens, next tokens) pairs with
    ``cross_entropy`` give one Hessian; the loss is Hugging Face's own (which computes in float32)."""
    ids = zoo_models.token_sequences()
    shifted = HessianOperator(make_selected(zoo_models.make_gpt2, zoo_models.GPT2_PARAMS), Loss.causal_lm(),
                              _dict_batches(ids, (5, 5)))
    pairs = HessianOperator(make_selected(zoo_models.make_gpt2, zoo_models.GPT2_PARAMS), "cross_entropy",
                            (ids[:, :-1], ids[:, 1:]), batch_size=3)
    v = torch.randn(shifted.size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert _matrix_error(shifted.apply(v), pairs.apply(v)) <= 1e-12
    model = zoo_models.make_gpt2().eval()
    with torch.no_grad():
        hf = float(model(input_ids=ids, labels=ids).loss)
    assert abs(shifted.mean_loss() - hf) <= 1e-6 * hf
    assert abs(shifted.mean_loss() - pairs.mean_loss()) <= 1e-13 * hf


def test_causal_lm_ignored_labels_and_criterion():
    """-100 labels are not predicted and not counted; a mean criterion is weighted by its tokens."""
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, dtype=torch.float64)
    labels = torch.randint(0, 7, (3, 5))
    labels[0, 3:] = -100
    labels[2, :] = -100
    loss = Loss.causal_lm(nn.CrossEntropyLoss(label_smoothing=0.1))
    keep = labels[:, 1:] != -100
    assert loss.count(labels) == int(keep.sum()) == 6
    expected = nn.functional.cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep], label_smoothing=0.1,
                                           reduction="sum")
    assert torch.allclose(loss.sum(logits, labels), expected, rtol=1e-14)
    assert float(loss.sum(logits[2:], labels[2:])) == 0.0  # a batch with nothing predicted adds 0, not NaN
    with pytest.raises(InputError, match="causal_lm needs integer labels of shape"):
        loss.count(labels.reshape(-1))


def test_tied_embedding_selected_by_either_name(transformers_ok):
    """GPT-2's lm_head.weight is the embedding's tensor: listed once, selectable by both names."""
    model = zoo_models.make_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert select_parameters(model, "lm_head.*") == ["transformer.wte.weight"]
    layout = ParamLayout.of(model)
    assert layout.names == ("transformer.wte.weight",) and layout.size == zoo_models.VOCAB * 16
    with pytest.raises(InputError, match="matches no parameter"):
        select_parameters(zoo_models.make_gpt2(), "lm_head.bias")


def test_torchvision_resnet18_matches_exact_hessian():
    zoo_models.import_or_skip("torchvision.models", "resnet18")
    x, y = zoo_models.make_image_data()
    exact = zoo_models.image_hessian(make_selected(zoo_models.make_resnet18, zoo_models.RESNET_PARAMS), x, y)
    model = zoo_models.select(zoo_models.make_resnet18(), zoo_models.RESNET_PARAMS)
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    op = HessianOperator(model, nn.CrossEntropyLoss(), [(x[:4], y[:4]), (x[4:], y[4:])], method="double_backward")
    assert op.size == 2 * 512 + 10
    matrix = dense_hessian(op)
    assert _matrix_error(matrix, exact) <= 1e-10
    assert all(torch.equal(buffer, before[name]) for name, buffer in model.named_buffers())  # eval BatchNorm
    result = lanczos(op, k=3, tol=1e-12, maxiter=150)
    assert relative_error(result.eigenvalues, top_eigenvalues(exact, 3)) <= 1e-9
