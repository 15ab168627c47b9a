"""The curvature contract: a matrix of the mean data-set loss, applied by one data pass.

Every curvature matrix hpcspec computes has the form ``M = (1/C) Σ_i M_i`` over every sample of
every rank, C the loss's global count (samples, tokens or elements). :class:`CurvatureOperator`
owns what that form implies, written once: the data (this rank's batches and the global count,
refused when it holds NaN), the model's modes during a product, the finiteness agreement before a
reduction, the reduction itself (a float64 allreduce or reduce-scatter, or the exact ``ordered``
sum), the division by C, and the mean loss and gradient. A subclass supplies one thing: the
product of its matrix's batch term with a few vectors (:meth:`BatchCurvature._batch_products`,
as SciPy's ``LinearOperator`` asks for ``_matvec``), or, where a product is not a sum of
independent batch terms (a pipeline's stages exchange every micro-batch), the whole pass
(:meth:`CurvatureOperator._local_products`).
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import torch
from torch import nn

from ..errors import InputError
from ..parallel.comm import Communicator
from ..parallel.finite import check_product
from ..parallel.vectors import VectorSpace
from ..problem.batches import BatchSource, Inputs, call_model, count_batches
from ..problem.losses import Loss
from ..problem.pairing import check_pairing
from ..problem.params import ParamLayout
from ..solvers.operator import LinearOperator
from .affine import frozen_running_stats
from .ordered import exact_sum

F = TypeVar("F", bound=Callable[..., Any])
#: Per vector, per parameter of the flat layout: a batch's product (None: no contribution).
BatchProducts = list[list[torch.Tensor | None]]
#: Parameter counts up to which :meth:`CurvatureOperator._accumulate` joins a product's parts first
#: (a temporary of P numbers in the compute dtype).
JOIN_LIMIT = 2**20


def in_modes(method: F) -> F:
    """Run an operator method with the model in the operator's :meth:`~CurvatureOperator.modes`."""

    @functools.wraps(method)
    def wrapped(self: "CurvatureOperator", *args: Any, **kwargs: Any) -> Any:
        with self.modes():
            return method(self, *args, **kwargs)
    return wrapped  # type: ignore[return-value]


class CurvatureOperator(LinearOperator):
    """A curvature matrix of the mean loss over a data set sharded across ranks (see the module
    docstring for what this class owns and what a subclass supplies).

    A subclass's constructor validates its own arguments, then calls :meth:`_take_data`; it sets
    ``model``, ``loss``, ``layout`` and ``_params`` (the parameters its partial products cover,
    in flat order) before that.
    """

    checks_products = True  #: finite products agreed on before reducing (:mod:`hpcspec.parallel.finite`)
    #: How products are taken, and why (``auto``: the rule and its trial), and the trial products.
    method = "double_backward"
    method_reason = "named"
    trial_products = 0
    bn_mode = "eval"
    #: Bytes the kept first-order graphs take (None: none kept, or not measured yet).
    graph_bytes: int | None = None
    #: ``fast`` (one float64 reduction) or ``ordered`` (:func:`~hpcspec.curvature.ordered.exact_sum`).
    reduction = "fast"

    model: nn.Module
    loss: Loss
    layout: ParamLayout
    _params: list[torch.nn.Parameter]
    #: BatchNorm layers normalising with batch statistics inside :meth:`modes` (bn_mode "train").
    _batch_stat_norms: Sequence[nn.Module] = ()

    def __init__(self, size: int, comm: Communicator, space: VectorSpace, *,
                 covered: tuple[int, int] | None = None, reduce_comm: Communicator | None = None) -> None:
        super().__init__(size, comm, space)
        #: The rows ``[lo, hi)`` of the flat vector this rank's partial products cover.
        self.covered = covered or (0, size)
        #: The ranks whose partial products sum to a whole product of those rows.
        self.reduce_comm = reduce_comm or comm

    def _take_data(self, data: Any, batch_size: int, target_key: str) -> None:
        """This rank's batches (on the model's device, in its dtype) and the global count (collective)."""
        if batch_size <= 0:
            raise InputError(f"batch_size must be > 0, got {batch_size}")
        self.batch_size = batch_size
        self.device = self._params[0].device
        self.compute_dtype = self._params[0].dtype
        self._source = BatchSource(data, batch_size, self.device, self.compute_dtype, target_key)
        #: Batch sizes (samples: the targets' first dimension) of this rank's batches, in order.
        self.batch_sizes, self.total_count = count_batches(self._source, self.loss, self.reduce_comm)
        self.num_samples = sum(self.batch_sizes)
        if not self.total_count > 0:
            raise InputError("the data of all ranks holds no samples (the loss's count is 0)")

    def _batches(self) -> Iterator[tuple[Inputs, torch.Tensor]]:
        """This rank's batches, in order."""
        return iter(self._source)

    # -- what a subclass supplies -----------------------------------------------------------------

    @abstractmethod
    def _local_products(self, vectors: torch.Tensor, per_batch: bool = False) -> list[torch.Tensor]:
        """This rank's share of ``M @ vectors`` times the count over :attr:`covered`, as (k, rows)
        float64 on the CPU: one sum (``[total]``), or one term per batch in batch order
        (``per_batch``, for the ``ordered`` reduction); counts the products."""

    @abstractmethod
    def _local_gradient(self) -> torch.Tensor:
        """This rank's summed gradient over :attr:`covered` and, last, its summed loss: (rows + 1,) float64."""

    def _checked_products(self, vectors: torch.Tensor, per_batch: bool = False) -> list[torch.Tensor]:
        """:meth:`_local_products`, agreed finite on every rank before they are reduced."""
        parts, count = self._local_products(vectors, per_batch), 1 if vectors.ndim == 1 else vectors.shape[1]
        check_product(self.comm, parts, first=self.num_matvecs - count + 1, count=count, shared=False)
        return parts

    # -- products -----------------------------------------------------------------------------------

    @in_modes
    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """``M @ vectors`` for a float64 vector (P,) or block (P, k); float64 on the CPU."""
        if self.reduction == "ordered":
            parts = self._checked_products(vectors, per_batch=True)
            total = exact_sum(self.comm, parts, self.size, self.num_samples > 0, None)
        else:
            total = self.comm.allreduce_sum_(self._checked_products(vectors)[0])
        total /= self.total_count
        return total.T.reshape(vectors.shape) if vectors.ndim == 1 else total.T.contiguous()

    @in_modes
    def apply_sharded(self, vectors: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Rows ``bounds[rank]`` of ``M @ vectors`` (whole (P,) or (P, k) in, this rank's rows out):
        the partial products are reduce-scattered, so no rank receives the whole product."""
        if self.reduction == "ordered":
            parts = self._checked_products(vectors, per_batch=True)
            total = exact_sum(self.comm, parts, self.size, self.num_samples > 0, bounds)
        else:
            total = self.reduce_comm.reduce_scatter_rows(self._checked_products(vectors)[0].T.contiguous(),
                                                         self._reduced_bounds(bounds))
        total /= self.total_count
        return total.reshape(-1) if vectors.ndim == 1 else total

    def _reduced_bounds(self, bounds: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """The reducing ranks' slices of :attr:`covered`, counted from its start."""
        return [(lo, hi) for lo, hi in bounds]

    # -- the model during a product -------------------------------------------------------------------

    @contextmanager
    def modes(self) -> Iterator[None]:
        """Inside: the model in eval mode (BatchNorm in training mode for bn_mode "train") and the
        flat vector's parameters requiring gradients; afterwards every module's ``training`` flag
        and every parameter's ``requires_grad`` are back as they were (re-entrant)."""
        training = [(module, module.training) for module in self.model.modules()]
        flags = [(param, param.requires_grad) for param in self._params]
        self.model.eval()  # the model's own eval(): a model may override what it switches
        for module in self._batch_stat_norms:
            module.train()
        for param in self._params:
            param.requires_grad_(True)
        try:
            yield
        finally:
            for module, mode in training:
                module.training = mode
            for param, flag in flags:
                param.requires_grad_(flag)

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        """The model parameters this rank's partial products cover, in layout order."""
        return list(self._params)

    def check_data(self) -> None:
        """Raise :class:`InputError` if the model cannot take this rank's data (local; nothing to
        check by default)."""

    def recomputing(self) -> AbstractContextManager[Any]:
        """Products inside recompute every forward (nothing kept by default)."""
        return nullcontext()

    # -- the loss -------------------------------------------------------------------------------------

    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """The mean loss over the whole data set and its whole flat float64 gradient, on every
        rank (one reduction)."""
        with self.modes():
            part = self._local_gradient()
        part = part.cpu() if part.device.type != "cpu" else part
        lo, hi = self.covered
        if (lo, hi) == (0, self.size):
            local = part
        else:  # a stage's rows: the whole vector is the sum over every stage's rows
            local = torch.zeros(self.size + 1, dtype=torch.float64)
            local[lo:hi], local[-1] = part[:-1], part[-1]
        local = self.comm.allreduce_sum_(local)
        local /= self.total_count
        return float(local[-1]), local[:-1]

    def mean_loss(self) -> float:
        """The mean loss over the whole data set at the current parameters."""
        return self.loss_and_gradient()[0]


class BatchCurvature(CurvatureOperator):
    """A curvature matrix whose product is a sum of independent batch terms: the data pass, the
    batch loss and the gradient are here, and a subclass supplies :meth:`_batch_products` (and
    ``output_fn``, ``_batch_stat_norms`` before :meth:`_take_data`)."""

    output_fn: Callable[[Any], torch.Tensor]

    @abstractmethod
    def _batch_products(self, inputs: Inputs, targets: torch.Tensor,
                        tangents: list[list[torch.Tensor]]) -> BatchProducts:
        """The batch's term of the matrix (times its count) applied to each tangent (a vector split
        by parameter, in the compute dtype, on the device)."""

    def _product_stream(self, tangents: list[list[torch.Tensor]]) -> Iterable[BatchProducts]:
        """Every batch's products, in batch order (a subclass may serve them from kept graphs)."""
        return (self._batch_products(inputs, targets, tangents) for inputs, targets in self._batches())

    def _local_products(self, vectors: torch.Tensor, per_batch: bool = False) -> list[torch.Tensor]:
        block = vectors.reshape(self.size, -1)
        k = block.shape[1]
        tangents = [self.layout.split(block[:, j].to(self.device, self.compute_dtype)) for j in range(k)]
        totals = [torch.zeros(k, self.size, dtype=torch.float64, device=self.device)]
        for count, batch_products in enumerate(self._product_stream(tangents)):
            if per_batch and count:
                totals.append(torch.zeros(k, self.size, dtype=torch.float64, device=self.device))
            for j, product in enumerate(batch_products):
                self._accumulate(totals[-1][j], product)
        self.num_matvecs += k
        return [total.cpu() if total.device.type != "cpu" else total for total in totals]

    def _accumulate(self, flat: torch.Tensor, parts: Sequence[torch.Tensor | None]) -> None:
        """``flat += parts`` (float64), skipping parameters with no contribution. A small model's
        parts are joined first (one add instead of one per parameter: the per-product overhead
        that a 2 ms product notices); the sums are the same either way, element by element."""
        if self.size <= JOIN_LIMIT and all(part is not None for part in parts):
            flat += torch.cat([part.reshape(-1) for part in parts])  # type: ignore[union-attr]
            return
        for begin, end, part in zip(self.layout.offsets[:-1], self.layout.offsets[1:], parts):
            if part is not None:
                flat[begin:end] += part.reshape(-1)

    def _batch_loss(self, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
        """The batch's summed loss (its mean times its weight), batch statistics frozen."""
        with frozen_running_stats(self._batch_stat_norms):
            return self.loss.sum(self.output_fn(call_model(self.model, inputs)), targets)

    def _local_gradient(self) -> torch.Tensor:
        local = torch.zeros(self.size + 1, dtype=torch.float64, device=self.device)
        for inputs, targets in self._batches():
            batch_loss = self._batch_loss(inputs, targets)
            grads = torch.autograd.grad(batch_loss, self._params, allow_unused=True)
            self._accumulate(local[:-1], grads)
            local[-1] += batch_loss.detach().to(torch.float64)
        return local

    @in_modes
    def check_data(self) -> None:
        """Raise :class:`InputError` if the model cannot take this rank's inputs or the loss its targets.

        Local (no collective): call it where failures are agreed on.
        """
        first = self._source.first(2 if self._batch_stat_norms else 1)
        if first is None:
            return
        if self._batch_stat_norms and 1 in self.batch_sizes:
            raise InputError(f"bn_mode = 'train' needs at least 2 samples in every batch, but this rank's "
                             f"{self.num_samples} samples in batches of {self.batch_size} leave a batch of 1: "
                             "change data.batch_size")
        targets = self._source.all_targets()
        targets = first[1] if targets is None else targets  # tensor data: every label is checked
        with frozen_running_stats(self._batch_stat_norms):
            # batch statistics need two samples (BatchNorm1d refuses one in training mode)
            check_pairing(self.model, self.loss, first[0], targets, self.output_fn)

    @in_modes
    def local_loss_sum(self) -> torch.Tensor:
        """This rank's summed (not averaged) loss at the current parameters: a float64 scalar on
        the CPU, with no gradient and no reduction (local).

        For callers that batch many evaluations into one reduction (:mod:`hpcspec.analyses.landscape`):
        reduce the sums, divide by :attr:`total_count`. The batches, the BatchNorm handling and
        the float64 accumulation are those of :meth:`loss_and_gradient`, so at the same
        parameters the reduced mean is its loss.
        """
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for inputs, targets in self._batches():
                total += self._batch_loss(inputs, targets).to(torch.float64)
        return total.cpu()

    def mean_loss(self) -> float:
        """The mean loss over the whole data set at the current parameters (one reduction; no gradient)."""
        return float(self.comm.allreduce_sum_(self.local_loss_sum().reshape(1))[0]) / self.total_count
