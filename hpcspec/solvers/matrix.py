"""A dense symmetric matrix as a :class:`~hpcspec.solvers.base.LinearOperator`: the ground truth
that tests, benchmarks and ``validate`` hold the estimators against."""

from __future__ import annotations

from typing import Sequence

import torch

from ..parallel.comm import Communicator, SingleProcess
from ..parallel.vectors import make_space
from .operator import LinearOperator


class MatrixOperator(LinearOperator):
    """A dense symmetric matrix as an operator: ground truth for tests and validation."""

    def __init__(self, matrix: torch.Tensor, comm: Communicator | None = None, *, shard_vectors: bool = False) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"MatrixOperator needs a square matrix, got shape {tuple(matrix.shape)}")
        comm = comm or SingleProcess()
        super().__init__(matrix.shape[0], comm, make_space(comm, matrix.shape[0], shard_vectors))
        self.matrix = matrix.to(torch.float64)

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        self.num_matvecs += 1 if vectors.ndim == 1 else vectors.shape[1]
        return self.matrix @ vectors.to(torch.float64)

    def apply_sharded(self, vectors: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Rows ``bounds[rank]`` of ``matrix @ vectors`` (every rank holds the whole matrix)."""
        self.num_matvecs += 1 if vectors.ndim == 1 else vectors.shape[1]
        lo, hi = bounds[self.comm.rank]
        return self.matrix[lo:hi] @ vectors.to(torch.float64)
