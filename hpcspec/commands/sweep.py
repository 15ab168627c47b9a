"""Sweeps: many ordinary runs collected into one file — ``track`` (one run per training checkpoint,
:mod:`hpcspec.commands.track`) and ``run --per-block`` (one run per parameter block,
:mod:`hpcspec.commands.blocks`). This module holds what both do alike.

Each sub-run is a normal :func:`hpcspec.commands.run.run_job` into its own output subfolder, always with
``resume``: a finished sub-run is skipped by its ``COMPLETE`` marker (so rerunning ``track``
after new checkpoints appear runs only the new ones), and one stopped by a signal continues from
its own checkpoints. A stop signal in any sub-run ends the whole sweep with exit code 3 (the
:class:`~hpcspec.checkpoint.StopRequested` of that sub-run propagates); rerunning the same
command continues at that sub-run. Once every sub-run is done, rank 0 reads their ``results.h5``
files (:func:`hpcspec.results.hdf5.read_numbers`) and writes ``track.h5`` / ``blocks.h5``
(:mod:`hpcspec.results.sweep_hdf5`) and the plots, which :mod:`hpcspec.results.sweepplots` draws
from those files alone (so ``report`` can redraw them offline).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..checkpoint import StopFlag
from ..config import Config
from ..parallel.comm import Communicator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubRun:
    """One run of a sweep: its label (``step_00000100``, ``layer1.0``) and its whole config."""

    label: str
    cfg: Config

    @property
    def output(self) -> Path:
        return Path(self.cfg.output)


def sub_config(cfg: Config, *, output: Path, **model: Any) -> Config:
    """``cfg`` writing to ``output`` (checkpoints in its own subfolder of ``checkpoint.dir`` when set),
    with the ``[model]`` keys in ``model`` replaced."""
    checkpoint = cfg.checkpoint
    if checkpoint.dir:
        relative = output.relative_to(cfg.output)
        checkpoint = dataclasses.replace(checkpoint, dir=str(Path(checkpoint.dir) / relative / "checkpoints"))
    return dataclasses.replace(cfg, output=str(output), checkpoint=checkpoint,
                               model=dataclasses.replace(cfg.model, **model))


def run_sweep(subs: list[SubRun], comm: Communicator, flag: StopFlag | None) -> list[bool]:
    """Every sub-run in order, each resumable and skipped when already finished (collective).

    Returns, per sub-run, whether it computed anything now (False: it had finished before). A
    stop signal raises :class:`~hpcspec.checkpoint.StopRequested` out of the sub-run it hits.
    """
    from .run import run_job

    ran = []
    for i, sub in enumerate(subs, start=1):
        log.info("sweep %d/%d: %s -> %s", i, len(subs), sub.label, sub.output)
        ran.append(run_job(sub.cfg, comm, resume=True, flag=flag) is not None)
    return ran


def sub_results(cfg: Config, subs: list[SubRun]) -> list[str]:
    """Each sub-run's ``results.h5``, relative to the sweep's output folder (the file's ``runs`` column)."""
    return [str(sub.output.relative_to(cfg.output) / "results.h5") for sub in subs]


def draw_plots(draw: Callable[[Path], list[Path]], path: Path) -> list[Path]:
    """Draw the plots of ``path``; a missing matplotlib costs the figures, never the numbers."""
    try:
        return draw(path)
    except ImportError as exc:
        print(f"hpcspec: plots not written: {exc}", file=sys.stderr, flush=True)
        return []
