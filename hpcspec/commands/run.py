"""One ``hpcspec run`` or ``validate``: set up data, model and operator on every rank, solve, report.

Setup is a sequence of local steps, each followed by a collective agreement on failure, with the
collectives kept between them — so a bad input on any one rank makes every rank exit 2 with the
same message and no rank waits in a collective the others never reach.

``run`` checkpoints (:mod:`hpcspec.checkpoint`): with ``resume`` it continues from the newest
verified checkpoint whose configuration, model and data match this run's; the analysed weights
(after any training) and the HVP method are restored from it, so the continuation is bitwise the
uninterrupted run at the same number of ranks. When the solvers finish, a final checkpoint holding
every task's state is committed before any result file is written, so a results write that fails
(a full disk: exit 2, one line) loses nothing — ``--resume`` rebuilds the results from it without a
Hessian product. Once the results are on disk the checkpoints are replaced by a ``COMPLETE``
marker, so rerunning a finished job with ``--resume`` is a no-op; a fresh run into a finished
run's folder, or a ``--resume`` with other settings, is refused (exit 2, naming the differing
keys) unless ``--overwrite`` removes the old run's files first.

The output folder is claimed by rank 0 before any write (:func:`hpcspec.files.outputs.claim`: refused
when it holds a user's files, locked against a second run) and released when the job ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..analyses.tasks import TaskResults, run_tasks
from ..analyses.validation import Validation, validate_results
from ..checkpoint import (
    Checkpointer,
    CheckpointStore,
    Loaded,
    StopFlag,
    config_identity,
    data_fingerprint,
    describe_mismatch,
    model_fingerprint,
)
from ..config import Config, to_toml
from ..errors import InputError
from ..files.atomic import WriteFailed, write_text_atomic
from ..files.lock import released_after
from ..files.outputs import remove_run
from ..hessian.dense import MAX_DENSE_PARAMS, dense_hessian
from ..hessian.fullbatch import train_full_batch
from ..hessian.operator import HessianOperator
from ..hessian.preflight import check_model_modes, check_operator
from ..parallel.agree import AgreedInputError, agreed
from ..parallel.comm import Communicator, SingleProcess
from ..parallel.device import select_device, set_threads
from ..parallel.logs import setup_logging
from ..parallel.vectors import Sharded
from ..problem.data import Shard
from ..problem.losses import get_loss
from ..problem.params import select_parameters
from ..results.hdf5 import write_results
from ..results.plots import write_density_plot, write_landscape_plots
from ..results.provenance import provenance, versions
from ..results.records import RunInfo
from ..results.text import console_summary, summary, validation_table, write_summary
from ..solvers.base import State
from ..solvers.lanczos import LanczosResult
from .setup import (
    checkpoint_dir,
    claim_output,
    data_shape,
    job_model,
    load_data,
)

#: Written in the checkpoint directory once a run's results are safely on disk.
COMPLETE = "COMPLETE"
HDF5_LOCKING_ENV = {"true": "TRUE", "false": "FALSE", "best-effort": "BEST_EFFORT"}


def _select(model: nn.Module, patterns: str) -> list[nn.Parameter]:
    """Freeze the parameters outside ``model.params`` (H is then the selected ones' diagonal block);
    returns those the selection froze, so training before the analysis can still move them."""
    trainable = [param for param in model.parameters() if param.requires_grad]
    select_parameters(model, patterns)
    return [param for param in trainable if not param.requires_grad]


@contextlib.contextmanager
def _unfrozen(params: list[nn.Parameter]) -> Iterator[None]:
    """``params`` require gradients inside (training trains every parameter, not only the selection)."""
    for param in params:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param in params:
            param.requires_grad_(False)


@dataclass
class Problem:
    """A set-up run on this rank: where it writes, its data, its operator, and the loss it analyses."""

    cfg: Config
    comm: Communicator
    output: Path
    shard: Shard
    op: HessianOperator
    loss_value: float
    device: torch.device
    started: float
    store: CheckpointStore | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    loaded: Loaded | None = None
    complete: bool = False


def _flat_parameters(model: nn.Module) -> torch.Tensor:
    """Every parameter of the model, also those outside ``model.params``: training before the
    analysis moved them too, and a resumed run must analyse the same weights."""
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in model.parameters()])


def _restore_parameters(model: nn.Module, flat: Any) -> None:
    """Copy a checkpoint's flat weights (an array; a tensor in older checkpoints) into ``model``."""
    flat = torch.as_tensor(flat)
    params = list(model.parameters())
    if flat.numel() != sum(p.numel() for p in params):
        raise InputError(f"the checkpoint holds {flat.numel():,} parameter values but the model has "
                         f"{sum(p.numel() for p in params):,}: it was written by another version of hpcspec")
    pieces = torch.split(flat, [p.numel() for p in params])
    with torch.no_grad():
        for param, piece in zip(params, pieces):
            param.copy_(piece.view_as(param).to(param.dtype))


def stored_config(output: Path) -> str:
    """The config TOML of the run whose checkpoints (or COMPLETE marker) are in ``output/checkpoints``."""
    directory = output / "checkpoints"
    store = CheckpointStore(directory, SingleProcess())
    for _, path in store.candidates():
        try:
            return store.read_manifest(path)["meta"]["config_toml"]
        except (ValueError, KeyError):
            continue
    try:
        return json.loads((directory / COMPLETE).read_text())["config_toml"]
    except (OSError, ValueError, KeyError):
        raise InputError(f"{str(output)!r} holds no checkpoint to resume (no readable manifest in "
                         f"{str(directory)!r})") from None


def _checkpoint_dir_ready(store: CheckpointStore, comm: Communicator) -> None:
    """Rank 0: create the checkpoint directory now, so a bad path fails before any work."""
    if comm.rank != 0:
        return
    try:
        store.directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create checkpoint directory {str(store.directory)!r} ({exc.strerror})") from None
    if not os.access(store.directory, os.W_OK | os.X_OK):
        raise InputError(f"checkpoint directory {str(store.directory)!r} is not writable")


def _check_fresh_start(store: CheckpointStore, comm: Communicator) -> None:
    """Rank 0: refuse to start over a run that could be resumed (its progress would be pruned)."""
    if comm.rank != 0:
        return
    found = store.committed()
    if found and not (store.directory / COMPLETE).exists():
        raise InputError(f"{str(store.directory)!r} holds checkpoints of an unfinished run ({found[0][1].name}); "
                         "add --resume to continue it, or --overwrite to delete it and start over")


def _overwrite(output: Path, store: CheckpointStore, comm: Communicator) -> list[str]:
    """Rank 0, ``--overwrite``: remove every file of the run in ``output`` (only hpcspec's)."""
    return remove_run(output, store.directory) if comm.rank == 0 else []


def _completed(store: CheckpointStore, identity: dict[str, Any], output: Path, resume: bool,
               comm: Communicator) -> bool:
    """Rank 0: whether the run in ``output`` already finished with this identity (``--resume``:
    nothing to do). A finished run with other settings, or any finished run without ``--resume``,
    is refused — it would be overwritten — naming the differing keys."""
    if comm.rank != 0:
        return False
    marker = store.directory / COMPLETE
    try:
        saved = json.loads(marker.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        saved = {}
    fix = "use another --output, or add --overwrite to replace it"
    problem = describe_mismatch(saved, identity) if saved else "its COMPLETE marker is unreadable"
    if problem is not None:
        raise InputError(f"{str(output)!r} holds a finished run with other settings ({problem}); {fix}")
    if not resume:
        raise InputError(f"{str(output)!r} holds a finished run of these settings (results.h5); add --resume to "
                         f"keep it (nothing to recompute), or {fix}")
    if (output / "results.h5").is_file():
        return True
    marker.unlink()  # the results were deleted since: the same run computes them again
    return False


def _resume_from(store: CheckpointStore, comm: Communicator, identity: dict[str, Any]) -> Loaded | None:
    """The newest verified checkpoint, checked against this run's identity (collective)."""
    log = setup_logging(comm)
    loaded = store.load()
    if loaded is None:
        log.info("no checkpoint in %s: starting from the beginning", store.directory)
        return None
    problem = describe_mismatch(loaded.meta.get("identity", {}), identity)
    if problem is not None:
        raise InputError(f"checkpoint {str(loaded.path)!r} is of another run ({problem}); resume with the "
                         "settings it was written with, or use another output directory")
    log.info("resuming from checkpoint %s (written by %d rank%s)", loaded.path, loaded.world_size,
             "" if loaded.world_size == 1 else "s")
    here = {k: v for k, v in versions(comm).items() if k != "communicator"}
    changed = [f"{k} {v} there, {here.get(k)} here" for k, v in loaded.meta.get("versions", {}).items()
               if here.get(k) != v]
    if changed:
        log.warning("the checkpoint was written with other library versions (%s): the resumed run agrees with an "
                    "uninterrupted one to rounding, not bitwise", "; ".join(changed))
    return loaded


def prepare(cfg: Config, comm: Communicator, *, checkpoints: bool = False, resume: bool = False,
            overwrite: bool = False) -> Problem:
    """Output directory, data shard, model, operator, sanity checks and optional training (collective).

    With ``checkpoints``, also the checkpoint store (stale temporaries removed) and, with
    ``resume``, the checkpoint to continue from: its weights replace training. ``overwrite``
    first removes the files of the run already in the output folder (only hpcspec's).
    """
    log = setup_logging(comm)
    started = time.perf_counter()
    threads = set_threads(comm, cfg.threads)
    device = select_device(comm)
    if cfg.checkpoint.hdf5_locking in HDF5_LOCKING_ENV:
        os.environ["HDF5_USE_FILE_LOCKING"] = HDF5_LOCKING_ENV[cfg.checkpoint.hdf5_locking]
    output = agreed(comm, claim_output, cfg, comm)
    store = None
    if checkpoints:
        store = CheckpointStore(checkpoint_dir(cfg), comm, keep=cfg.checkpoint.keep,
                                locking=cfg.checkpoint.hdf5_locking)
        agreed(comm, _checkpoint_dir_ready, store, comm)
        if overwrite:
            removed = comm.bcast_object(agreed(comm, _overwrite, output, store, comm))
            log.warning("--overwrite: removed %d file(s) of the previous run in %s%s", len(removed), output,
                        f" ({', '.join(removed[:8])}{' …' if len(removed) > 8 else ''})" if removed else "")
            agreed(comm, _checkpoint_dir_ready, store, comm)
        stale = agreed(comm, store.remove_stale)
        if stale:
            log.warning("removed %d unfinished checkpoint write(s) left by a killed run: %s", len(stale),
                        ", ".join(stale))
        if not resume:
            agreed(comm, _check_fresh_start, store, comm)
    loss = agreed(comm, get_loss, cfg.hessian.loss)
    shard = agreed(comm, load_data, cfg, comm)
    log.info("data %s: %d samples, this rank holds [%d, %d); %d thread(s) per rank on %s",
             cfg.data.spec, shard.total, shard.start, shard.stop, threads, device)
    shape = data_shape(comm, shard, loss.name)
    model = agreed(comm, job_model, cfg, shape, device)
    unselected = agreed(comm, _select, model, cfg.model.params)
    identity: dict[str, Any] = {}
    loaded = None
    if store is not None:
        size = sum(p.numel() for p in model.parameters() if p.requires_grad)
        identity = {"config": config_identity(cfg), "model": model_fingerprint(model),
                    "data": data_fingerprint(shard, comm), "num_params": size}
        if comm.bcast_object(agreed(comm, _completed, store, identity, output, resume, comm)):
            log.info("this run already finished: results in %s", output / "results.h5")
            return Problem(cfg=cfg, comm=comm, output=output, shard=shard, op=None, loss_value=float("nan"),  # type: ignore[arg-type]
                           device=device, started=started, store=store, identity=identity, complete=True)
        if resume:
            loaded = agreed(comm, _resume_from, store, comm, identity)
    method = cfg.hessian.hvp
    if loaded is not None:
        agreed(comm, _restore_parameters, model, loaded.state["params"])
        method = loaded.meta.get("hvp_method", method)

    def operator() -> HessianOperator:
        made = HessianOperator(model, loss, shard, comm, batch_size=cfg.data.batch_size, method=method,
                               bn_mode=cfg.hessian.bn_mode, graph_budget_mb=cfg.hessian.graph_budget_mb,
                               shard_vectors=cfg.hessian.shard_vectors, reduction=cfg.hessian.reduction)
        agreed(comm, made.check_data)
        agreed(comm, check_model_modes, made.model, cfg.hessian.bn_mode)
        return made

    if cfg.train.steps and loaded is None:
        with _unfrozen(unselected):  # every parameter is trained, then H is taken over the selection
            history = train_full_batch(operator(), cfg.train.steps, cfg.train.lr)
        log.info("trained %d full-batch Adam steps: loss %.4g -> %.4g", cfg.train.steps, history[0], history[-1])
    op = operator()
    log.info("model %s: %s parameters in the Hessian%s", cfg.model.spec, f"{op.size:,}",
             f" (frozen, excluded: {', '.join(op.layout.excluded)})" if op.layout.excluded else "")
    agreed(comm, _check_sizes, cfg, op.size)
    if cfg.hessian.check:
        # The products are reduced, so every rank sees the same numbers and fails (or not) alike.
        check = agreed(comm, check_operator, op, seed=cfg.seed)
        log.info("operator check: H·v repeatable bitwise, symmetry error %.1e (%d products)",
                 check.symmetry_error, check.num_matvecs)
    loss_value, _ = op.loss_and_gradient()
    return Problem(cfg=cfg, comm=comm, output=output, shard=shard, op=op, loss_value=loss_value, device=device,
                   started=started, store=store, identity=identity, loaded=loaded)


def _check_sizes(cfg: Config, size: int) -> None:
    if "eigen" in cfg.tasks and cfg.eigen.top_k > size:
        raise InputError(f"eigen.top_k = {cfg.eigen.top_k} exceeds the number of parameters in the Hessian ({size})")


def _checkpointer(problem: Problem, flag: StopFlag) -> Checkpointer:
    cfg, op = problem.cfg, problem.op
    meta = {"identity": problem.identity, "hvp_method": op.method, "config_toml": to_toml(cfg),
            "versions": {k: v for k, v in versions(problem.comm).items() if k != "communicator"}}
    return Checkpointer(problem.store, problem.comm, op.size, every_iters=cfg.checkpoint.every_iters,  # type: ignore[arg-type]
                        every_seconds=cfg.checkpoint.every_seconds, max_overhead=cfg.checkpoint.max_overhead,
                        flag=flag, meta=meta)


def _solve(problem: Problem, checkpointer: Checkpointer | None = None) -> TaskResults:
    """Every task, and with a ``checkpointer`` a final commit of every task's state before any result
    is written (so a failed results write is recovered by ``--resume`` without recomputing)."""
    log = setup_logging(problem.comm)
    params = _flat_parameters(problem.op.model) if checkpointer is not None else None

    def extra_state() -> State:
        # every weight, also those outside model.params: a whole array (rank 0's file), not a vector of length P
        return {"params": params.numpy()} if params is not None else {}

    def final(state: Any) -> None:
        if checkpointer is not None and (problem.loaded is None or checkpointer.boundaries or checkpointer.commits):
            checkpointer.commit(state())

    results = run_tasks(problem.op, problem.cfg, progress=log.info,
                        checkpoint=checkpointer.boundary if checkpointer is not None else None,
                        resume=problem.loaded.state if problem.loaded is not None else None,
                        extra_state=extra_state, finished=final if checkpointer is not None else None)
    if results.eigen is not None and getattr(results.eigen, "rows", None) is not None:
        results.eigen = _whole_on_root(problem.comm, problem.op.space, results.eigen)
    if results.eigen is not None and not results.eigen.converged:
        log.warning("eigenpairs did not converge within eigen.maxiter: residuals %s",
                    ", ".join(f"{r:.2e}" for r in results.eigen.residuals))
    if results.trace is not None and not results.trace.converged:
        log.warning("trace: trace.rtol = %g not reached within trace.matvecs = %d (standard error %.3g)",
                    problem.cfg.trace.rtol, problem.cfg.trace.matvecs, results.trace.stderr)
    return results


def _whole_on_root(comm: Communicator, space: Sharded, result: LanczosResult) -> LanczosResult:
    """Rank 0 gets the k whole Ritz vectors to write (k·P numbers, never a basis); the other ranks
    keep their rows."""
    whole = comm.gather_rows(result.eigenvectors.contiguous(), space.bounds)
    return dataclasses.replace(result, eigenvectors=whole, rows=None) if whole is not None else result


def _run_info(problem: Problem, results: TaskResults, checkpointer: Checkpointer | None = None) -> RunInfo:
    cfg, comm = problem.cfg, problem.comm
    commits = checkpointer.commits if checkpointer is not None else []
    checkpoints = {"checkpoints": len(commits), "checkpoint_seconds": checkpointer.seconds if checkpointer else 0.0,
                   "checkpoint_bytes": max((c.nbytes for c in commits), default=0),
                   "resumed_from": str(problem.loaded.path) if problem.loaded is not None else ""}
    return RunInfo(model=cfg.model.spec, data=cfg.data.spec, loss=cfg.hessian.loss, num_samples=problem.shard.total,
                   world_size=comm.size, dtype=cfg.hessian.dtype, hvp_method=problem.op.method,
                   bn_mode=cfg.hessian.bn_mode, loss_value=problem.loss_value,
                   seconds=time.perf_counter() - problem.started, config_toml=to_toml(cfg),
                   provenance={**provenance(comm, problem.device), **checkpoints} if comm.rank == 0 else {})


def run_job(cfg: Config, comm: Communicator, *, resume: bool = False, flag: StopFlag | None = None,
            overwrite: bool = False) -> TaskResults | None:
    """The whole ``run`` subcommand on this rank; rank 0 writes the outputs and prints the summary.

    ``flag`` is set by the stop-signal handlers (the CLI installs them for the life of the
    process): at the next iteration boundary every rank commits a checkpoint and
    :class:`~hpcspec.checkpoint.StopRequested` is raised (exit 3). Returns None when ``resume``
    finds the run already finished. ``overwrite`` replaces a run already in the output folder.
    """
    if resume and overwrite:
        raise AgreedInputError("--resume keeps the run in the output folder and --overwrite deletes it: choose one")
    with released_after(cfg.output):
        problem = prepare(cfg, comm, checkpoints=True, resume=resume, overwrite=overwrite)
        if problem.complete:
            return None
        checkpointer = _checkpointer(problem, flag or StopFlag())
        results = _solve(problem, checkpointer)
        info = _run_info(problem, results, checkpointer)
        kept = checkpointer.commits[-1].path if checkpointer.commits else problem.loaded.path if problem.loaded else None
        agreed(comm, _write_outputs, problem, results, info, None, kept)
        agreed(comm, _mark_complete, problem)
        return results


def _mark_complete(problem: Problem) -> None:
    """Rank 0, after the results are on disk: the COMPLETE marker, then drop the checkpoints."""
    store = problem.store
    if problem.comm.rank != 0 or store is None:
        return
    try:
        store.directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(store.directory / COMPLETE,
                          json.dumps({**problem.identity, "config_toml": to_toml(problem.cfg)}, sort_keys=True))
    except OSError as exc:
        raise InputError(f"cannot write {str(store.directory / COMPLETE)!r} ({exc.strerror})") from None
    store.clear_local()


def validate_job(cfg: Config, comm: Communicator, max_params: int = MAX_DENSE_PARAMS) -> Validation | None:
    """``validate``: the run's tasks, then each one's error against the dense float64 Hessian
    (returned on rank 0; None on the other ranks)."""
    with released_after(cfg.output):
        return _validate(cfg, comm, max_params)


def _validate(cfg: Config, comm: Communicator, max_params: int) -> Validation | None:
    problem = prepare(cfg, comm)
    agreed(comm, _check_dense_size, problem.op.size, max_params)
    results = _solve(problem)
    log = setup_logging(comm)
    log.info("building the dense Hessian: %s products", f"{problem.op.size:,}")
    started = time.perf_counter()
    matrix = dense_hessian(problem.op, max_params=max_params)
    log.info("dense Hessian built in %.2f s", time.perf_counter() - started)
    # every rank holds the same reduced matrix; only rank 0 reports, so only it decomposes it
    validation = validate_results(matrix, results, sigma_fraction=cfg.density.sigma) if comm.rank == 0 else None
    agreed(comm, _write_outputs, problem, results, _run_info(problem, results), validation)
    return validation


def _check_dense_size(size: int, max_params: int) -> None:
    if size > max_params:
        raise InputError(f"validate builds the dense {size:,} × {size:,} Hessian ({8 * size * size / 2**30:.1f} GiB); "
                         f"the model has more than --max-params {max_params:,} parameters: validate a smaller model")


def _write_outputs(problem: Problem, results: TaskResults, info: RunInfo, validation: Validation | None,
                   kept: Path | None = None) -> None:
    """Rank 0: results.h5, summary.json and the plots. A failed write is one line naming the file and
    the cause and, when ``kept`` (the committed checkpoint holding this state) is given, how to write
    them again from it."""
    if problem.comm.rank != 0:
        return
    try:
        _write_files(problem, results, info, validation)
    except WriteFailed as exc:
        hint = (f"; nothing is lost: the computed state is in checkpoint {str(kept)!r}, free space and rerun with "
                "--resume to write the results without recomputing") if kept is not None else ""
        raise WriteFailed(f"{exc}{hint}") from None


def _write_files(problem: Problem, results: TaskResults, info: RunInfo, validation: Validation | None) -> None:
    output, layout = problem.output, problem.op.layout
    plot = None
    try:
        write_results(output / "results.h5", results, layout, info, validation)
        write_summary(output / "summary.json", summary(results, layout, info, validation))
        if results.density is not None and problem.cfg.density.plot:
            plot = output / "density.png"
            write_density_plot(plot, results, info)
    except ImportError as exc:  # the numbers are written; a missing plotting library must not lose them
        setup_logging(problem.comm).warning("density.png not written: %s", exc)
        plot = None
    if results.landscape is not None:
        try:
            write_landscape_plots(output / "results.h5", output)
        except OSError as exc:  # reading results.h5 back
            raise WriteFailed(f"cannot write the landscape plots to {str(output)!r} ({exc})") from None
        except ImportError as exc:
            setup_logging(problem.comm).warning("landscape plots not written: %s", exc)
    print(console_summary(results, layout, info, output, plot), flush=True)
    if validation is not None:
        print(validation_table(validation, results), flush=True)
