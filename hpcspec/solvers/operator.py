"""The operator contract the solvers and analyses work with, and the adapter for a foreign one.

Every solver multiplies through its operator's vector space (``op.space``), numbers and checks
products by ``op.num_matvecs`` unless the operator agrees on its own (``op.checks_products``),
takes its default tolerance from ``op.compute_dtype`` and seeds random forwards on ``op.device``.
:class:`LinearOperator` declares all of them, with the defaults a plain matrix-like operator has,
so no caller needs to probe an operator for what it offers. The curvature matrices
(:mod:`hpcspec.curvature.base`) and :class:`~hpcspec.solvers.matrix.MatrixOperator` are
subclasses; any other object with ``size``, ``comm`` and ``apply`` (a user's operator) is wrapped
once by :func:`as_operator` where a solver receives it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Sequence

import torch

from ..parallel.comm import Communicator, SingleProcess
from ..parallel.vectors import Replicated, VectorSpace


class LinearOperator(ABC):
    """A symmetric operator on float64 vectors of length ``size``, distributed over ``comm``.

    A subclass provides :meth:`apply`; one that can hand each rank only its rows of a product
    (a reduce-scatter instead of an allreduce) overrides :meth:`apply_sharded` and passes a
    sharded ``space``.
    """

    #: The operator agrees on every product's finiteness itself (:mod:`hpcspec.parallel.finite`);
    #: otherwise the solver checks each product it receives.
    checks_products: bool = False
    #: The dtype products are computed in: it sets the default tolerances (None: float64's).
    compute_dtype: torch.dtype | None = None
    #: Where products are computed: a check of the products seeds that device's generator too.
    device: torch.device = torch.device("cpu")

    def __init__(self, size: int, comm: Communicator | None = None, space: VectorSpace | None = None) -> None:
        self.size = size
        self.comm: Communicator = comm or SingleProcess()
        #: Where the solvers keep long vectors (:mod:`hpcspec.parallel.vectors`).
        self.space: VectorSpace = space if space is not None else Replicated(size, self.comm)
        #: Products so far (a block of k columns counts k).
        self.num_matvecs = 0

    @abstractmethod
    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """``A @ vectors`` for a float64 (size,) vector or (size, k) block, whole on every rank."""

    def apply_sharded(self, vectors: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Rows ``bounds[rank]`` of ``A @ vectors`` (whole vectors in): by default the whole
        product, sliced."""
        lo, hi = bounds[self.comm.rank]
        return self.apply(vectors)[lo:hi].clone()

    def recomputing(self) -> AbstractContextManager[Any]:
        """Products inside recompute whatever they may cache (a check of repeatability needs it)."""
        return nullcontext()


class ForeignOperator(LinearOperator):
    """A user's operator with ``size``, ``comm`` and ``apply`` as a :class:`LinearOperator`:
    its products are checked by the solver and counted here."""

    def __init__(self, inner: Any) -> None:
        super().__init__(int(inner.size), inner.comm)
        self.inner = inner

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        self.num_matvecs += 1 if vectors.ndim == 1 else vectors.shape[1]
        return self.inner.apply(vectors)


def as_operator(op: Any) -> LinearOperator:
    """``op`` itself when it is a :class:`LinearOperator`, else ``op`` wrapped (it must have
    ``size``, ``comm`` and ``apply``: the documented minimum)."""
    return op if isinstance(op, LinearOperator) else ForeignOperator(op)
