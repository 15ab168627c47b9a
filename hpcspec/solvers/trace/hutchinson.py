"""``hutchinson`` (Hutchinson 1989).

``tr(H) ≈ (1/m) Σ zᵢᵀ H zᵢ`` with E[z zᵀ] = I. Variance per sample 2(‖H‖_F² − Σ H_jj²) for
Rademacher probes, 2‖H‖_F² for Gaussian ones. ``samples``: the m terms ``zᵢᵀHzᵢ``; ``deflated`` 0.

The residual Hutchinson samples ``zᵀ(I−QQᵀ)H(I−QQᵀ)z`` that hutchpp and krylov add to their exact
part are the same terms with a deflation basis Q, so they live here too.
"""

from __future__ import annotations

import numpy as np
import torch

from ..base import LinearOperator
from ..orthogonal import project_out_
from ..probes import apply_in_blocks, probe_block
from .base import PROBE_STREAM


def quadratic_forms(op: LinearOperator, probes: torch.Tensor, basis: torch.Tensor | None,
                    block_size: int) -> np.ndarray:
    """``zᵀ(I−QQᵀ)H(I−QQᵀ)z`` for each column z of ``probes`` (one data pass per block)."""
    projected = project_out_(probes, basis)
    products = apply_in_blocks(op, projected, block_size)
    return (projected * products).sum(dim=0).numpy()


def residual_samples(op: LinearOperator, basis: torch.Tensor | None, *, seed: int, distribution: str,
                     probes: range, block_size: int) -> np.ndarray:
    """The Hutchinson terms of the probes numbered ``probes`` (of the ``PROBE_STREAM``), deflated by
    ``basis`` (None: plain Hutchinson); one data pass per ``block_size`` probes (0: one pass)."""
    vectors = probe_block(op.size, seed, PROBE_STREAM, probes, distribution)
    return quadratic_forms(op, vectors, basis, block_size)
