"""What one rank holds of the data set: samples as tensors (:class:`Shard`) or whole batches
(:class:`BatchShard`, from a ``module:callable`` returning a DataLoader or a list of batches)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch


@dataclass(frozen=True)
class Shard:
    """This rank's contiguous slice ``[start, stop)`` of a data set of ``total`` samples;
    ``classes`` is the number of classes (vocabulary for tokens) the source declares, 0 when the
    labels alone tell (a shard or a small data set may lack the highest ones)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    start: int
    stop: int
    total: int
    classes: int = 0

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class BatchShard:
    """This rank's whole batches ``[start, stop)`` of the ``num_batches`` batches a data callable
    gave, each an ``(inputs, targets)`` pair (inputs a tensor, a tuple of tensors or a dict of
    keyword tensors), with ``samples`` samples here and ``total`` over all ranks.

    ``crcs`` holds a CRC-32 of every batch this rank iterated, in order: every batch of the data
    set when the ranks share one loader (each rank keeps its block, ``[start, stop)`` indexes
    ``crcs``), this rank's own when the loader is already per rank (``sharded``: ``start = 0``,
    ``stop = len(batches)``; ``num_batches`` and ``total`` count all ranks only once
    :func:`hpcspec.problem.loaders.agree_batches` has gathered them, ``-1`` before). They let the
    ranks check that they saw the same batches, and fingerprint the data for a resume.
    """

    batches: tuple[tuple[Any, torch.Tensor], ...]
    start: int
    stop: int
    num_batches: int
    samples: int
    total: int
    crcs: tuple[int, ...]
    sharded: bool = False
    classes: int = 0

    def __len__(self) -> int:
        return self.samples


#: Either kind of rank shard.
AnyShard = Union[Shard, BatchShard]
