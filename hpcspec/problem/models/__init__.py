"""Model zoo and user models: a zoo name or ``module:callable`` returning an ``nn.Module``.

Zoo models are sized from the data: ``input_shape`` is one sample's shape and ``output_dim``
the number of classes (or the vocabulary for token data, the target width for MSE).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...errors import InputError
from ..callables import call_user, is_callable_spec, resolve_callable
from .cnn import CNN
from .mlp import MLP
from .resnet import RESNET_DEPTHS, ResNet
from .transformer import TransformerLM

if TYPE_CHECKING:
    from ...config import ModelConfig

BUILTIN_MODELS = ("mlp", "cnn", *RESNET_DEPTHS, "transformer")


def build_model(spec: str, *, input_shape: tuple[int, ...], output_dim: int, cfg_model: "ModelConfig",
                seed: int = 0) -> nn.Module:
    """A zoo model sized for the data (one sample of ``input_shape`` → ``output_dim``), or the user's model.

    ``cfg_model`` supplies the zoo's knobs (``hidden``/``activation`` for ``mlp``; ``width``,
    ``batchnorm``, ``residual`` for ``cnn``/ResNets; ``embed``, ``layers``, ``heads`` for
    ``transformer``). Zoo models are initialised from ``seed`` alone, so every rank builds the same weights.
    """
    input_shape = tuple(int(n) for n in input_shape)
    if spec in BUILTIN_MODELS:
        torch.manual_seed(seed)
        return _zoo(spec, input_shape, output_dim, cfg_model)
    if is_callable_spec(spec):
        torch.manual_seed(seed)
        model = call_user(spec, resolve_callable(spec, "model"))
        if isinstance(model, (list, tuple)) and model and all(isinstance(m, nn.Module) for m in model):
            model = nn.Sequential(*model)  # a factory returning stages: blocks applied in order
        if not isinstance(model, nn.Module):
            raise InputError(f"model {spec!r} must return a torch.nn.Module or a list of them (blocks applied in "
                             f"order), got {type(model).__name__}")
        return model
    raise InputError(f"unknown model {spec!r}: use one of {', '.join(BUILTIN_MODELS)} or module:callable")


def _zoo(spec: str, input_shape: tuple[int, ...], output_dim: int, cfg: "ModelConfig") -> nn.Module:
    if spec == "mlp":
        return MLP(math.prod(input_shape), output_dim, cfg.hidden, cfg.activation)
    if spec == "transformer":
        if len(input_shape) != 1:
            raise InputError(f"model 'transformer' needs token sequences (samples, length) of integers, got "
                             f"samples of shape {input_shape}")
        if cfg.embed % cfg.heads:
            raise InputError(f"model.embed = {cfg.embed} is not divisible by model.heads = {cfg.heads}")
        return TransformerLM(output_dim, input_shape[0], embed=cfg.embed, layers=cfg.layers, heads=cfg.heads)
    if len(input_shape) != 3:
        raise InputError(f"model {spec!r} needs images (samples, channels, height, width), got samples of "
                         f"shape {input_shape}")
    channels, height, width = input_shape
    if spec == "cnn":
        if height < 4 or width < 4:
            raise InputError(f"model 'cnn' needs images of at least 4×4 pixels, got {height}×{width}")
        return CNN(channels, height, width, output_dim, width=cfg.width)
    return ResNet(RESNET_DEPTHS[spec], in_channels=channels, num_classes=output_dim, width=cfg.width,
                  batchnorm=cfg.batchnorm, residual=cfg.residual)


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state dict saved with ``torch.save`` (read with ``weights_only=True``: no code runs)."""
    if not Path(path).is_file():
        raise InputError(f"weights file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise InputError(f"weights file {path!r} cannot be loaded safely ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"weights file {path!r} holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise InputError(f"weights file {path!r} does not match the model: {detail}") from None
