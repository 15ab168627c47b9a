"""Set-up of a pipelined run (``model.stages = S > 1``): the S × D grid, data shard d for every
stage of pipe d, the whole model built on the CPU from the seed (every rank alike) and cut into
stages, this rank's stage kept in the analysis dtype on its device, and the pipelined operator.

Also the per-rank memory plan ``run --dry-run`` prints before a long job (:func:`memory_plan`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..config import Config
from ..errors import InputError
from ..curvature.pipeline import PipelineHessianOperator
from ..parallel.agree import agreed
from ..parallel.comm import Communicator
from ..parallel.device import Threads
from ..parallel.grid import Grid, grid_shape, make_grid
from ..problem.data import Shard, load_shard, memory_budget
from ..problem.losses import check_labels, get_loss
from ..problem.params import ParamLayout
from ..problem.stages import Stage, check_stages, split_stages
from .setup import DTYPES, Workload, data_shape, job_model

log = logging.getLogger(__name__)


@dataclass
class Staged:
    """A pipelined run's grid, its stages (modules shared with the whole model) and their ranges."""

    grid: Grid
    stages: list[Stage]
    offsets: list[int]


def load_data_shard(cfg: Config, shard: int, shards: int, local_size: int) -> Shard:
    """Data shard ``shard`` of ``shards`` (local): what every stage of that pipe reads."""
    data = load_shard(cfg.data.spec, shard, shards, samples=cfg.data.samples, features=cfg.data.features,
                      classes=cfg.data.classes, outputs=cfg.data.outputs, seed=cfg.seed, granule=1,
                      split=cfg.data.split, normalize=cfg.data.normalize, context=cfg.data.context,
                      vocab=cfg.data.vocab, max_bytes=memory_budget(cfg.data.max_gb, local_size))
    check_labels(get_loss(cfg.hessian.loss), data.targets, cfg.data.spec, data.inputs)
    return data


def _cut(model: torch.nn.Module, stages: int, shard: Shard) -> tuple[list[Stage], list[int]]:
    """The stages and their flat-vector offsets; one sample pushed through them (shapes checked)."""
    cut = split_stages(model, stages)
    if len(shard):
        check_stages(cut, shard.inputs[:1].to(torch.get_default_dtype()) if shard.inputs.dtype.is_floating_point
                     else shard.inputs[:1])
    offsets = [0]
    for stage in cut:
        offsets.append(offsets[-1] + sum(p.numel() for p in stage.parameters() if p.requires_grad))
    return cut, offsets


def build_staged_workload(cfg: Config, comm: Communicator, threads: Threads | None = None) -> tuple[Workload, Staged]:
    """The grid, this rank's data shard, the whole model (CPU, default dtype) and its stages (a
    collective step: every local failure is agreed, so every rank raises it together)."""
    agreed(comm, grid_shape, comm.size, cfg.model.stages)
    grid = make_grid(comm, cfg.model.stages, cfg.model.placement)
    loss = agreed(comm, get_loss, cfg.hessian.loss)
    shard = agreed(comm, load_data_shard, cfg, grid.shard, grid.shards, comm.local_size)
    if threads is not None:
        log.info("data %s: %d samples; pipeline of %d stages × %d data shards, this rank is stage %d of "
                 "shard %d, holding samples [%d, %d); %s", cfg.data.spec, shard.total,
                 grid.stages, grid.shards, grid.stage, grid.shard, shard.start, shard.stop, threads)
    shape = data_shape(comm, shard, loss.name)
    model = agreed(comm, job_model, cfg, shape, torch.device("cpu"), keep_dtype=True)
    stages, offsets = agreed(comm, _cut, model, grid.stages, shard)
    return Workload(loss=loss, shard=shard, shape=shape, model=model), Staged(grid, stages, offsets)


def settle_ranges(staged: Staged) -> None:
    """The stages' ranges as they are now (local): ``model.params`` may have frozen parameters
    since the cut; :class:`InputError` when that leaves a stage with none."""
    staged.offsets = [0]
    for each in staged.stages:
        staged.offsets.append(staged.offsets[-1] + sum(p.numel() for p in each.parameters() if p.requires_grad))
    empty = [s for s in range(staged.grid.stages) if staged.offsets[s] == staged.offsets[s + 1]]
    if empty:
        raise InputError(f"model.params leaves pipeline stage {empty[0]} with no parameter of the Hessian: use fewer "
                         "stages or select parameters in every stage")


def staged_operator(cfg: Config, work: Workload, staged: Staged, device: torch.device) -> PipelineHessianOperator:
    """This rank's stage in the analysis dtype on ``device``, and the pipelined operator (collective)."""
    stage = staged.stages[staged.grid.stage].to(device=device, dtype=DTYPES[cfg.hessian.dtype])
    return PipelineHessianOperator(stage, ParamLayout.of(work.model), staged.offsets, staged.grid, work.loss,
                                   work.shard, batch_size=cfg.data.batch_size)


def memory_plan(cfg: Config, staged: Staged, shard: Shard, dtype_bytes: int) -> list[dict[str, Any]]:
    """Per stage, the bytes one rank of it holds (estimates, before any product): its parameters
    and one tangent per parameter in the analysis dtype, the stage inputs it keeps between the
    forward and backward passes (one activation and k tangents per micro-batch: measured by one
    sample's forward, times the samples of the shard), and its slices of the Krylov basis
    (``eigen.max_basis`` or ``top_k + 3·block_size`` vectors) plus one whole applied vector.

    Also what one rank sends per product of k vectors (estimates from the message shapes):
    ``pipe_bytes`` to its neighbouring stages — per sample of its shard, (k + 1) activations
    forward (its output) and (k + 1) cotangents backward (its input), in the analysis dtype — and
    ``stage_bytes``, its part of the reduce-scatter of the stage's float64 block of k partial
    products over the D ranks of the stage (a ring: (D − 1)/D of the block)."""
    grid, plan = staged.grid, []
    widths: list[int] = []
    x: Any = shard.inputs[:1].to(torch.get_default_dtype()) if shard.inputs.dtype.is_floating_point else shard.inputs[:1]
    with torch.no_grad():
        for stage in staged.stages:
            widths.append(x.numel() if x.dtype.is_floating_point else 0)
            x = stage(x)
    widths.append(0)  # the last stage sends nothing forward
    basis = cfg.eigen.max_basis or cfg.eigen.top_k + 3 * cfg.eigen.block_size
    k = cfg.eigen.block_size if cfg.eigen.method == "block" else 1
    for s in range(grid.stages):
        count = staged.offsets[s + 1] - staged.offsets[s]
        plan.append({"stage": s, "parameters": count, "parameter_bytes": 2 * count * dtype_bytes,
                     "kept_input_bytes": widths[s] * len(shard) * (k + 1) * dtype_bytes,
                     "krylov_bytes": (basis * count // grid.shards + staged.offsets[-1] * k) * 8,
                     "pipe_bytes": (widths[s + 1] + (widths[s] if s else 0)) * len(shard) * (k + 1) * dtype_bytes,
                     "stage_bytes": k * count * 8 * (grid.shards - 1) // grid.shards})
    return plan


def dry_run(cfg: Config, comm: Communicator) -> list[dict[str, Any]]:
    """``run --dry-run``: build the grid, the data shards and the stages (no product, no output
    folder) and print, on rank 0, what one rank of each stage will hold (:func:`memory_plan`)."""
    work, staged = build_staged_workload(cfg, comm)
    plan = memory_plan(cfg, staged, work.shard, DTYPES[cfg.hessian.dtype].itemsize)
    if comm.rank == 0:
        grid = staged.grid
        print(f"memory plan: {cfg.model.spec}, {staged.offsets[-1]:,} parameters over {grid.stages} stage(s) × "
              f"{grid.shards} data shard(s) ({comm.size} ranks); per rank of each stage (MiB):")
        print("  stage   parameters   params+tangent   kept inputs   Krylov slices+vector   total")
        for row in plan:
            parts = [row["parameter_bytes"], row["kept_input_bytes"], row["krylov_bytes"]]
            print(f"  {row['stage']:5d}   {row['parameters']:10,d}   {parts[0] / 2**20:14.1f}   {parts[1] / 2**20:11.1f}"
                  f"   {parts[2] / 2**20:20.1f}   {sum(parts) / 2**20:5.1f}")
        print(f"sent per product by one rank of each stage (MiB; placement {cfg.model.placement!r}: "
              f"{'the pipe' if cfg.model.placement == 'pipe' else 'the stage'} on consecutive ranks):")
        print("  stage   to neighbouring stages   stage reduce-scatter")
        for row in plan:
            print(f"  {row['stage']:5d}   {row['pipe_bytes'] / 2**20:22.2f}   {row['stage_bytes'] / 2**20:20.2f}")
    return plan
