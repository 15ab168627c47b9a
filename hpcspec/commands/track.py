"""``python -m hpcspec track``: one ordinary run per training checkpoint (Ghorbani, Krishnan & Xiao
2019 §3), then ``track.h5`` and its plots.

The checkpoints are the ``step_*.pt`` files ``train`` wrote; ``train.toml`` beside them gives the
model, data and Hessian settings the run defaults to. Each checkpoint is a resumable sub-run of
:mod:`hpcspec.commands.sweep` (rerunning ``track`` after new checkpoints appear runs only the new
ones); ``track.h5`` holds one row per checkpoint and the spectral densities of all of them
broadened on one common grid.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import StopFlag
from ..config import Config, valid_keys
from ..errors import InputError
from ..files.outputs import released_after
from ..parallel.agree import agreed
from ..parallel.comm import Communicator
from ..results.hdf5 import read_numbers
from ..results.records import RunNumbers
from ..results.sweep_hdf5 import write_track
from ..results.sweepplots import track_plots
from ..results.text import sweep_table
from ..solvers import smoothed_density, spectral_grid
from .setup import claim_output
from .sweep import SubRun, draw_plots, run_sweep, sub_config, sub_results

#: A training checkpoint written by ``python -m hpcspec train``: ``step_00001000.pt``.
STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
#: The config ``train`` stores beside its checkpoints.
TRAIN_TOML = "train.toml"
#: Sections of ``train.toml`` that ``track`` takes as its defaults (and the top-level ``seed``,
#: which seeds synthetic data sets).
TRAIN_SECTIONS = ("model", "data", "hessian")


def checkpoint_files(directory: Path) -> list[tuple[int, Path]]:
    """``directory/step_*.pt`` as (step, path), ascending by the integer step."""
    if not directory.is_dir():
        raise InputError(f"checkpoint folder {str(directory)!r} does not exist (give the --output folder of "
                         "python -m hpcspec train)")
    found = sorted((int(m.group(1)), path) for path in directory.iterdir()
                   if path.is_file() and (m := STEP_FILE.match(path.name)))
    if not found:
        raise InputError(f"no training checkpoints (step_*.pt) in {str(directory)!r}")
    steps = [step for step, _ in found]
    if len(set(steps)) != len(steps):
        raise InputError(f"{str(directory)!r} holds two checkpoint files of one step (e.g. step_1.pt and "
                         "step_00000001.pt)")
    return found


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    from ..config import tomllib

    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} {str(path)!r} ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{what} {str(path)!r} is not valid TOML ({exc})") from None


def train_defaults(directory: Path) -> dict[str, Any]:
    """The ``[model]``, ``[data]`` and ``[hessian]`` keys and ``seed`` of ``directory/train.toml``
    as dotted config keys ({} when there is no such file)."""
    path = directory / TRAIN_TOML
    if not path.is_file():
        return {}
    tree = _read_toml(path, "training config")
    base = _flatten({section: tree[section] for section in TRAIN_SECTIONS if isinstance(tree.get(section), dict)})
    if "seed" in tree:
        base["seed"] = tree["seed"]
    known = set(valid_keys())
    unknown = sorted(set(base) - known)
    if unknown:
        raise InputError(f"{str(path)!r} holds keys this hpcspec does not know ({', '.join(unknown)}); "
                         "was it written by another version?")
    base.pop("model.weights", None)  # each checkpoint's weights replace it
    return base


def track_config(args: argparse.Namespace) -> tuple[Config, list[tuple[int, Path]]]:
    """``track``'s config and checkpoints (local; every rank computes the same).

    Defaults → ``train.toml`` (model, data, hessian, seed) → ``--config`` file → flags → ``--set``.
    """
    from ..config import flag_overrides, layered_config

    directory = Path(args.checkpoint_dir)
    steps = checkpoint_files(directory)
    base = train_defaults(directory)
    explicit: dict[str, Any] = {}
    if args.config:
        explicit = _flatten(_read_toml(Path(args.config), "config file"))
    flags = flag_overrides(vars(args), "run")
    named = set(explicit) | set(flags) | {item.partition("=")[0].strip() for item in args.set}
    if not base and not {"model.spec", "data.spec"} <= named:
        raise InputError(f"{str(directory)!r} has no {TRAIN_TOML}: name the model and the data (--model and --data) "
                         "the checkpoints were trained with")
    # the --config file must override train.toml: both go in as the base, under the flags
    cfg = layered_config(base={**base, **explicit}, flags=flags, sets=args.set)
    if cfg.train.steps:
        raise InputError("track analyses the saved checkpoints as they are: train.steps must be 0")
    if cfg.model.weights:
        raise InputError("track loads each checkpoint's weights itself: do not set model.weights / --weights")
    return cfg, steps


def step_runs(cfg: Config, steps: list[tuple[int, Path]]) -> list[SubRun]:
    """One sub-run per checkpoint: its weights, into ``<output>/steps/step_XXXXXXXX``."""
    root = Path(cfg.output)
    return [SubRun(f"step_{step:08d}", sub_config(cfg, output=root / "steps" / f"step_{step:08d}",
                                                   weights=str(path.resolve())))
            for step, path in steps]


def track_job(cfg: Config, steps: list[tuple[int, Path]], comm: Communicator,
              flag: StopFlag | None = None) -> Path:
    """``python -m hpcspec track``: every checkpoint's run, then ``track.h5`` and the plots (collective)."""

    with released_after(cfg.output):
        output = agreed(comm, claim_output, cfg, comm)
        subs = step_runs(cfg, steps)
        ran = run_sweep(subs, comm, flag)
        path = output / "track.h5"
        agreed(comm, _finish_track, path, cfg, steps, subs, ran, comm.rank)
        return path


def _finish_track(path: Path, cfg: Config, steps: list[tuple[int, Path]], subs: list[SubRun], ran: list[bool],
                  rank: int) -> None:
    if rank != 0:
        return
    numbers = [read_numbers(sub.output / "results.h5") for sub in subs]
    density = None
    if all(n.atoms is not None for n in numbers):
        density = common_density(numbers, cfg.density.sigma, cfg.density.grid)
    write_track(path, cfg, [step for step, _ in steps], [sub.cfg.model.weights for sub in subs],
                sub_results(cfg, subs), numbers, density)
    plots = draw_plots(track_plots, path)
    labels = [f"{step}" for step, _ in steps]
    print(sweep_table(f"track: {len(subs)} checkpoints ({sum(ran)} analysed now, {len(ran) - sum(ran)} "
                      "already done)", "step", labels, numbers), flush=True)
    print("  ".join([f"track: {path}", *(f"plot: {p}" for p in plots)]), flush=True)



def common_density(numbers: list[RunNumbers], sigma_fraction: float,
                   points: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Every run's SLQ measure broadened on one grid spanning all runs, with one Gaussian width
    σ = ``sigma_fraction`` × (the common range), so the rows of the heat map compare like for like.

    Returns ``(grid (G,), values (S, G), sigma)``.
    """
    every = np.concatenate([n.atoms for n in numbers if n.atoms is not None])
    grid, sigma = spectral_grid(every, sigma_fraction, points)
    values = np.stack([smoothed_density(n.atoms, n.weights, grid, sigma) for n in numbers])
    return grid, values, sigma
