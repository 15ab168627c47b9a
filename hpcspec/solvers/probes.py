"""Random probe vectors that depend only on ``(seed, stream, index)`` — never on rank or world size.

Every rank generates the same probe from the same three integers, so replicated vectors agree
bitwise across ranks, a run's i-th probe is the same at 1 or 64 ranks, and a resumed run can
regenerate probe i without replaying probes 0…i−1. ``stream`` keeps estimators apart (the trace's
probes are not the density's), so combining tasks in one run does not correlate them.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from ..choices import DISTRIBUTIONS
from ..parallel.finite import checked_apply
from .base import LinearOperator


def probe_generator(seed: int, stream: str, index: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, stream, index)`` through NumPy's SeedSequence."""
    entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(stream.encode()), int(index)]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def probe(size: int, seed: int, stream: str, index: int, distribution: str = "rademacher") -> torch.Tensor:
    """The ``index``-th float64 probe of ``stream``: Rademacher (±1) or standard Gaussian entries.

    Both have E[z zᵀ] = I, so E[zᵀ H z] = tr(H) (Hutchinson 1989).
    """
    generator = probe_generator(seed, stream, index)
    if distribution == "rademacher":
        signs = torch.randint(0, 2, (size,), generator=generator, dtype=torch.int8)
        return signs.to(torch.float64).mul_(2.0).sub_(1.0)
    if distribution == "gaussian":
        return torch.randn(size, generator=generator, dtype=torch.float64)
    raise ValueError(f"probe distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")


def probe_block(size: int, seed: int, stream: str, indices: range | list[int],
                distribution: str = "rademacher") -> torch.Tensor:
    """Probes ``indices`` of ``stream`` as the columns of a (size, len(indices)) float64 block."""
    block = torch.empty(size, len(indices), dtype=torch.float64)
    for column, index in enumerate(indices):
        block[:, column] = probe(size, seed, stream, index, distribution)
    return block


def apply_in_blocks(op: LinearOperator, vectors: torch.Tensor, block_size: int = 0) -> torch.Tensor:
    """``op.apply`` on the columns of a (P, k) block, at most ``block_size`` columns per data pass.

    ``block_size = 0`` applies all k columns in one pass (one forward per batch serves them all);
    a positive size bounds the memory of the per-pass tangents and products.
    """
    k = vectors.shape[1]
    if block_size <= 0 or block_size >= k:
        return checked_apply(op, vectors)
    return torch.cat([checked_apply(op, vectors[:, j:j + block_size].contiguous()) for j in range(0, k, block_size)],
                     dim=1)
