"""Hugging Face and torchvision models for the tests, built locally with random weights (nothing is
downloaded), and their data; also importable as ``module:callable`` by the CLI
(``--model zoo_models:make_gpt2 --data zoo_models:make_lm_data``), with ``tests/support`` on the path.

The exact Hessians the tests compare with are computed here too, independently of hpcspec's
batches, losses and reductions: the model's own mean loss over the whole data set in one forward
(for the language models the next-token cross-entropy that ``GPT2LMHeadModel(input_ids=x,
labels=x).loss`` computes, in float64), differentiated twice by plain autograd, one column per
parameter.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable

import torch
from torch import nn

#: Vocabulary and sequence length of the language-model data (every sequence has CONTEXT + 1 tokens).
VOCAB, CONTEXT = 48, 8
#: The parameters the tests select (``model.params`` globs): small enough for a dense Hessian.
GPT2_PARAMS = "transformer.h.1.mlp.c_proj.*,transformer.ln_f.*"
LLAMA_PARAMS = "model.layers.1.mlp.down_proj.*,model.norm.*"
RESNET_PARAMS = "layer4.1.bn2.*,fc.bias"


def import_or_skip(module: str, *names: str) -> list[Any]:
    """``module``'s attributes ``names``; the calling test is skipped, with the reason, when the
    package is absent (``pytest.importorskip``) or installed but not importable — PyPI's
    torchvision wheels are built against a CUDA torch and fail to import beside a CPU-only one, and
    transformers then fails to import its models too."""
    import pytest

    top = module.split(".")[0]
    if importlib.util.find_spec(top) is None:  # absent: importorskip skips (it does not catch a broken import)
        pytest.importorskip(top, reason=f"the optional package {top} is not installed (pip install 'hpcspec[models]')")
    try:
        found = importlib.import_module(module)
        return [getattr(found, name) for name in names]
    except Exception as exc:  # a broken install raises RuntimeError, ModuleNotFoundError, OSError...
        first = str(exc).splitlines()[0] if str(exc) else ""
        cause = exc.__cause__ or exc.__context__
        detail = f"; cause: {type(cause).__name__}: {str(cause).splitlines()[0]}" if cause and str(cause) else ""
        pytest.skip(f"{module} is installed but does not import with torch {torch.__version__} "
                    f"({type(exc).__name__}: {first}{detail})")


def _transformers(*names: str) -> list[Any]:
    module = importlib.import_module("transformers")
    return [getattr(module, name) for name in names]


def make_gpt2() -> nn.Module:
    """A 2-layer GPT-2 (2 heads, width 16, vocabulary 48, 16 positions; 10,512 parameters), seed 0,
    float64, eager attention, default dropout 0.1 (off in eval mode); input and output embeddings tied."""
    GPT2Config, GPT2LMHeadModel = _transformers("GPT2Config", "GPT2LMHeadModel")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=16, bos_token_id=0,
                        eos_token_id=0, attn_implementation="eager")
    return GPT2LMHeadModel(config).double()


def make_llama() -> nn.Module:
    """A 2-layer Llama (2 query heads, 1 key-value head, width 16, vocabulary 48), seed 0, float64."""
    LlamaConfig, LlamaForCausalLM = _transformers("LlamaConfig", "LlamaForCausalLM")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16, bos_token_id=0,
                         eos_token_id=0, pad_token_id=None, attn_implementation="eager")
    return LlamaForCausalLM(config).double()


def make_resnet18() -> nn.Module:
    """torchvision's ``resnet18(num_classes=10)`` with its random initialisation (seed 0), float64,
    BatchNorm running statistics perturbed so that eval mode is not the identity."""
    resnet18 = importlib.import_module("torchvision.models").resnet18
    torch.manual_seed(0)
    model = resnet18(num_classes=10).double()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def token_sequences(samples: int = 10, seed: int = 3) -> torch.Tensor:
    """``samples`` seeded random sequences of ``CONTEXT + 1`` tokens in [0, VOCAB)."""
    return torch.randint(0, VOCAB, (samples, CONTEXT + 1), generator=torch.Generator().manual_seed(seed))


def make_lm_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and next tokens: inputs ``ids[:, :-1]``, targets ``ids[:, 1:]`` (10 × 8 int64 each)."""
    ids = token_sequences()
    return ids[:, :-1], ids[:, 1:]


def make_image_data() -> tuple[torch.Tensor, torch.Tensor]:
    """6 seeded float64 images 3 × 32 × 32 and labels in [0, 10)."""
    gen = torch.Generator().manual_seed(4)
    return torch.randn(6, 3, 32, 32, generator=gen, dtype=torch.float64), torch.randint(0, 10, (6,), generator=gen)


def select(model: nn.Module, patterns: str) -> nn.Module:
    """Freeze every parameter but those ``patterns`` (comma-separated globs) name."""
    from hpcspec.problem.params import select_parameters

    select_parameters(model, patterns)
    return model


def exact_hessian(model: nn.Module, mean_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The float64 Hessian of ``mean_loss()`` over the model's parameters that require gradients
    (in ``named_parameters`` order), in eval mode: one autograd backward per column."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(mean_loss(), params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    columns = []
    for i in range(flat.numel()):
        row = torch.autograd.grad(flat[i], params, retain_graph=True, allow_unused=True)
        columns.append(torch.cat([(r if r is not None else torch.zeros_like(p)).reshape(-1)
                                  for r, p in zip(row, params)]))
    return torch.stack(columns).detach()


def lm_mean_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The next-token cross-entropy of ``model`` on ``ids``, averaged over every predicted token,
    in float64: Hugging Face's ``model(input_ids=ids, labels=ids).loss`` computes the same value but
    casts the logits to float32 first (``ForCausalLMLoss``), too coarse for a 1e-10 comparison."""
    logits = model(input_ids=ids).logits
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def lm_hessian(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The Hessian of :func:`lm_mean_loss` on ``ids`` (one forward over all sequences)."""
    return exact_hessian(model, lambda: lm_mean_loss(model, ids))


def image_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hessian of ``cross_entropy(model(x), y)`` (mean over all images, one forward)."""
    return exact_hessian(model, lambda: nn.functional.cross_entropy(model(x), y))
