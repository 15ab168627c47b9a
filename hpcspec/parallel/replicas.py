"""Every rank holds the same weights: checked once, before the first product.

A data-parallel Hessian is the sum of the ranks' shard Hessians *at one point*. A model whose
weights or buffers differ between ranks (a user's factory seeded by its rank, a checkpoint read
on one rank only) makes that sum the Hessian of no model at all, and nothing downstream can tell:
every product, residual and check looks healthy. So each rank fingerprints every parameter and
buffer (a CRC-32 of its bytes: exact, and the same on any device that holds the same values),
rank 0's list is broadcast, each rank compares its own, and the ranks agree on the first
difference, which is raised on every rank as one line naming the tensor.
"""

from __future__ import annotations

import zlib
from typing import Iterator

import torch
from torch import nn

from ..errors import InputError
from .agree import AgreedInputError, agree_on_failure
from .comm import Communicator

#: (kind, name, shape, dtype, CRC-32 of the bytes) of one tensor.
Fingerprint = tuple[str, str, tuple[int, ...], str, int]


def _digest(tensor: torch.Tensor) -> int:
    """CRC-32 of the tensor's bytes (-1 for a tensor without readable storage: meta, sparse)."""
    try:
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        return zlib.crc32(flat.view(torch.uint8).numpy().data)
    except (RuntimeError, TypeError, NotImplementedError):
        return -1


def fingerprints(module: nn.Module) -> list[Fingerprint]:
    """The module's parameters, then its buffers, each as a :data:`Fingerprint`, in module order."""
    def named() -> Iterator[tuple[str, str, torch.Tensor]]:
        yield from (("parameter", name, p) for name, p in module.named_parameters())
        yield from (("buffer", name, b) for name, b in module.named_buffers())
    return [(kind, name, tuple(t.shape), str(t.dtype).removeprefix("torch."), _digest(t)) for kind, name, t in named()]


def first_difference(mine: list[Fingerprint], reference: list[Fingerprint]) -> str | None:
    """What first tells this rank's tensors from the reference rank's, in words, or None: the
    structure (names, shapes, dtypes) first, then the values."""
    for own, theirs in zip(mine, reference):
        if own[:2] != theirs[:2]:
            return (f"the model differs between ranks: this rank's {own[0]} {own[1]!r} stands where rank 0 has "
                    f"{theirs[0]} {theirs[1]!r}; build the same model on every rank")
        if own[2:4] != theirs[2:4]:
            return (f"the model differs between ranks: {own[0]} {own[1]!r} is {own[3]} {list(own[2])} here and "
                    f"{theirs[3]} {list(theirs[2])} on rank 0")
    if len(mine) != len(reference):
        extra = mine[len(reference)] if len(mine) > len(reference) else reference[len(mine)]
        return (f"the model differs between ranks: it has {len(mine)} parameters and buffers here, {len(reference)} "
                f"on rank 0 (the first extra: {extra[0]} {extra[1]!r})")
    for own, theirs in zip(mine, reference):
        if own[4] != theirs[4]:
            return (f"the model's weights differ between ranks: {own[0]} {own[1]!r} is not rank 0's, so the summed "
                    "products would be the Hessian of no model; build the same weights on every rank (seed with a "
                    "constant, not the rank, or load one checkpoint on all of them)")
    return None


def check_replicated(module: nn.Module, comm: Communicator, agree_comm: Communicator | None = None) -> None:
    """Raise :class:`~hpcspec.parallel.agree.AgreedInputError` on every rank of ``agree_comm``
    (default ``comm``) unless every rank of ``comm`` holds ``module`` with the same parameters and
    buffers, bit for bit (collective over both; free on one rank)."""
    agree_comm = agree_comm or comm
    if agree_comm.size == 1:
        return
    error = None
    if comm.size > 1:
        mine = fingerprints(module)
        reference = comm.bcast_object(mine if comm.rank == 0 else None)
        problem = first_difference(mine, reference)
        error = InputError(problem) if problem else None
    agree_on_failure(agree_comm, error)


def check_weights(module: nn.Module, comm: Communicator, agree_comm: Communicator | None = None) -> None:
    """:func:`check_replicated`, then refuse a parameter holding NaN or inf, naming it: every
    product at such weights is NaN. The replicas agree by then, so over ``comm`` the verdict is
    the same on every rank and needs no collective; ``agree_comm`` (a pipeline's world, whose
    stages hold other parameters) agrees on it."""
    check_replicated(module, comm, agree_comm)
    error = None
    for name, parameter in module.named_parameters():
        bad = ~torch.isfinite(parameter.detach())
        if parameter.dtype.is_floating_point and bool(bad.any()):
            error = InputError(f"parameter {name!r} holds {int(bad.sum())} NaN or infinite value(s) of "
                               f"{parameter.numel()}: every Hessian-vector product at these weights is NaN; load or "
                               "train weights that are finite")
            break
    if agree_comm is not None and agree_comm is not comm:
        agree_on_failure(agree_comm, error)
    elif error is not None:
        raise AgreedInputError(str(error))
