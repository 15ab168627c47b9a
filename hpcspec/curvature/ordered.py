"""The exact ordered reduction (``reduction = "ordered"``): a sum of per-batch products whose bits
depend on neither the order of the terms nor the rank count."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..parallel.comm import Communicator


def exact_sum(comm: Communicator, parts: list[torch.Tensor], size: int, has_samples: bool,
              bounds: Sequence[tuple[int, int]] | None) -> torch.Tensor:
    """The sum of this rank's (k, ``size``) ``parts`` over every batch of every rank (``has_samples``:
    this rank holds any), with bits that depend on neither the order of
    the terms nor the rank count (``reduction = "ordered"``).

    Each column's terms are put on one fixed-point grid (2^-s, from the column's largest
    magnitude over all ranks and the number of batches, so that no int64 sum can overflow)
    and summed as integers, which is exact and so associative; one allreduce (or
    reduce-scatter: ``bounds`` given, rows of (P, k) returned) of int64 carries them. The
    grid keeps 62 − ⌈log2(batches + 1)⌉ bits below each column's largest term: a rounding of
    about 2^-57 of it per term on data sets of a few dozen batches. Without ``bounds``,
    returns (k, P).
    """
    k = parts[0].shape[0]
    largest = torch.stack([part.abs().amax(dim=1) for part in parts]).amax(dim=0).numpy() if parts else np.zeros(k)
    gathered = comm.allgather_object((largest, len(parts) if has_samples else 0))
    largest = np.max(np.stack([found for found, _ in gathered]), axis=0)
    headroom = max(1, math.ceil(math.log2(sum(batches for _, batches in gathered) + 1)))
    # |term · 2^s| < 2^(62−h); capped so that 2^s stays a finite float64
    shift = torch.from_numpy(np.minimum(62 - headroom - np.frexp(largest)[1], 1000).astype(np.int64))
    fixed = torch.zeros(k, size, dtype=torch.int64)
    for part in parts:
        fixed += torch.round(torch.ldexp(part, shift[:, None].to(torch.float64))).to(torch.int64)
    if bounds is None:
        return torch.ldexp(comm.allreduce_sum_(fixed).to(torch.float64), -shift[:, None].to(torch.float64))
    rows = comm.reduce_scatter_rows(fixed.T.contiguous(), bounds)
    return torch.ldexp(rows.to(torch.float64), -shift[None, :].to(torch.float64))
