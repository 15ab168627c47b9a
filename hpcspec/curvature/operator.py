"""The Hessian of the mean data-set loss as a linear operator on flat float64 vectors.

``H = ∇²_θ (1/C) Σ_i ℓ(f(x_i; θ), y_i)`` where the sum runs over every sample of every rank and C
is the loss's global count (samples, tokens, or elements for MSE). Each rank sums exact Hessian-vector
products (Pearlmutter 1994) over its shard batch by batch, the partial sums (float64) are reduced
across ranks in one message per application, and the result is divided once by C.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

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
from ..parallel.replicas import check_weights
from ..parallel.vectors import make_space
from ..problem.batches import Inputs, inputs_as_args
from ..problem.losses import Loss, get_loss
from ..problem.pairing import logits_of
from ..problem.params import ParamLayout
from .affine import affine_norms, frozen_running_stats
from .base import BatchCurvature, BatchProducts, in_modes
from .graphs import SavedBytes
from .method import DEFAULT_HVP_METHOD, rule

log = logging.getLogger(__name__)


def check_bn_mode(bn_mode: str) -> None:
    """Raise :class:`InputError` unless ``bn_mode`` is one of :data:`BN_MODES`."""
    if bn_mode not in BN_MODES:
        raise InputError(f"unknown bn_mode {bn_mode!r}: use eval (running statistics) or train (batch statistics)")


class HessianOperator(BatchCurvature):
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

    def __init__(self, model: nn.Module, loss: Loss | str | Callable, data: Any,
                 comm: Communicator | None = None, *, batch_size: int = 256, method: str = "auto",
                 bn_mode: str = "eval", graph_budget_mb: float = DEFAULT_GRAPH_BUDGET_MB,
                 shard_vectors: bool = DEFAULT_SHARD_VECTORS, reduction: str = "fast",
                 output_fn: Callable[[Any], torch.Tensor] = logits_of, target_key: str = "labels") -> None:
        comm = comm or SingleProcess()
        if reduction not in REDUCTIONS:
            raise InputError(f"unknown reduction {reduction!r}: use {' or '.join(REDUCTIONS)}")
        check_bn_mode(bn_mode)
        loss = get_loss(loss)
        if method != "auto" and method not in HVP_METHODS:
            raise InputError(f"unknown HVP method {method!r}: use auto or one of {', '.join(HVP_METHODS)}")
        if batch_size <= 0:
            raise InputError(f"batch_size must be > 0, got {batch_size}")
        layout = ParamLayout.of(model)
        if layout.size == 0:
            raise InputError("the model has no parameters that require gradients")
        check_weights(model, comm)
        if any(p.dtype == torch.float16 for p in model.parameters()):  # the same on every rank: checked above
            raise InputError(f"the model holds float16 parameters, which hpcspec refuses: {FLOAT16_REASON}")
        super().__init__(layout.size, comm, make_space(comm, layout.size, shard_vectors))
        self.reduction, self.bn_mode, self.model, self.output_fn, self.layout = reduction, bn_mode, model, output_fn, layout
        #: BatchNorm layers normalising with batch statistics (bn_mode "train"); their running
        #: statistics are frozen during the operator's forwards by :func:`~hpcspec.curvature.affine.frozen_running_stats`.
        self._batch_stat_norms = [m for m in model.modules() if isinstance(m, _BatchNorm)] if bn_mode == "train" else []
        self.loss = loss
        named = dict(model.named_parameters())
        self._params = [named[name] for name in layout.names]
        self._take_data(data, batch_size, target_key)
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

    @in_modes
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
    def recomputing(self) -> Iterator[None]:
        """Products inside recompute every forward and gradient (no kept graphs): what a check of
        the data pipeline's determinism needs, since a kept graph freezes one random draw."""
        budget, self.graph_budget_bytes = self.graph_budget_bytes, 0
        try:
            yield
        finally:
            self.graph_budget_bytes = budget

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

    def _batch_products(self, inputs: Inputs, targets: torch.Tensor,
                        tangents: list[list[torch.Tensor]]) -> BatchProducts:
        hvp = self._hvp_double_backward if self.method == "double_backward" else self._hvp_forward_over_reverse
        return hvp(inputs, targets, tangents)

    def _product_stream(self, tangents: list[list[torch.Tensor]]) -> Iterable[BatchProducts]:
        """From the kept first-order graphs when they fit (only the second backward per product)."""
        graphs = self._cached_graphs()
        if graphs is None:
            return super()._product_stream(tangents)
        return (self._second_order(grads, live, tangents, keep=True) for grads, live in graphs)

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
