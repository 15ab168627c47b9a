"""Sweeps: many ordinary runs collected into one file — ``track`` (one run per training checkpoint,
Ghorbani, Krishnan & Xiao 2019 §3) and ``run --per-block`` (one run per parameter block).

Each sub-run is a normal :func:`hpcspec.commands.run.run_job` into its own output subfolder, always with
``resume``: a finished sub-run is skipped by its ``COMPLETE`` marker (so rerunning ``track``
after new checkpoints appear runs only the new ones), and one stopped by a signal continues from
its own checkpoints. A stop signal in any sub-run ends the whole sweep with exit code 3 (the
:class:`~hpcspec.checkpoint.StopRequested` of that sub-run propagates); rerunning the same
command continues at that sub-run. Once every sub-run is done, rank 0 reads their ``results.h5``
files and writes ``track.h5`` / ``blocks.h5`` and the plots, which
:mod:`hpcspec.results.sweepplots` draws from those files alone (so ``report`` can redraw them offline).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from ..checkpoint import StopFlag
from ..config import Config, valid_keys
from ..errors import InputError
from ..files.outputs import atomic_path, released_after, remove_run
from ..parallel.agree import agreed
from ..parallel.comm import Communicator
from ..parallel.logs import setup_logging
from ..results.sweepplots import blocks_plots, track_plots
from ..solvers import smoothed_density, spectral_grid
from .setup import checkpoint_dir, claim_output, data_shape, job_model, load_data

#: A training checkpoint written by ``python -m hpcspec train``: ``step_00001000.pt``.
STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
#: The config ``train`` stores beside its checkpoints.
TRAIN_TOML = "train.toml"
#: Sections of ``train.toml`` that ``track`` takes as its defaults (and the top-level ``seed``,
#: which seeds synthetic data sets).
TRAIN_SECTIONS = ("model", "data", "hessian")


@dataclass(frozen=True)
class SubRun:
    """One run of a sweep: its label (``step_00000100``, ``layer1.0``) and its whole config."""

    label: str
    cfg: Config

    @property
    def output(self) -> Path:
        return Path(self.cfg.output)


def _with(cfg: Config, *, output: Path, **model: Any) -> Config:
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

    log = setup_logging(comm)
    ran = []
    for i, sub in enumerate(subs, start=1):
        log.info("sweep %d/%d: %s -> %s", i, len(subs), sub.label, sub.output)
        ran.append(run_job(sub.cfg, comm, resume=True, flag=flag) is not None)
        setup_logging(comm)  # the sub-run may have reconfigured the logger
    return ran


# ---------------------------------------------------------------------------------------------
# Reading the sub-runs back

@dataclass
class RunNumbers:
    """The few numbers a sweep collects from one sub-run's ``results.h5`` (NaN / None when absent)."""

    num_params: int
    loss: float
    eigenvalues: np.ndarray | None = None
    residuals: np.ndarray | None = None
    trace: float = math.nan
    trace_stderr: float = math.nan
    gradient_fraction: float = math.nan
    atoms: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def top(self) -> float:
        return float(self.eigenvalues[0]) if self.eigenvalues is not None and len(self.eigenvalues) else math.nan


def read_numbers(path: Path) -> RunNumbers:
    """Top eigenvalues, trace, gradient fraction, loss and the SLQ measure of one ``results.h5``."""
    try:
        with h5py.File(path, "r") as f:
            numbers = RunNumbers(num_params=int(f.attrs["num_params"]), loss=float(f.attrs["loss_value"]))
            if "eigen" in f:
                numbers.eigenvalues = f["eigen/values"][...].astype(np.float64)
                numbers.residuals = f["eigen/residuals"][...].astype(np.float64)
            if "trace" in f:
                numbers.trace = float(f["trace"].attrs["estimate"])
                numbers.trace_stderr = float(f["trace"].attrs["stderr"])
            if "gradient" in f and "fraction" in f["gradient"]:
                numbers.gradient_fraction = float(f["gradient/fraction"][()])
            if "density" in f:
                nodes, weights = f["density/nodes"][...], f["density/weights"][...]
                # padded nodes carry weight 0; each probe's weights sum to 1
                numbers.atoms = nodes.ravel().astype(np.float64)
                numbers.weights = weights.ravel().astype(np.float64) / nodes.shape[0]
            return numbers
    except (OSError, KeyError) as exc:
        raise InputError(f"cannot read the sub-run results {str(path)!r} ({exc})") from None


def _stack(rows: list[np.ndarray | None]) -> np.ndarray:
    """(S, k) from per-run vectors, NaN-padded where a run found fewer (or none)."""
    width = max((len(r) for r in rows if r is not None), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        if row is not None:
            out[i, :len(row)] = row
    return out


def _write_common(f: h5py.File, numbers: list[RunNumbers]) -> None:
    """The datasets ``track.h5`` and ``blocks.h5`` share, one row per sub-run."""
    f.create_dataset("num_params", data=np.array([n.num_params for n in numbers], dtype=np.int64))
    f.create_dataset("loss", data=np.array([n.loss for n in numbers]))
    if any(n.eigenvalues is not None for n in numbers):
        f.create_dataset("eigenvalues", data=_stack([n.eigenvalues for n in numbers]))
        f.create_dataset("residuals", data=_stack([n.residuals for n in numbers]))
    if any(not math.isnan(n.trace) for n in numbers):
        f.create_dataset("trace", data=np.array([n.trace for n in numbers]))
        f.create_dataset("trace_stderr", data=np.array([n.trace_stderr for n in numbers]))
    if any(not math.isnan(n.gradient_fraction) for n in numbers):
        f.create_dataset("gradient_fraction", data=np.array([n.gradient_fraction for n in numbers]))


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


def _strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=object)


# ---------------------------------------------------------------------------------------------
# track

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
    return [SubRun(f"step_{step:08d}", _with(cfg, output=root / "steps" / f"step_{step:08d}",
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
    write_track(path, cfg, [step for step, _ in steps], subs, numbers)
    plots = _plots(track_plots, path)
    labels = [f"{step}" for step, _ in steps]
    print(sweep_table(f"track: {len(subs)} checkpoints ({sum(ran)} analysed now, {len(ran) - sum(ran)} "
                      "already done)", "step", labels, numbers), flush=True)
    print("  ".join([f"track: {path}", *(f"plot: {p}" for p in plots)]), flush=True)


def write_track(path: Path, cfg: Config, steps: list[int], subs: list[SubRun], numbers: list[RunNumbers]) -> None:
    """``track.h5``: one row per checkpoint (README "track")."""
    from ..config import to_toml

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"kind": "track", "config": to_toml(cfg), "model": cfg.model.spec, "data": cfg.data.spec,
                        "loss": cfg.hessian.loss, "tasks": ",".join(cfg.tasks)})
        f.create_dataset("step", data=np.array(steps, dtype=np.int64))
        f.create_dataset("weights", data=_strings([sub.cfg.model.weights for sub in subs]),
                         dtype=h5py.string_dtype())
        f.create_dataset("runs", data=_strings([str(sub.output.relative_to(cfg.output) / "results.h5")
                                                for sub in subs]), dtype=h5py.string_dtype())
        _write_common(f, numbers)
        if all(n.atoms is not None for n in numbers):
            grid, values, sigma = common_density(numbers, cfg.density.sigma, cfg.density.grid)
            group = f.create_group("density")
            group.create_dataset("grid", data=grid)
            group.create_dataset("values", data=values)
            group.attrs.update({"sigma": sigma, "sigma_fraction": cfg.density.sigma,
                                "source": "each step's SLQ nodes and weights, broadened on the common grid"})


# ---------------------------------------------------------------------------------------------
# run --per-block

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
    from ..parallel.device import select_device
    from ..problem.losses import get_loss
    loss = agreed(comm, get_loss, cfg.hessian.loss)
    shard = agreed(comm, load_data, cfg, comm)
    shape = data_shape(comm, shard, loss.name)
    model = agreed(comm, job_model, cfg, shape, select_device(comm))  # every parameter (no model.params selection)
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    return comm.bcast_object(names if comm.rank == 0 else None)


def _check_blocks(blocks: list[tuple[str, str, list[str]]], cfg: Config) -> None:
    if not blocks:
        raise InputError(f"model.params = {cfg.model.params!r} selects no parameter: --per-block has no block to run")


def block_runs(cfg: Config, blocks: list[tuple[str, str, list[str]]]) -> list[SubRun]:
    """One sub-run per block, ``model.params`` its selection, into ``<output>/blocks/<block>``."""
    root = Path(cfg.output)
    return [SubRun(block, _with(cfg, output=root / "blocks" / block, params=selection))
            for block, selection, _ in blocks]


def blocks_job(cfg: Config, comm: Communicator, flag: StopFlag | None = None, overwrite: bool = False) -> Path:
    """``run --per-block``: the tasks once per parameter block, then ``blocks.h5`` and ``blocks.png``
    (``overwrite``: first remove every file of the sweep already in the output folder)."""
    with released_after(cfg.output):
        return _blocks(cfg, comm, flag, overwrite)


def _blocks(cfg: Config, comm: Communicator, flag: StopFlag | None, overwrite: bool) -> Path:
    log = setup_logging(comm)
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
    write_blocks(path, cfg, subs, numbers)
    plots = _plots(blocks_plots, path)
    print(sweep_table(f"per-block: {len(subs)} blocks ({sum(ran)} analysed now, {len(ran) - sum(ran)} already "
                      "done)", "block", [sub.label for sub in subs], numbers,
                      sizes=[n.num_params for n in numbers]), flush=True)
    print("  ".join([f"blocks: {path}", *(f"plot: {p}" for p in plots)]), flush=True)


def write_blocks(path: Path, cfg: Config, subs: list[SubRun], numbers: list[RunNumbers]) -> None:
    """``blocks.h5``: one row per block (README "--per-block")."""
    from ..config import to_toml

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"kind": "blocks", "config": to_toml(cfg), "model": cfg.model.spec, "data": cfg.data.spec,
                        "loss": cfg.hessian.loss, "depth": cfg.blocks.depth, "tasks": ",".join(cfg.tasks)})
        f.create_dataset("block", data=_strings([sub.label for sub in subs]), dtype=h5py.string_dtype())
        f.create_dataset("params", data=_strings([sub.cfg.model.params for sub in subs]), dtype=h5py.string_dtype())
        f.create_dataset("runs", data=_strings([str(sub.output.relative_to(cfg.output) / "results.h5")
                                                for sub in subs]), dtype=h5py.string_dtype())
        _write_common(f, numbers)


# ---------------------------------------------------------------------------------------------
# Console

def _plots(draw: Callable[[Path], list[Path]], path: Path) -> list[Path]:
    """Draw the plots of ``path``; a missing matplotlib costs the figures, never the numbers."""
    try:
        return draw(path)
    except ImportError as exc:
        print(f"hpcspec: plots not written: {exc}", file=sys.stderr, flush=True)
        return []


def sweep_table(title: str, what: str, labels: list[str], numbers: list[RunNumbers],
                sizes: list[int] | None = None) -> str:
    """The short table rank 0 prints: per row the top eigenvalue, trace ± stderr, gradient fraction."""
    width = max([len(what), *(len(label) for label in labels)])
    head = f"  {what:>{width}}" + (f"  {'params':>10}" if sizes else "")
    head += f"  {'top eigenvalue':>16}  {'trace ± stderr':>26}  {'grad. fraction':>14}"
    lines = [title, head]
    for i, (label, n) in enumerate(zip(labels, numbers)):
        row = f"  {label:>{width}}" + (f"  {sizes[i]:>10,}" if sizes else "")
        row += f"  {_num(n.top):>16}"
        trace = "—" if math.isnan(n.trace) else f"{n.trace:.6g} ± {n.trace_stderr:.2g}"
        row += f"  {trace:>26}  {_num(n.gradient_fraction, '.4f'):>14}"
        lines.append(row)
    return "\n".join(lines)


def _num(value: float, fmt: str = ".8g") -> str:
    return "—" if math.isnan(value) else format(value, fmt)
