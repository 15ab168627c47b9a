"""The generalised Gauss-Newton matrix ``G = (1/C) Σ_b J_bᵀ H_b J_b`` on the curvature contract.

J_b is the Jacobian of the batch's model output (what the loss takes, ``output_fn``) with respect
to the parameters and H_b the Hessian of the batch's summed loss with respect to that output.
G drops the Hessian's second term (the output's own curvature weighted by the loss gradient), so
it is positive semidefinite wherever the loss is convex in the output (cross-entropy, MSE, a
causal LM's token cross-entropy), and it equals the Hessian for a model linear in its parameters.

One batch product per vector: ``J v`` by forward mode (``torch.func.jvp``), ``H_b (J v)`` by a
double backward of the loss through the output alone (exact for any twice-differentiable
criterion: a closed form per loss would only save that small backward), and ``J_bᵀ (·)`` by one
reverse pass (``torch.func.vjp``). Every other part (data, count, reductions, modes, loss and
gradient) is the contract's (:class:`~hpcspec.curvature.base.BatchCurvature`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..choices import DEFAULT_SHARD_VECTORS, FLOAT16_REASON
from ..errors import InputError
from ..parallel.comm import Communicator, SingleProcess
from ..parallel.replicas import check_weights
from ..parallel.vectors import make_space
from ..problem.batches import Inputs, inputs_as_args
from ..problem.losses import Loss, get_loss
from ..problem.pairing import logits_of
from ..problem.params import ParamLayout
from .affine import frozen_running_stats
from .base import BatchCurvature, BatchProducts
from .operator import check_bn_mode


class GaussNewtonOperator(BatchCurvature):
    """Products with the generalised Gauss-Newton matrix of the mean loss over a sharded data set.

    The arguments are :class:`~hpcspec.curvature.operator.HessianOperator`'s (``model``, ``loss``,
    ``data``, ``comm``, ``batch_size``, ``bn_mode``, ``shard_vectors``, ``output_fn``,
    ``target_key``); products are forward-over-reverse, so the model needs forward-mode support
    (every built-in layer has it). The constructor is collective.
    """

    method = "ggn"
    method_reason = "Gauss-Newton: forward-mode J·v, the loss's output Hessian, reverse-mode Jᵀ·"

    def __init__(self, model: nn.Module, loss: Loss | str | Callable, data: Any,
                 comm: Communicator | None = None, *, batch_size: int = 256, bn_mode: str = "eval",
                 shard_vectors: bool = DEFAULT_SHARD_VECTORS,
                 output_fn: Callable[[Any], torch.Tensor] = logits_of, target_key: str = "labels") -> None:
        comm = comm or SingleProcess()
        check_bn_mode(bn_mode)
        loss = get_loss(loss)
        if batch_size <= 0:
            raise InputError(f"batch_size must be > 0, got {batch_size}")
        layout = ParamLayout.of(model)
        if layout.size == 0:
            raise InputError("the model has no parameters that require gradients")
        check_weights(model, comm)
        if any(p.dtype == torch.float16 for p in model.parameters()):
            raise InputError(f"the model holds float16 parameters, which hpcspec refuses: {FLOAT16_REASON}")
        super().__init__(layout.size, comm, make_space(comm, layout.size, shard_vectors))
        self.bn_mode, self.model, self.output_fn, self.layout, self.loss = bn_mode, model, output_fn, layout, loss
        self._batch_stat_norms = [m for m in model.modules() if isinstance(m, _BatchNorm)] if bn_mode == "train" else []
        named = dict(model.named_parameters())
        self._params = [named[name] for name in layout.names]
        self._take_data(data, batch_size, target_key)

    def _batch_products(self, inputs: Inputs, targets: torch.Tensor,
                        tangents: list[list[torch.Tensor]]) -> BatchProducts:
        from torch.func import functional_call, jvp, vjp

        names = self.layout.names
        primals = tuple(p.detach() for p in self._params)
        args, kwargs = inputs_as_args(inputs)

        def output(*values: torch.Tensor) -> torch.Tensor:
            with frozen_running_stats(self._batch_stat_norms):
                return self.output_fn(functional_call(self.model, dict(zip(names, values)), args, kwargs))

        z, pull = vjp(output, *primals)
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.loss.sum(z, targets), z, create_graph=True)
        products: BatchProducts = []
        for j, tangent in enumerate(tangents):
            _, jv = jvp(output, primals, tuple(tangent))
            if g.requires_grad:
                (hjv,) = torch.autograd.grad(g, z, grad_outputs=jv, retain_graph=j < len(tangents) - 1)
            else:  # a loss linear in the output: no curvature through it
                hjv = torch.zeros_like(z)
            products.append(list(pull(hjv)))
        return products
