"""Model zoo and user models: ``mlp`` or ``module:callable`` returning an ``nn.Module``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import InputError
from ..spec import is_callable_spec, resolve_callable
from .mlp import MLP

BUILTIN_MODELS = ("mlp",)


def build_model(spec: str, *, input_dim: int, output_dim: int, hidden: Sequence[int] = (32, 32),
                activation: str = "tanh", seed: int = 0) -> nn.Module:
    """A zoo model sized for the data (``input_dim`` → ``output_dim``), or the user's model.

    Zoo models are initialised from ``seed`` alone, so every rank builds the same weights.
    """
    if spec == "mlp":
        torch.manual_seed(seed)
        return MLP(input_dim, output_dim, hidden, activation)
    if is_callable_spec(spec):
        torch.manual_seed(seed)
        model = resolve_callable(spec, "model")()
        if not isinstance(model, nn.Module):
            raise InputError(f"model {spec!r} must return a torch.nn.Module, got {type(model).__name__}")
        return model
    raise InputError(f"unknown model {spec!r}: use one of {', '.join(BUILTIN_MODELS)} or module:callable")


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
