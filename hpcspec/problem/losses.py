"""Losses as *sums* over a batch plus the count their mean divides by.

The Hessian hpcspec computes is that of ``criterion(model(X), Y)`` with ``reduction="mean"`` over
the whole data set at once. Summing per batch and dividing once by the global count makes that
exact whatever the batch size, the uneven last batch, or the number of ranks (averaging per-batch
means with equal weights is a bug several tools shipped; docs/accuracy.md).

Any criterion ``criterion(output, target)`` becomes a :class:`Loss` through :meth:`Loss.of`: a
``reduction="sum"`` criterion is the batch's sum as it is; a ``reduction="mean"`` one is multiplied
by the batch's *weight* (what its mean divided by) to give the sum. The weight, and the count the
total is divided by, are ``samples`` (targets' first dimension, the default), ``tokens`` (target
elements other than the criterion's ``ignore_index``, -100 when it has none: a language model's
mean over its unmasked tokens) or a function ``weight(targets) -> int``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..choices import LOSS_WEIGHTS
from ..errors import InputError


@dataclass(frozen=True)
class Loss:
    """``sum(outputs, targets)`` is the summed loss; ``count(targets)`` what its mean divides by.

    The named losses (``cross_entropy``, ``mse``: :func:`get_loss`) are shortcuts; any criterion
    becomes one through :meth:`of`.
    """

    name: str
    sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    count: Callable[[torch.Tensor], int]

    @classmethod
    def of(cls, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, reduction: str | None = None,
           weight: str | Callable[[torch.Tensor], int] = "samples") -> "Loss":
        """The loss of ``criterion(output, target)``: a ``torch.nn`` loss (``nn.CrossEntropyLoss(
        label_smoothing=0.1)``, ``nn.MSELoss()``) or a function returning a scalar.

        ``reduction``: ``"mean"`` or ``"sum"``, what the criterion does over a batch; by default its
        ``reduction`` attribute, ``"mean"`` for a function without one (as PyHessian assumes).
        ``weight``: see the module docstring; the Hessian is that of
        ``Σ_batches weight_b · criterion_b / Σ_batches weight_b`` over all batches of all ranks
        (``sum``: ``Σ criterion_b / Σ weight_b``), the criterion's mean over the whole data set when
        the weight is what its mean divides by.
        """
        if isinstance(criterion, Loss):
            return criterion
        if not callable(criterion):
            raise InputError(f"a criterion must be callable as criterion(output, target), got {type(criterion).__name__}")
        reduction = reduction or getattr(criterion, "reduction", "mean")
        if reduction not in ("mean", "sum"):
            raise InputError(f"criterion reduction {reduction!r}: use a criterion with reduction 'mean' or 'sum' "
                             "(a per-sample loss has no single Hessian)")
        count = _weight_function(criterion, weight)
        name = getattr(criterion, "__name__", None) or type(criterion).__name__

        def batch_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return _scalar(name, criterion(outputs, targets))
        if reduction == "sum":
            return cls(name, batch_loss, count)
        return cls(name, lambda outputs, targets: batch_loss(outputs, targets) * count(targets), count)

    @classmethod
    def causal_lm(cls, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, *,
                  ignore_index: int | None = None) -> "Loss":
        """A causal language model's next-token loss, with Hugging Face's ``labels`` convention.

        The targets are the ``labels`` of the batch — the input tokens themselves, ``(B, T)``, with
        ``ignore_index`` (-100) at positions that are not predicted (padding) — and the output the
        logits ``(B, T, V)``; position t predicts token t + 1, so the loss pairs ``logits[:, :-1]``
        with ``labels[:, 1:]``: what ``GPT2LMHeadModel(input_ids=x, labels=x).loss`` is. The Hessian
        is that of the mean over every predicted (not ignored) token of the whole data set, whatever
        the batches and ranks: each batch is weighted by its predicted tokens.

        ``criterion``: a cross-entropy style ``criterion(logits (N, V), tokens (N,))`` (e.g.
        ``nn.CrossEntropyLoss(label_smoothing=0.1)``); default plain cross-entropy. ``ignore_index``:
        default the criterion's, else -100. Data already shifted — inputs ``ids[:, :-1]``,
        targets ``ids[:, 1:]`` — takes the plain ``cross_entropy`` loss instead (the same Hessian,
        as a causal model's outputs before the last position do not see the last token).
        """
        ignored = ignore_index if ignore_index is not None else getattr(criterion, "ignore_index", -100)
        if criterion is None:
            def criterion(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
                return F.cross_entropy(logits, tokens, ignore_index=ignored, reduction="sum")
            reduction = "sum"
        else:
            reduction = getattr(criterion, "reduction", "mean")
            if reduction not in ("mean", "sum"):
                raise InputError(f"criterion reduction {reduction!r}: use a criterion with reduction 'mean' or 'sum'")

        def count(labels: torch.Tensor) -> int:
            _check_token_labels(labels)
            return int((labels[:, 1:] != ignored).sum())

        def total(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            _check_token_labels(labels)
            predicted = logits[:, :-1].reshape(-1, logits.shape[-1])
            value = _scalar(getattr(criterion, "__name__", None) or type(criterion).__name__,
                            criterion(predicted, labels[:, 1:].reshape(-1)))
            if reduction == "sum":
                return value
            tokens = count(labels)  # a mean criterion's divisor; a batch with none contributes 0 (not NaN)
            return value * tokens if tokens else predicted.sum() * 0.0
        return cls("causal_lm", total, count)


def _scalar(name: str, value: Any) -> torch.Tensor:
    """A criterion's value, refused unless it is one floating-point number as a tensor (an int, a
    float or a per-sample vector has no Hessian, or not the one meant)."""
    if not isinstance(value, torch.Tensor):
        raise InputError(f"criterion {name} returned a {type(value).__name__}, not a tensor: it must return the batch's "
                         "loss as a scalar floating-point tensor computed from the model's output")
    if value.numel() != 1:
        raise InputError(f"criterion {name} returned a tensor of shape {tuple(value.shape)}, not a scalar: reduce it "
                         "over the batch (reduction 'mean' or 'sum'); a per-sample loss has no single Hessian")
    if not value.dtype.is_floating_point:
        raise InputError(f"criterion {name} returned a {str(value.dtype).removeprefix('torch.')} tensor: the loss must "
                         "be a floating-point scalar computed from the model's output")
    return value.reshape(())


def _check_token_labels(labels: torch.Tensor) -> None:
    """Refuse labels that are not a ``(batch, length)`` integer tensor (what ``causal_lm`` shifts)."""
    if labels.ndim != 2 or labels.dtype.is_floating_point:
        raise InputError(f"loss causal_lm needs integer labels of shape (samples, length) — the input tokens, "
                         f"-100 where not predicted — got {str(labels.dtype).replace('torch.', '')} labels of shape "
                         f"{tuple(labels.shape)}")


def _weight_function(criterion: Callable, weight: str | Callable[[torch.Tensor], int]) -> Callable[[torch.Tensor], int]:
    """``weight`` as a function of a batch's targets (:data:`~hpcspec.choices.LOSS_WEIGHTS` or the user's function)."""
    if callable(weight):
        return weight
    if weight == "samples":
        return lambda targets: int(targets.shape[0]) if targets.ndim else 1
    if weight == "tokens":
        ignored = getattr(criterion, "ignore_index", -100)
        return lambda targets: int((targets != ignored).sum())
    raise InputError(f"unknown loss weight {weight!r}: use {' or '.join(LOSS_WEIGHTS)}, or a function of the targets")


def _cross_entropy_sum(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # (B, C) with (B,), or a sequence model's (B, T, C) with (B, T): every target token counts once
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), reduction="sum")


def _mse_sum(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs, targets.reshape(outputs.shape).to(outputs.dtype), reduction="sum")


LOSSES = {
    # mean over samples, or over target tokens for sequences
    "cross_entropy": Loss("cross_entropy", _cross_entropy_sum, lambda targets: targets.numel()),
    # mean over every element, as torch's MSELoss(reduction="mean") does
    "mse": Loss("mse", _mse_sum, lambda targets: targets.numel()),
}


def get_loss(name: "str | Loss | Callable") -> Loss:
    """The loss called ``name`` (a :class:`Loss` or a criterion passes through :meth:`Loss.of`);
    :class:`InputError` listing the known names otherwise."""
    if not isinstance(name, str):
        return Loss.of(name)
    try:
        return LOSSES[name]
    except KeyError:
        raise InputError(f"unknown loss {name!r}: use one of {', '.join(LOSSES)}") from None


def check_targets(loss: Loss, targets: torch.Tensor, num_outputs: int,
                  output_shape: tuple[int, ...] | None = None) -> None:
    """Refuse targets the loss cannot use, with the shapes in the message.

    ``output_shape`` (the model's output for a batch, when known): cross-entropy pairs outputs
    ``(B, C)`` with labels ``(B,)`` and a sequence model's ``(B, T, C)`` with tokens ``(B, T)``.
    """
    if loss.name == "cross_entropy":
        if targets.dtype.is_floating_point or targets.ndim not in (1, 2):
            raise InputError(f"loss 'cross_entropy' needs integer class labels of shape (samples,) or tokens "
                             f"(samples, length), got {str(targets.dtype).replace('torch.', '')} targets of shape "
                             f"{tuple(targets.shape)}")
        if output_shape is not None and tuple(output_shape[1:-1]) != tuple(targets.shape[1:]):
            raise InputError(f"loss 'cross_entropy': the model's outputs per sample {tuple(output_shape[1:])} do "
                             f"not match targets per sample {tuple(targets.shape[1:])} (labels need outputs "
                             "(classes,); tokens (length,) need outputs (length, vocabulary))")
        if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= num_outputs):
            raise InputError(f"class labels must lie in [0, {num_outputs}) for a model with {num_outputs} "
                             f"outputs; found labels in [{int(targets.min())}, {int(targets.max())}]")
    elif loss.name == "mse":
        per_sample = targets[0].numel() if len(targets) else num_outputs
        if per_sample != num_outputs:
            raise InputError(f"loss 'mse' needs {num_outputs} target values per sample to match the model's "
                             f"outputs, got targets of shape {tuple(targets.shape)}")


#: The most classes (or tokens) cross-entropy labels may name: a zoo model gets one output per
#: class, so a stray label of 1e12 would otherwise size a 1e12-wide layer (terabytes).
MAX_CLASSES = 2**24


def check_labels(loss: Loss, targets: torch.Tensor, name: str, inputs: torch.Tensor | None = None) -> None:
    """Cross-entropy labels, checked as loaded (before any model is sized from them): integers in
    ``[0, MAX_CLASSES)``; so are the integer token inputs of sequence data (a zoo transformer's
    vocabulary is sized from them too). Other losses take any finite targets."""
    if loss.name != "cross_entropy":
        return
    if inputs is not None and targets.ndim == 2 and not inputs.dtype.is_floating_point and len(inputs):
        low, high = int(inputs.min()), int(inputs.max())
        if low < 0 or high >= MAX_CLASSES:
            raise InputError(f"data {name!r}: token inputs must lie in [0, V) with V the vocabulary (at most "
                             f"{MAX_CLASSES:,}); found tokens in [{low:,}, {high:,}]: renumber the tokens 0..V-1")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise InputError(f"loss 'cross_entropy' needs integer class labels, but data {name!r} has "
                         f"{str(targets.dtype).replace('torch.', '')} targets: store the labels as integers "
                         "0..C-1, or use --loss mse for real-valued targets")
    if not len(targets):
        return
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= MAX_CLASSES:
        raise InputError(f"data {name!r}: cross-entropy class labels must lie in [0, C) with C the number of classes "
                         f"(at most {MAX_CLASSES:,}); found labels in [{low:,}, {high:,}]: renumber the classes "
                         "0..C-1")
