"""This rank's data as a re-iterable of ``(inputs, targets)`` batches, whatever form it came in.

:class:`~hpcspec.curvature.operator.HessianOperator` takes its data as

- an ``(x, y)`` pair of tensors or a :class:`~hpcspec.problem.data.Shard`: cut into batches of
  ``batch_size`` samples in stored order (the last one may be short); a
  :class:`~hpcspec.problem.shards.BatchShard` (a data callable's batches, :mod:`hpcspec.problem.loaders`): its batches;
- any *re-iterable* of batches — a ``torch.utils.data.DataLoader``, a list — where a batch is an
  ``(inputs, targets)`` pair or a dict. In a dict batch the entry ``target_key`` (default
  ``"labels"``) is the target and every other entry is passed to the model as a keyword argument
  (``model(input_ids=…, attention_mask=…)``); in a pair, ``inputs`` is a tensor (``model(x)``),
  a tuple or list of tensors (``model(*x)``) or a dict (``model(**x)``).

Batches may have any sizes: the operator sums each batch's loss and divides once by the count of
all batches of all ranks. An iterator or generator (consumed by one pass) is refused: every product
is a fresh pass over the data. The data pass must give the same samples every time (no random
augmentation); a shuffling loader gives the same Hessian up to rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Callable, Iterator, Union

import torch
from torch import nn

from ..errors import InputError
from ..parallel.agree import agree_on_failure
from ..parallel.comm import Communicator
from .shards import BatchShard, Shard

#: A batch's model inputs: a tensor, positional tensors, or keyword tensors.
Inputs = Union[torch.Tensor, tuple, dict]


def call_model(model: nn.Module | Callable[..., Any], inputs: Inputs) -> Any:
    """``model(x)``, ``model(*x)`` or ``model(**x)`` for a tensor, a tuple/list or a dict of inputs."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def inputs_as_args(inputs: Inputs) -> tuple[tuple, dict]:
    """The positional and keyword arguments :func:`call_model` passes (for ``functional_call``)."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def take(inputs: Inputs, n: int) -> Inputs:
    """The first ``n`` samples of every tensor in ``inputs`` (non-tensors kept as they are)."""
    if isinstance(inputs, Mapping):
        return {key: take(value, n) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(take(value, n) for value in inputs)
    return inputs[:n] if isinstance(inputs, torch.Tensor) else inputs


def describe(inputs: Inputs) -> str:
    """The per-sample shapes, for messages: ``(1, 8, 8)`` or ``{input_ids: (16,), …}``."""
    if isinstance(inputs, Mapping):
        return "{" + ", ".join(f"{key}: {describe(value)}" for key, value in inputs.items()) + "}"
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(describe(value) for value in inputs) + ")"
    return str(tuple(inputs.shape[1:])) if isinstance(inputs, torch.Tensor) else type(inputs).__name__


def non_finite(inputs: Inputs, targets: torch.Tensor, where: str = "inputs") -> str | None:
    """Which part of a batch holds NaN or inf (``inputs``, ``inputs['mask']``, ``targets``), or None."""
    if isinstance(inputs, Mapping):
        parts = [non_finite(value, None, f"{where}[{key!r}]") for key, value in inputs.items()]  # type: ignore[arg-type]
    elif isinstance(inputs, (tuple, list)):
        parts = [non_finite(value, None, f"{where}[{i}]") for i, value in enumerate(inputs)]  # type: ignore[arg-type]
    else:
        bad = isinstance(inputs, torch.Tensor) and inputs.dtype.is_floating_point and not bool(torch.isfinite(inputs).all())
        parts = [where if bad else None]
    if targets is not None and targets.dtype.is_floating_point and not bool(torch.isfinite(targets).all()):
        parts.append("targets")
    return next((part for part in parts if part is not None), None)


def _moved(inputs: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Tensors on ``device``, floating ones in the compute ``dtype`` (integer tokens stay integers)."""
    if isinstance(inputs, Mapping):
        return {key: _moved(value, device, dtype) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(_moved(value, device, dtype) for value in inputs)
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, dtype) if inputs.dtype.is_floating_point else inputs.to(device)
    return inputs


def split_batch(batch: Any, target_key: str) -> tuple[Inputs, torch.Tensor]:
    """``(inputs, targets)`` of one batch as a loader yields it (see the module docstring)."""
    if isinstance(batch, Mapping):
        if target_key not in batch:
            raise InputError(f"a dict batch needs its targets under {target_key!r} (target_key); "
                             f"found keys {sorted(map(str, batch))}")
        return {key: value for key, value in batch.items() if key != target_key}, batch[target_key]
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
        return batch[0], batch[1]
    raise InputError(f"a batch must be an (inputs, targets) pair with tensor targets or a dict with "
                     f"{target_key!r}, got {type(batch).__name__}"
                     f"{f' of {len(batch)} items' if isinstance(batch, (tuple, list)) else ''}")


def is_one_pass(data: Any) -> bool:
    """True for an iterator that is its own iterable (a generator: one pass only). The test makes
    an iterator, which for a DataLoader draws a seed from torch's global generator: that state is
    put back, so asking leaves the caller's random stream as it was."""
    rng = torch.get_rng_state()
    try:
        return iter(data) is data
    finally:
        torch.set_rng_state(rng)


class BatchSource:
    """This rank's batches, moved to the model's device and dtype on the way out."""

    def __init__(self, data: Any, batch_size: int, device: torch.device, dtype: torch.dtype,
                 target_key: str = "labels") -> None:
        self.device, self.dtype, self.target_key = device, dtype, target_key
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self._iterable: Iterable | None = None
        if isinstance(data, Shard):
            data = (data.inputs, data.targets)
        elif isinstance(data, BatchShard):
            data = list(data.batches)  # already (inputs, targets) pairs
        if (isinstance(data, tuple) and len(data) == 2 and all(isinstance(part, torch.Tensor) for part in data)):
            inputs, targets = data
            if len(inputs) != len(targets):
                raise InputError(f"data: inputs hold {len(inputs)} samples but targets {len(targets)}")
            self._tensors = (_moved(inputs, device, dtype), targets.to(device))
            self.batch_size = batch_size
        elif isinstance(data, Iterable) and not isinstance(data, (torch.Tensor, str, Mapping)):
            if is_one_pass(data):
                raise InputError(f"data is a one-pass iterator ({type(data).__name__}): pass something that can "
                                 "be iterated again for every product, e.g. a DataLoader or a list of batches")
            self._iterable = data
            self.batch_size = getattr(data, "batch_size", None) or batch_size
        else:
            raise InputError(f"data must be an (x, y) pair of tensors, a Shard, or an iterable of batches "
                             f"(a DataLoader, a list of (x, y) pairs or dict batches), got {type(data).__name__}")

    def __iter__(self) -> Iterator[tuple[Inputs, torch.Tensor]]:
        if self._tensors is not None:
            inputs, targets = self._tensors
            for i in range(0, len(targets), self.batch_size):
                yield inputs[i:i + self.batch_size], targets[i:i + self.batch_size]
            return
        assert self._iterable is not None
        # A DataLoader draws its workers' base seed from torch's global generator on every pass,
        # shuffle or not: without the restore, every product would shift the random stream of the
        # training script that called it (its next dropout masks and shuffles).
        rng = torch.get_rng_state()
        try:
            for batch in self._iterable:
                inputs, targets = split_batch(batch, self.target_key)
                if not isinstance(targets, torch.Tensor):
                    raise InputError(f"batch targets must be a tensor, got {type(targets).__name__}")
                yield _moved(inputs, self.device, self.dtype), targets.to(self.device)
        finally:
            torch.set_rng_state(rng)

    def all_targets(self) -> torch.Tensor | None:
        """Every target of tensor data at once (None for an iterable: they come batch by batch)."""
        return self._tensors[1] if self._tensors is not None else None

    def first(self, n: int) -> tuple[Inputs, torch.Tensor] | None:
        """The first ``n`` samples of the first batch (fewer if it is shorter); None without data."""
        for inputs, targets in self:
            if len(targets):
                return take(inputs, n), targets[:n]
        return None


def count_batches(source: BatchSource, loss: Any, comm: Communicator) -> tuple[list[int], float]:
    """This rank's batch sizes and the loss's count over every rank's batches (collective: one
    agreement, one reduction). Data holding NaN or inf is refused here, on every rank and naming
    where, before the first product could turn it into a NaN Hessian."""
    sizes, count, error = [], torch.zeros(1, dtype=torch.float64), None
    for index, (inputs, targets) in enumerate(source):
        sizes.append(len(targets) if targets.ndim else 1)
        count += float(loss.count(targets))
        part = non_finite(inputs, targets) if error is None else None
        if part is not None:
            error = InputError(f"the data holds NaN or infinite values: {part} of batch {index} of this rank")
    agree_on_failure(comm, error)
    return sizes, float(comm.allreduce_sum_(count).item())
