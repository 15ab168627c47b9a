"""``python -m hpcspec run --per-block``: the run's tasks once per parameter block (one sub-run per
block, :mod:`hpcspec.commands.sweep`), then ``blocks.h5`` and ``blocks.png``.

A block is the first ``blocks.depth`` components of a parameter's module path; each sub-run's
``model.params`` selects exactly that block's parameters (within the run's own selection).
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path

from ..checkpoint import StopFlag
from ..config import Config
from ..errors import InputError
from ..files.lock import released_after
from ..files.outputs import remove_run
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
    subs = block_runs(cfg, blocks)
    ran = run_sweep(subs, comm, flag)
    path = output / "blocks.h5"
    agreed(comm, _finish_blocks, path, cfg, subs, ran, comm.rank)
    return path


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

