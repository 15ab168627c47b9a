"""Whether a model, a loss and a data set go together: one forward on a sample or two, the output
checked against the loss's targets. Local (no collective), so a failure can be agreed on; shared by
the Hessian operator (:meth:`hpcspec.hessian.operator.HessianOperator.check_data`) and ``train``."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .losses import Loss, check_targets


def check_pairing(model: nn.Module, loss: Loss, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise :class:`InputError` if ``model`` cannot take ``inputs`` (a few samples, on its device
    and in its dtype), returns no tensor, or ``loss`` cannot use ``targets`` with its output. The
    forward runs without gradients, in whatever mode the caller put the model."""
    try:
        with torch.no_grad():
            outputs = model(inputs)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InputError(f"the model cannot process a data sample of shape {tuple(inputs.shape[1:])} "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(outputs, torch.Tensor):
        raise InputError(f"the model must return a tensor, got {type(outputs).__name__}")
    width = outputs.shape[-1] if outputs.ndim > 1 else 1
    check_targets(loss, targets, width, tuple(outputs.shape))
