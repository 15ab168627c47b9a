"""``python -m hpcspec run --per-block``: the run's tasks once per parameter block (one sub-run per
block, :mod:`hpcspec.commands.sweep`), then ``blocks.h5`` and ``blocks.png``.

A block is the first ``blocks.depth`` components of a parameter's module path; each sub-run's
``model.params`` selects exactly that block's parameters (within the run's own selection).

``--train-steps`` trains once, before the sweep, every parameter as ``run`` does; the weights go
to ``OUTPUT/trained.pt`` and every sub-run analyses them (``model.weights``, no training of its
own), so each block's Hessian is a diagonal block of the one trained network's.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from pathlib import Path

import torch

from ..checkpoint import StopFlag
from ..config import Config
from ..errors import InputError
from ..files.atomic import write_atomic
from ..files.outputs import released_after, remove_run
from ..curvature.fullbatch import train_full_batch
from ..curvature.operator import HessianOperator
from ..parallel.agree import agreed, collective
from ..parallel.comm import Communicator
from ..parallel.device import select_device
from ..results.hdf5 import read_numbers
from ..results.sweep_hdf5 import write_blocks
from ..results.sweepplots import blocks_plots
from ..results.text import sweep_table
from .setup import build_workload, checkpoint_dir, claim_output
from .sweep import SubRun, draw_plots, run_sweep, sub_config, sub_results

log = logging.getLogger(__name__)

#: The weights ``--per-block --train-steps`` trains once and every block's sub-run analyses.
TRAINED = "trained.pt"


def block_of(name: str, depth: int) -> str:
    """The first ``depth`` components of a parameter's module path (the name itself for a
    parameter owned by the top-level module)."""
    path = name.split(".")[:-1]
    return ".".join(path[:depth]) if path else name


def _selected(name: str, globs: str) -> bool:
    patterns = [g.strip() for g in globs.split(",") if g.strip()]
    return not patterns or any(fnmatch.fnmatchcase(name, g) for g in patterns)


def parameter_blocks(names: list[str], depth: int, selection: str = "") -> list[tuple[str, str, list[str]]]:
    """``(block, params selection, parameter names)`` per block, in parameter order.

    The selection is ``"<block>.*"`` when that glob picks exactly the block's parameters (within
    ``selection``, the run's own ``model.params``), else the comma-separated names themselves.
    """
    chosen = [n for n in names if _selected(n, selection)]
    blocks: dict[str, list[str]] = {}
    for name in chosen:
        blocks.setdefault(block_of(name, depth), []).append(name)
    found = []
    for block, members in blocks.items():
        glob = block if members == [block] else f"{block}.*"
        exact = [n for n in names if fnmatch.fnmatchcase(n, glob)] == members
        found.append((block, glob if exact else ",".join(members), members))
    return found


def _trainable_names(cfg: Config, comm: Communicator) -> list[str]:
    """The names of the parameters that require gradients, from the model built as ``prepare``
    builds it (collective: the data shape is agreed over ranks); rank 0's list on every rank."""
    model = collective(comm, build_workload, cfg, comm, select_device(comm)).model  # every parameter
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    return comm.bcast_object(names if comm.rank == 0 else None)


def _check_blocks(blocks: list[tuple[str, str, list[str]]], cfg: Config) -> None:
    if not blocks:
        raise InputError(f"model.params = {cfg.model.params!r} selects no parameter: --per-block has no block to run")


def block_runs(cfg: Config, blocks: list[tuple[str, str, list[str]]]) -> list[SubRun]:
    """One sub-run per block, ``model.params`` its selection, into ``<output>/blocks/<block>``."""
    root = Path(cfg.output)
    return [SubRun(block, sub_config(cfg, output=root / "blocks" / block, params=selection))
            for block, selection, _ in blocks]


def blocks_job(cfg: Config, comm: Communicator, flag: StopFlag | None = None, overwrite: bool = False) -> Path:
    """``run --per-block``: the tasks once per parameter block, then ``blocks.h5`` and ``blocks.png``
    (``overwrite``: first remove every file of the sweep already in the output folder)."""
    with released_after(cfg.output):
        return _blocks(cfg, comm, flag, overwrite)


def _blocks(cfg: Config, comm: Communicator, flag: StopFlag | None, overwrite: bool) -> Path:
    output = agreed(comm, claim_output, cfg, comm)
    if overwrite:
        agreed(comm, lambda: remove_run(output, checkpoint_dir(cfg)) if comm.rank == 0 else None)
    names = _trainable_names(cfg, comm)
    blocks = parameter_blocks(names, cfg.blocks.depth, cfg.model.params)
    agreed(comm, _check_blocks, blocks, cfg)
    log.info("--per-block: %d blocks at depth %d: %s", len(blocks), cfg.blocks.depth,
             ", ".join(block for block, _, _ in blocks))
    subs = block_runs(trained_once(cfg, comm), blocks)
    ran = run_sweep(subs, comm, flag)
    path = output / "blocks.h5"
    agreed(comm, _finish_blocks, path, cfg, subs, ran, comm.rank)
    return path


def trained_once(cfg: Config, comm: Communicator) -> Config:
    """With ``train.steps``: train every parameter once, as ``run`` does (full-batch Adam over all
    ranks, collective), save the weights to ``OUTPUT/trained.pt`` (rank 0, atomically) and return
    ``cfg`` loading them with no training, for the sub-runs; without training, ``cfg`` itself."""
    if not cfg.train.steps:
        return cfg
    work = collective(comm, build_workload, cfg, comm, select_device(comm))
    trainer = collective(comm, HessianOperator, work.model, work.loss, work.shard, comm,
                         batch_size=cfg.data.batch_size, method=cfg.hessian.hvp, bn_mode=cfg.hessian.bn_mode,
                         graph_budget_mb=cfg.hessian.graph_budget_mb, shard_vectors=cfg.hessian.shard_vectors,
                         reduction=cfg.hessian.reduction)
    history = train_full_batch(trainer, cfg.train.steps, cfg.train.lr)
    log.info("--per-block: trained %d full-batch Adam steps once for every block: loss %.4g -> %.4g",
             cfg.train.steps, history[0], history[-1])
    path = Path(cfg.output) / TRAINED
    state = {name: tensor.detach().cpu().clone() for name, tensor in work.model.state_dict().items()}
    agreed(comm, lambda: write_atomic(path, lambda tmp: torch.save(state, tmp)) if comm.rank == 0 else None)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=0),
                               model=dataclasses.replace(cfg.model, weights=str(path)))


def _finish_blocks(path: Path, cfg: Config, subs: list[SubRun], ran: list[bool], rank: int) -> None:
    if rank != 0:
        return
    numbers = [read_numbers(sub.output / "results.h5") for sub in subs]
    write_blocks(path, cfg, [sub.label for sub in subs], [sub.cfg.model.params for sub in subs],
                 sub_results(cfg, subs), numbers)
    plots = draw_plots(blocks_plots, path)
    print(sweep_table(f"per-block: {len(subs)} blocks ({sum(ran)} analysed now, {len(ran) - sum(ran)} already "
                      "done)", "block", [sub.label for sub in subs], numbers,
                      sizes=[n.num_params for n in numbers]), flush=True)
    print("  ".join([f"blocks: {path}", *(f"plot: {p}" for p in plots)]), flush=True)

