"""Exact Hessian-vector products with the model split over pipeline stages (``model.stages``).

Rank (s, d) of the grid (:mod:`hpcspec.parallel.grid`) holds stage s, ``y = f_s(x; θ_s)``, and data
shard d. The product is Pearlmutter's R-operator taken stage by stage (forward over reverse):

* **forward**, stage s → s+1: the activation x and its tangents ẋ_j along each vector v_j:
  ``(y, ẏ_j) = jvp(f_s, (x, θ_s), (ẋ_j, v_{j,s}))`` (``torch.func.jvp``; stage 0 has no ẋ).
* **the last stage** computes the summed loss L of its micro-batch and, by ``jvp`` of
  ``grad(L)`` w.r.t. (x, θ_S), the gradient ``ḡ_x`` and its tangents ``ġ_{x,j}``; the tangent of
  the parameter gradient is its block of H·v_j.
* **backward**, stage s+1 → s: ``(ḡ_y, ġ_{y,j})``. With ``h(x, θ, g) = vjpᵀ(f_s)(x, θ)·g`` (linear
  in g), ``jvp(h, (x, θ_s, ḡ_y), (ẋ_j, v_{j,s}, ġ_{y,j}))`` gives ``(ḡ_x, ḡ_θ)`` and their tangents
  ``(ġ_{x,j}, (H v_j)_s)``: the second-order terms through x and θ and the first-order ones through g.

Each stage keeps only its micro-batches' inputs (x, ẋ) between the passes and recomputes its
forward inside the backward (activation checkpointing at stage boundaries). Micro-batches run
GPipe-style: every forward, then every backward, each stage starting micro-batch b+1 while its
successor works on b; :attr:`PipelineHessianOperator.bubble` is the idle share of the last product.

The loss is the sum over all samples of all data shards divided by the global count (as in
:class:`~hpcspec.curvature.operator.HessianOperator`); a stage's partial block is reduce-scattered
over its D data shards (the stage communicator), so rank (s, d) receives its slice of the space
``stage_bounds``: every solver sees an ordinary sharded space (:class:`~hpcspec.parallel.vectors.Sharded`).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..parallel.grid import Grid
from ..parallel.replicas import check_weights
from ..parallel.vectors import Sharded, all_bounds, stage_bounds
from ..problem.losses import Loss, get_loss
from ..problem.pairing import logits_of
from ..problem.params import ParamLayout
from .base import CurvatureOperator

Params = tuple[torch.Tensor, ...]


class PipelineHessianOperator(CurvatureOperator):
    """H·v of the mean loss with this rank holding one pipeline stage of one data shard.

    Args:
        stage: this rank's stage (:class:`~hpcspec.problem.stages.Stage`), on its device and dtype.
        layout: the whole model's flat layout (every stage's parameters, stage order).
        offsets: ``S + 1`` offsets: stage s holds ``[offsets[s], offsets[s+1])`` of the flat vector.
        grid: this rank's place in the S × D grid.
        loss: as for :class:`~hpcspec.curvature.operator.HessianOperator`.
        data: data shard d (the same samples on every stage of the pipe: stage 0 reads the
            inputs, the last stage the targets).
        batch_size: samples per micro-batch (the last may be shorter).
        output_fn: what of the last stage's output the loss takes.

    The constructor is collective over the world (the global count). A product is not a sum of
    independent batch terms here (the stages exchange every micro-batch), so this operator
    supplies the whole pass (:meth:`_local_products`) and the contract the rest: the partial
    products of stage s's rows are reduce-scattered over its D data shards.
    """

    method = "forward_over_reverse"
    method_reason = "pipeline stages: forward over reverse, stage by stage"

    def __init__(self, stage: nn.Module, layout: ParamLayout, offsets: Sequence[int], grid: Grid,
                 loss: Loss | str | Callable, data: Any, *, batch_size: int = 256,
                 output_fn: Callable[[Any], torch.Tensor] = logits_of, target_key: str = "labels") -> None:
        if len(offsets) != grid.stages + 1 or offsets[0] != 0 or offsets[-1] != layout.size:
            raise InputError(f"{len(offsets) - 1} stage ranges for {grid.stages} stages of {layout.size} parameters")
        if batch_size <= 0:
            raise InputError(f"batch_size must be > 0, got {batch_size}")
        check_weights(stage, grid.stage_comm, agree_comm=grid.world)
        self.offsets = list(offsets)
        lo, hi = self.offsets[grid.stage], self.offsets[grid.stage + 1]
        super().__init__(layout.size, grid.world, Sharded(grid.world, layout.size, stage_bounds(self.offsets, grid.shards)),
                         covered=(lo, hi), reduce_comm=grid.stage_comm)
        self.grid, self.model, self.layout = grid, stage, layout
        self.loss, self.output_fn = get_loss(loss), output_fn
        self.lo_stage, self.hi_stage = lo, hi
        self._names = [name for name, p in stage.named_parameters() if p.requires_grad]
        self._params = [p for p in stage.parameters() if p.requires_grad]
        self._shapes = [tuple(p.shape) for p in self._params]
        if sum(p.numel() for p in self._params) != hi - lo:
            raise InputError(f"stage {grid.stage} holds {sum(p.numel() for p in self._params)} parameters, "
                             f"not the {hi - lo} of its range of the flat vector")
        self._take_data(data, batch_size, target_key)
        #: Of the last product: ``(busy seconds, wall seconds)`` of this stage; idle share 1 − busy/wall.
        self.timing = (0.0, 0.0)

    @property
    def bubble(self) -> float:
        """This stage's idle share of the last product's wall time (waiting for its neighbours)."""
        busy, wall = self.timing
        return 1.0 - busy / wall if wall > 0 else 0.0

    # -- products --------------------------------------------------------------------------------

    def apply_sharded(self, vectors: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Rows ``bounds[rank]`` (this rank's slice of its stage) of ``H @ vectors``: float64 (P,) or (P, k) in."""
        if [tuple(b) for b in bounds] != self.space.bounds:
            raise ValueError("a pipelined operator multiplies in its own space's slices (op.space.bounds)")
        return super().apply_sharded(vectors, bounds)

    def _reduced_bounds(self, bounds: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        return all_bounds(self.hi_stage - self.lo_stage, self.grid.shards)

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H @ vectors`` whole on every rank (each rank's slice, then one allgather)."""
        rows = self.apply_sharded(vectors, self.space.bounds)
        full = self.comm.allgather_rows(rows.reshape(len(rows), -1).contiguous(), self.space.bounds)
        return full.reshape(vectors.shape)

    def _local_products(self, vectors: torch.Tensor, per_batch: bool = False) -> list[torch.Tensor]:
        block = vectors.reshape(self.size, -1)
        k = block.shape[1]
        mine = block[self.lo_stage:self.hi_stage].to(self.device, self.compute_dtype)
        products, _, _ = self._pipeline([self._split(mine[:, j]) for j in range(k)])
        self.num_matvecs += k
        partial = torch.zeros(k, self.hi_stage - self.lo_stage, dtype=torch.float64)
        for j, parts in enumerate(products):
            partial[j] = torch.cat([part.reshape(-1).to("cpu", torch.float64) for part in parts])
        return [partial]

    def _local_gradient(self) -> torch.Tensor:
        _, gradient, loss_sum = self._pipeline([])
        local = torch.zeros(self.hi_stage - self.lo_stage + 1, dtype=torch.float64)
        local[:-1] = torch.cat([g.reshape(-1).to("cpu", torch.float64) for g in gradient])
        local[-1] = loss_sum
        return local

    # -- one pass of every micro-batch through the pipeline --------------------------------------

    def _split(self, flat: torch.Tensor) -> Params:
        out, begin = [], 0
        for shape in self._shapes:
            n = int(torch.Size(shape).numel())
            out.append(flat[begin:begin + n].view(shape))
            begin += n
        return tuple(out)

    def _call(self, x: Any, params: Params) -> Any:
        from torch.func import functional_call

        return functional_call(self.model, dict(zip(self._names, params)), (x,))

    def _pipeline(self, tangents: list[Params]) -> tuple[list[list[torch.Tensor]], list[torch.Tensor], float]:
        """Every micro-batch forward, then backward: per vector this stage's summed (H v)_s (times
        the count), the summed gradient (times the count) and, on the last stage, the loss sum."""
        grid, pipe, k = self.grid, self.grid.pipe_comm, len(tangents)
        params = tuple(p.detach() for p in self._params)
        products = [[torch.zeros_like(p) for p in params] for _ in range(k)]
        gradient = [torch.zeros_like(p) for p in params]
        loss_sum: torch.Tensor | float = 0.0  # a device tensor on the last stage: one host sync per pass
        busy, started = 0.0, time.perf_counter()
        kept: list[tuple[Any, torch.Tensor | None, torch.Tensor]] = []
        for inputs, targets in self._source:  # forward
            if grid.first:
                x, xdots = inputs, None
            else:
                message = pipe.recv_tensor(grid.stage - 1).to(self.device)
                x, xdots = message[0], message[1:]
            kept.append((x, xdots, targets))
            if grid.last:
                continue
            tick = time.perf_counter()
            outgoing = self._forward(x, xdots, params, tangents)
            busy += time.perf_counter() - tick
            pipe.send_tensor(outgoing, grid.stage + 1)
        for x, xdots, targets in kept:  # backward
            if grid.last:
                incoming = None
            else:
                message = pipe.recv_tensor(grid.stage + 1).to(self.device)
                incoming = (message[0], message[1:])
            tick = time.perf_counter()
            g_x, g_theta, dots_x, dots_theta, value = self._backward(x, xdots, targets, incoming, params, tangents)
            for total, part in zip(gradient, g_theta):
                total += part
            for j in range(k):
                for total, part in zip(products[j], dots_theta[j]):
                    total += part
            if value is not None:
                loss_sum = loss_sum + value
            busy += time.perf_counter() - tick
            if not grid.first:
                pipe.send_tensor(torch.stack([g_x, *dots_x]) if k else g_x[None], grid.stage - 1)
        self.timing = (busy, time.perf_counter() - started)
        return products, gradient, float(loss_sum)

    def _forward(self, x: Any, xdots: torch.Tensor | None, params: Params, tangents: list[Params]) -> torch.Tensor:
        """``[y, ẏ_1, …, ẏ_k]`` stacked: the stage's output and its tangents."""
        from torch.func import jvp

        if not tangents:
            with torch.no_grad():
                return self._call(x, params)[None]
        outputs = []
        for j, tangent in enumerate(tangents):
            if xdots is None:
                y, ydot = jvp(lambda p: self._call(x, p), (params,), (tangent,))
            else:
                y, ydot = jvp(lambda x_, p: self._call(x_, p), (x, params), (xdots[j], tangent))
            outputs.append(ydot.detach())
        return torch.stack([y.detach(), *outputs])

    def _backward(self, x: Any, xdots: torch.Tensor | None, targets: torch.Tensor,
                  incoming: tuple[torch.Tensor, torch.Tensor] | None, params: Params,
                  tangents: list[Params]) -> tuple[Any, Params, list[Any], list[Params], torch.Tensor | None]:
        """``(ḡ_x, ḡ_θ, [ġ_{x,j}], [ġ_{θ,j}], loss sum)`` of one micro-batch (see the module docstring);
        the loss sum a float64 0-d tensor on the last stage (no host sync per micro-batch), else None."""
        from torch.func import grad_and_value, jvp, vjp

        first = xdots is None and self.grid.first
        if incoming is None:  # the last stage: the loss and its derivatives
            def loss_of(x_: Any, p: Params) -> torch.Tensor:
                return self.loss.sum(self.output_fn(self._call(x_, p)), targets)

            if first:
                def grads(p: Params) -> Any:
                    return grad_and_value(lambda q: loss_of(x, q))(p)
                primals: tuple = (params,)
            else:
                def grads(x_: Any, p: Params) -> Any:
                    return grad_and_value(loss_of, argnums=(0, 1))(x_, p)
                primals = (x, params)
            if not tangents:
                out, value = grads(*primals)
                dots: list[Any] = []
            else:
                dots = []
                for j, tangent in enumerate(tangents):
                    (out, value), (dot, _) = jvp(grads, primals, (tangent,) if first else (xdots[j], tangent))
                    dots.append(dot)
            value = value.detach().to(torch.float64)
        else:
            g_y, gdots = incoming
            value = None
            if first:
                def pull(p: Params, g: torch.Tensor) -> Any:
                    return vjp(lambda q: self._call(x, q), p)[1](g)[0]
                primals = (params, g_y)
            else:
                def pull(x_: Any, p: Params, g: torch.Tensor) -> Any:
                    return vjp(self._call, x_, p)[1](g)
                primals = (x, params, g_y)
            if not tangents:
                out, dots = pull(*primals), []
            else:
                dots = []
                for j, tangent in enumerate(tangents):
                    pushed = (tangent, gdots[j]) if first else (xdots[j], tangent, gdots[j])
                    out, dot = jvp(pull, primals, pushed)
                    dots.append(dot)
        if first:
            return None, tuple(out), [None] * len(dots), [tuple(d) for d in dots], value
        return (out[0].detach(), tuple(out[1]), [d[0].detach() for d in dots], [tuple(d[1]) for d in dots], value)


def pipelined(model: nn.Module, grid: Grid, loss: Loss | str | Callable, data: Any, *, batch_size: int = 256,
              dtype: torch.dtype | None = None, device: torch.device | None = None,
              **kwargs: Any) -> PipelineHessianOperator:
    """The pipelined operator of a whole ``model`` (built on the CPU, every rank alike): split into
    ``grid.stages`` stages (:func:`~hpcspec.problem.stages.split_stages`), this rank's stage kept
    and moved to ``device``/``dtype``; the other stages' modules are left for the caller to drop.
    A local step up to the constructor (which is collective)."""
    from ..problem.stages import split_stages

    stages = split_stages(model, grid.stages)
    layout = ParamLayout.of(model)
    offsets = [0]
    for stage in stages:
        offsets.append(offsets[-1] + sum(p.numel() for p in stage.parameters() if p.requires_grad))
    stage = stages[grid.stage].to(device=device, dtype=dtype)
    return PipelineHessianOperator(stage, layout, offsets, grid, loss, data, batch_size=batch_size, **kwargs)
