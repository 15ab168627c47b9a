"""Projection against an orthonormal basis, shared by the solvers that deflate or reorthogonalise."""

from __future__ import annotations

import torch


def project_out_(vectors: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """Remove from ``vectors`` (in place; a (P,) vector or a (P, k) block) its components along the
    orthonormal columns of ``basis``, and return it.

    Classical Gram–Schmidt applied twice ("twice is enough"): orthogonal to working precision
    even when ``vectors`` lies almost inside span(basis).
    """
    if basis is not None and basis.shape[1]:
        for _ in range(2):
            vectors -= basis @ (basis.T @ vectors)
    return vectors
