"""The Hessian of the mean data-set loss as a linear operator on flat float64 vectors.

``H = ∇²_θ (1/C) Σ_i ℓ(f(x_i; θ), y_i)`` where the sum runs over every sample of every rank and C
is the loss's global count (samples, tokens, or elements for MSE). Each rank sums exact Hessian-vector
products (Pearlmutter 1994) over its shard batch by batch, the partial sums (float64) are reduced
across ranks in one message per application, and the result is divided once by C.
"""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..choices import (
    BN_MODES,
    DEFAULT_GRAPH_BUDGET_MB,
    DEFAULT_SHARD_VECTORS,
    FLOAT16_REASON,
    HVP_METHODS,
    REDUCTIONS,
)
from ..errors import InputError
from ..parallel.comm import Communicator, SingleProcess
from ..parallel.finite import check_product
from ..parallel.replicas import check_weights
from ..parallel.vectors import VectorSpace, make_space
from ..problem.batches import BatchSource, Inputs, call_model, count_batches, inputs_as_args
from ..problem.losses import Loss, get_loss
from ..problem.pairing import check_pairing, logits_of
from ..problem.params import ParamLayout
from .affine import affine_norms, frozen_running_stats
from .graphs import SavedBytes
from .method import DEFAULT_HVP_METHOD, rule
from .ordered import exact_sum

log = logging.getLogger(__name__)
#: Parameter counts up to which :meth:`HessianOperator._accumulate` joins a product's parts first
#: (a temporary of P numbers in the compute dtype).
JOIN_LIMIT = 2**20
F = TypeVar("F", bound=Callable[..., Any])


def _in_modes(method: F) -> F:
    """Run an operator method with the model in the operator's :meth:`~HessianOperator.modes`."""

    @functools.wraps(method)
    def wrapped(self: "HessianOperator", *args: Any, **kwargs: Any) -> Any:
        with self.modes():
            return method(self, *args, **kwargs)
    return wrapped  # type: ignore[return-value]


def check_bn_mode(bn_mode: str) -> None:
    """Raise :class:`InputError` unless ``bn_mode`` is one of :data:`BN_MODES`."""
    if bn_mode not in BN_MODES:
        raise InputError(f"unknown bn_mode {bn_mode!r}: use eval (running statistics) or train (batch statistics)")


class HessianOperator:
    """Exact Hessian-vector products of the mean loss over a data set sharded across ranks.

    Args:
        model: the network. Inside every product and analysis (:meth:`modes`) it is in eval mode
            (dropout off, BatchNorm running statistics: H·v is a deterministic function of v);
            after each, its train/eval modes and ``requires_grad`` flags are back as they were, and
            iterating the data leaves torch's global random state as it was (a training script can
            call the operator between steps and train on bitwise as without it). Its parameters' dtype is the
            compute dtype. (:func:`~hpcspec.curvature.preflight.check_operator_modes` tells if a module stays random.)
        loss: a :class:`~hpcspec.problem.losses.Loss`, a named loss (``cross_entropy``, ``mse``),
            or any criterion ``criterion(output, target)`` with reduction "mean" or "sum"
            (:meth:`Loss.of <hpcspec.problem.losses.Loss.of>`: how a batch is weighted).
        data: this rank's :class:`~hpcspec.problem.data.Shard`, an ``(x, y)`` pair of this rank's
            samples, or a re-iterable of this rank's batches (a DataLoader, a list of ``(x, y)``
            pairs or dict batches: :mod:`hpcspec.problem.batches`). Under MPI each rank passes
            its own part: the parts must be disjoint and together cover the data set once.
        comm: the ranks holding the other shards; a single process when omitted.
        batch_size: samples per forward pass of tensor data (memory, not mathematics: H does not
            depend on it); an iterable's batches are used as they come.
        method: ``double_backward`` (reverse-over-reverse) or ``forward_over_reverse``
            (``torch.func.jvp`` of ``torch.func.grad``); ``auto`` picks one by a fixed rule
            (:mod:`hpcspec.curvature.method`; :attr:`method_reason`, :attr:`trial_products`).
        output_fn: what of the model's output the loss takes; default :func:`~hpcspec.problem.pairing.logits_of`.
        target_key: the targets' key in dict batches (the other entries: the model's keyword arguments).
        bn_mode: ``eval`` (default): BatchNorm layers use their running statistics, and H is that
            of a fixed function of each sample. ``train``: inside, the model is put in eval mode, then its
            BatchNorm layers back in training mode, so each forward normalises with the statistics
            of its own batch, as during training. H is then the Hessian of the sum of per-batch
            losses and depends on ``batch_size`` and on how the data is sharded across ranks
            (every batch, including a short last one, couples its samples); the two modes can give
            different top eigenvalues (Ghorbani et al. 2019). The forwards never change the running
            statistics (nor ``num_batches_tracked``): ``track_running_stats`` is off while they run.
        graph_budget_mb: memory (MiB, per rank) the first-order graphs of the whole shard may take
            to be kept between products (``double_backward`` only): kept, each product costs only
            the second backward. Measured on the first product (the tensors autograd saves); over
            budget, every product recomputes its forward and gradient batch by batch; 0: never
            kept. Rebuilt when a parameter or buffer changes (e.g. after training). Same bits
            either way. Default :data:`~hpcspec.choices.DEFAULT_GRAPH_BUDGET_MB`.
        shard_vectors: solvers keep only this rank's slice of every long vector (``space``,
            :mod:`hpcspec.parallel.vectors`), products reduce-scattered (:meth:`apply_sharded`);
            off, or on one rank, vectors are replicated and products allreduced. Default on.
        reduction: ``fast`` (one float64 allreduce of the rank sums) or ``ordered``: every batch's
            product is reduced exactly on a fixed-point grid, so H·v has the same bits for any
            rank count and any order, provided each batch is the same on every rank count (shard
            with ``granule = batch_size``, :func:`hpcspec.problem.data.shard_range`) and ranks use the
            same thread count. Costs one int64 reduction instead of a float64 one, a gather of k
            scalars, and one (k, P) term per local batch in memory.

    The constructor is collective (a reduction, and a broadcast for ``auto``) and makes one pass
    over the data (the count). Parameters that do not require gradients when it runs are excluded
    (``layout.excluded``); a parameter the loss does not depend on gets a zero block.
    """

    checks_products = True  #: finite products agreed on before reducing (:mod:`hpcspec.parallel.finite`)

    def __init__(self, model: nn.Module, loss: Loss | str | Callable, data: Any,
                 comm: Communicator | None = None, *, batch_size: int = 256, method: str = "auto",
                 bn_mode: str = "eval", graph_budget_mb: float = DEFAULT_GRAPH_BUDGET_MB,
                 shard_vectors: bool = DEFAULT_SHARD_VECTORS, reduction: str = "fast",
                 output_fn: Callable[[Any], torch.Tensor] = logits_of, target_key: str = "labels") -> None:
        self.comm = comm or SingleProcess()
        if reduction not in REDUCTIONS:
            raise InputError(f"unknown reduction {reduction!r}: use {' or '.join(REDUCTIONS)}")
        self.reduction = reduction
        check_bn_mode(bn_mode)
        self.bn_mode = bn_mode
        self.model = model
        self.output_fn = output_fn
        #: BatchNorm layers normalising with batch statistics (bn_mode "train"); their running
        #: statistics are frozen during the operator's forwards by :func:`~hpcspec.curvature.affine.frozen_running_stats`.
        self._batch_stat_norms = [m for m in model.modules() if isinstance(m, _BatchNorm)] if bn_mode == "train" else []
        self.loss = get_loss(loss)
        if method != "auto" and method not in HVP_METHODS:
            raise InputError(f"unknown HVP method {method!r}: use auto or one of {', '.join(HVP_METHODS)}")
        if batch_size <= 0:
            raise InputError(f"batch_size must be > 0, got {batch_size}")
        self.batch_size = batch_size
        self.layout = ParamLayout.of(model)
        if self.layout.size == 0:
            raise InputError("the model has no parameters that require gradients")
        self.size = self.layout.size
        check_weights(model, self.comm)
        if any(p.dtype == torch.float16 for p in model.parameters()):  # the same on every rank: checked above
            raise InputError(f"the model holds float16 parameters, which hpcspec refuses: {FLOAT16_REASON}")
        self.space: VectorSpace = make_space(self.comm, self.size, shard_vectors)
        named = dict(model.named_parameters())
        self._params = [named[name] for name in self.layout.names]
        self.device = self._params[0].device
        self.compute_dtype = self._params[0].dtype
        self._source = BatchSource(data, batch_size, self.device, self.compute_dtype, target_key)
        #: Batch sizes (samples: the targets' first dimension) of this rank's batches, in order.
        self.batch_sizes, self.total_count = count_batches(self._source, self.loss, self.comm)
        self.num_samples = sum(self.batch_sizes)
        if not self.total_count > 0:
            raise InputError("the data of all ranks holds no samples (the loss's count is 0)")
        self.num_matvecs = 0
        if not graph_budget_mb >= 0:
            raise InputError(f"graph_budget_mb must be >= 0, got {graph_budget_mb}")
        self.graph_budget_bytes = int(graph_budget_mb * 2**20)
        #: Bytes the shard's first-order graphs were measured to take (None: not measured yet).
        self.graph_bytes: int | None = None
        self._graphs: list[tuple[tuple[torch.Tensor | None, ...], list[int]]] | None = None
        self._graph_key: tuple | None = None
        #: Why this method (``auto``: the rule and its trial), and the trial products it took.
        self.method_reason, self.trial_products = "named", 0
        #: Eval-mode BatchNorm as its affine map in the products (same H; :mod:`hpcspec.curvature.affine`).
        self.affine_norms = True
        self.method = method
        if method == "auto":
            self.method, self.method_reason, self.trial_products = self.comm.bcast_object(self._auto_method())
            log.info("hvp auto: %s — %s; %d trial product(s)", self.method, self.method_reason, self.trial_products)

    @_in_modes
    def _auto_method(self) -> tuple[str, str, int]:
        """Rank 0's ``(method, reason, trial products)`` by :func:`hpcspec.curvature.method.rule`:
        forward-over-reverse is tried on two samples, and double backward used if it fails."""
        choice, reason = rule(self.model, self.compute_dtype)
        first = self._source.first(2) if self.comm.rank == 0 and choice != DEFAULT_HVP_METHOD else None
        if first is None:
            return choice, reason, 0
        tangent = [self.layout.split(torch.ones(self.size, dtype=torch.float64).to(self.device, self.compute_dtype))]
        try:
            self._hvp_forward_over_reverse(*first, tangent)
        except Exception as exc:  # e.g. an operation without forward-mode support
            return DEFAULT_HVP_METHOD, f"forward mode fails on this model ({type(exc).__name__})", 1
        return choice, reason, 1

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

    @contextmanager
    def recomputing(self) -> Iterator[None]:
        """Products inside recompute every forward and gradient (no kept graphs): what a check of
        the data pipeline's determinism needs, since a kept graph freezes one random draw."""
        budget, self.graph_budget_bytes = self.graph_budget_bytes, 0
        try:
            yield
        finally:
            self.graph_budget_bytes = budget

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        """The model parameters the flat vector covers, in layout order."""
        return list(self._params)

    @_in_modes
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

    def _batches(self) -> Iterator[tuple[Inputs, torch.Tensor]]:
        return iter(self._source)

    def _batch_loss(self, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
        """The batch's summed loss (its mean times its weight), batch statistics frozen."""
        with frozen_running_stats(self._batch_stat_norms):
            return self.loss.sum(self.output_fn(call_model(self.model, inputs)), targets)

    def _weights_key(self) -> tuple:
        """Changes whenever a parameter or buffer is modified or replaced (invalidates the graphs)."""
        return tuple((t.data_ptr(), t._version) for t in (*self._params, *self.model.buffers()))

    def _cached_graphs(self) -> list[tuple[tuple[torch.Tensor | None, ...], list[int]]] | None:
        """The first-order graph of every batch, built (and measured) on first use; None when the
        cache is off, the method is not double backward, or the graphs exceed the budget."""
        if self.method != "double_backward" or self.graph_budget_bytes <= 0:
            return None
        key = (self.affine_norms, self._weights_key())
        if self._graph_key == key:
            return self._graphs
        self._graphs, self._graph_key = None, key
        graphs = []
        saved = SavedBytes()
        with saved:
            for inputs, targets in self._batches():
                grads, live = self._first_order(inputs, targets)
                saved.add_gradients(grads)
                graphs.append((grads, live))
                if saved.total > self.graph_budget_bytes:
                    self.graph_bytes = None
                    return None
        self.graph_bytes = saved.total
        self._graphs = graphs
        return graphs

    @_in_modes
    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H @ vectors`` for a float64 vector (P,) or block (P, k); float64 on the CPU."""
        if self.reduction == "ordered":
            parts = self._checked_products(vectors, per_batch=True)
            total = exact_sum(self.comm, parts, self.size, self.num_samples > 0, None)
        else:
            total = self.comm.allreduce_sum_(self._checked_products(vectors)[0])
        total /= self.total_count
        return total.T.reshape(vectors.shape) if vectors.ndim == 1 else total.T.contiguous()

    @_in_modes
    def apply_sharded(self, vectors: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Rows ``bounds[rank]`` of ``H @ vectors`` (whole (P,) or (P, k) in, this rank's rows out):
        the partial products are reduce-scattered, so no rank receives the whole product."""
        if self.reduction == "ordered":
            parts = self._checked_products(vectors, per_batch=True)
            total = exact_sum(self.comm, parts, self.size, self.num_samples > 0, bounds)
        else:
            total = self.comm.reduce_scatter_rows(self._checked_products(vectors)[0].T.contiguous(), bounds)
        total /= self.total_count
        return total.reshape(-1) if vectors.ndim == 1 else total

    def _checked_products(self, vectors: torch.Tensor, per_batch: bool = False) -> list[torch.Tensor]:
        """:meth:`_local_products`, agreed finite on every rank before they are reduced."""
        parts, count = self._local_products(vectors, per_batch), 1 if vectors.ndim == 1 else vectors.shape[1]
        check_product(self.comm, parts, first=self.num_matvecs - count + 1, count=count, shared=False)
        return parts

    def _local_products(self, vectors: torch.Tensor, per_batch: bool = False) -> list[torch.Tensor]:
        """This rank's shard's share of ``H @ vectors`` times the count, as (k, P) float64 on the
        CPU: one sum (``[total]``), or one term per batch in batch order (``per_batch``)."""
        block = vectors.reshape(self.size, -1)
        k = block.shape[1]
        tangents = [self.layout.split(block[:, j].to(self.device, self.compute_dtype)) for j in range(k)]
        totals = [torch.zeros(k, self.size, dtype=torch.float64, device=self.device)]
        graphs = self._cached_graphs()
        if graphs is not None:
            products = (self._second_order(grads, live, tangents, keep=True) for grads, live in graphs)
        else:
            hvp = self._hvp_double_backward if self.method == "double_backward" else self._hvp_forward_over_reverse
            products = (hvp(inputs, targets, tangents) for inputs, targets in self._batches())
        for count, batch_products in enumerate(products):
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

    def _first_order(self, inputs: Inputs, targets: torch.Tensor) -> tuple[tuple[torch.Tensor | None, ...], list[int]]:
        """The batch's gradient with its graph, and which of its parts depend on the parameters."""
        with affine_norms(self.model, self.affine_norms):
            batch_loss = self._batch_loss(inputs, targets)
        grads = torch.autograd.grad(batch_loss, self._params, create_graph=True, allow_unused=True)
        return grads, [i for i, g in enumerate(grads) if g is not None and g.requires_grad]

    def _second_order(self, grads: tuple[torch.Tensor | None, ...], live: list[int], tangents: list[list[torch.Tensor]],
                      keep: bool) -> list[list[torch.Tensor | None]]:
        """One backward of ``gradient · v`` per tangent v (``keep``: the graph survives the last)."""
        products: list[list[torch.Tensor | None]] = []
        for j, tangent in enumerate(tangents):
            result: list[torch.Tensor | None] = [None] * len(self._params)
            if live:
                hv = torch.autograd.grad([grads[i] for i in live], self._params,
                                         grad_outputs=[tangent[i] for i in live],
                                         retain_graph=keep or j < len(tangents) - 1, allow_unused=True)
                result = list(hv)
            products.append(result)
        return products

    def _hvp_double_backward(self, inputs: Inputs, targets: torch.Tensor,
                             tangents: list[list[torch.Tensor]]) -> list[list[torch.Tensor | None]]:
        """One forward and first backward per batch, then one second backward per vector."""
        grads, live = self._first_order(inputs, targets)
        return self._second_order(grads, live, tangents, keep=False)

    def _hvp_forward_over_reverse(self, inputs: Inputs, targets: torch.Tensor,
                                  tangents: list[list[torch.Tensor]]) -> list[list[torch.Tensor | None]]:
        """``jvp(grad(loss))``: a forward-mode derivative of the reverse-mode gradient."""
        from torch.func import functional_call, grad, jvp

        names = self.layout.names
        primals = tuple(p.detach() for p in self._params)
        args, kwargs = inputs_as_args(inputs)

        def batch_loss(*values: torch.Tensor) -> torch.Tensor:
            with frozen_running_stats(self._batch_stat_norms), affine_norms(self.model, self.affine_norms):
                outputs = functional_call(self.model, dict(zip(names, values)), args, kwargs)
            return self.loss.sum(self.output_fn(outputs), targets)

        gradient = grad(batch_loss, argnums=tuple(range(len(primals))))
        return [list(jvp(gradient, primals, tuple(tangent))[1]) for tangent in tangents]

    @_in_modes
    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """The mean loss over the whole data set and its flat float64 gradient (one reduction)."""
        local = torch.zeros(self.size + 1, dtype=torch.float64, device=self.device)
        for inputs, targets in self._batches():
            batch_loss = self._batch_loss(inputs, targets)
            grads = torch.autograd.grad(batch_loss, self._params, allow_unused=True)
            self._accumulate(local[:-1], grads)
            local[-1] += batch_loss.detach().to(torch.float64)
        local = self.comm.allreduce_sum_(local.cpu() if local.device.type != "cpu" else local)
        local /= self.total_count
        return float(local[-1]), local[:-1]

    @_in_modes
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
