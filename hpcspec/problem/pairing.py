"""Whether a model, a loss and a data set go together: one forward on a sample or two, the output
checked against the loss's targets. Local (no collective), so a failure can be agreed on; shared by
the Hessian operator (:meth:`hpcspec.curvature.operator.HessianOperator.check_data`) and ``train``.

Also what of a model's output the loss sees (:func:`logits_of`): a tensor as it is, the ``logits``
of a Hugging Face ``ModelOutput`` or of a dict, the first element of a tuple.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn

from ..errors import InputError
from .batches import Inputs, call_model, describe
from .losses import Loss, check_targets


def logits_of(output: Any) -> torch.Tensor:
    """The tensor the criterion takes from a model's ``output``: the output itself if it is a
    tensor; else its ``logits`` (a ``ModelOutput`` or any object with that attribute, or a dict's
    ``"logits"``); else the first element of a tuple or list. :class:`InputError` otherwise."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        found = output.get("logits")
    elif isinstance(output, (tuple, list)):
        found = output[0] if len(output) else None
    else:
        found = getattr(output, "logits", None)
    if not isinstance(found, torch.Tensor):
        keys = f" with keys {sorted(map(str, output))}" if isinstance(output, Mapping) else ""
        raise InputError(f"the model must return a tensor, a ModelOutput or dict with 'logits', or a tuple whose first "
                         f"element is a tensor; got {type(output).__name__}{keys}: pass output_fn to pick the tensor")
    return found


def check_pairing(model: nn.Module, loss: Loss, inputs: Inputs, targets: torch.Tensor,
                  output_fn: Callable[[Any], torch.Tensor] = logits_of) -> None:
    """Raise :class:`InputError` if ``model`` cannot take ``inputs`` (a few samples, on its device
    and in its dtype), ``output_fn`` finds no tensor in its output, or ``loss`` cannot use
    ``targets`` with it. The forward runs without gradients, in whatever mode the caller put the model."""
    try:
        with torch.no_grad():
            outputs = output_fn(call_model(model, inputs))
    except InputError:
        raise
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InputError(f"the model cannot process a data sample of shape {describe(inputs)} "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(outputs, torch.Tensor):
        raise InputError(f"the model's output (through output_fn) must be a tensor, got {type(outputs).__name__}")
    width = outputs.shape[-1] if outputs.ndim > 1 else 1
    check_targets(loss, targets, width, tuple(outputs.shape))
