"""One ``hpcspec run`` or ``validate``: set up data, model and operator on every rank, solve, report.

Setup is a sequence of local steps (:func:`~hpcspec.parallel.agree.agreed`: a collective agreement
on failure follows each) and collective steps (:func:`~hpcspec.parallel.agree.collective`: they fail
symmetrically by construction) — so a bad input on any one rank makes every rank exit 2 with the
same message and no rank waits in a collective the others never reach. The shared set-up is in
:mod:`hpcspec.commands.setup`, the checkpoint folder's life cycle in :mod:`hpcspec.commands.resume`,
and writing the results in :mod:`hpcspec.commands.finish`.

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
from copy import deepcopy as copy_module
import logging
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
    model_fingerprint,
)
from ..config import Config, to_toml
from ..errors import InputError
from ..curvature.dense import MAX_DENSE_PARAMS, dense_hessian
from ..curvature.fullbatch import train_full_batch
from ..curvature.operator import HessianOperator
from ..curvature.preflight import check_operator, check_operator_modes, default_symmetry_tol
from ..files.outputs import released_after
from ..parallel.agree import AgreedInputError, agreed, collective
from ..parallel.comm import Communicator
from ..parallel.progress import ProgressDisplay
from ..parallel.grid import launcher_bounds
from ..parallel.vectors import Sharded, stage_bounds
from ..problem.losses import Loss
from ..problem.shards import AnyShard
from ..problem.params import select_parameters
from ..results.provenance import provenance, versions
from ..results.records import RunInfo
from ..solvers.base import State
from ..solvers.lanczos import LanczosResult
from .finish import write_outputs
from .resume import (
    check_fresh_start,
    checkpoint_dir_ready,
    finished_already,
    flat_parameters,
    mark_complete,
    remove_previous_run,
    restore_parameters,
    resume_from,
)
from .setup import DTYPES, TRAIN_IN_FLOAT32, build_workload, checkpoint_dir, claim_output, start_rank
from .stages import build_staged_workload, settle_ranges, staged_operator

#: ``checkpoint.hdf5_locking`` as the value of HDF5's ``HDF5_USE_FILE_LOCKING``.
HDF5_LOCKING_ENV = {"true": "TRUE", "false": "FALSE", "best-effort": "BEST_EFFORT"}

log = logging.getLogger(__name__)


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
    shard: AnyShard
    op: HessianOperator
    loss_value: float
    device: torch.device
    started: float
    store: CheckpointStore | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    loaded: Loaded | None = None
    complete: bool = False


def prepare(cfg: Config, comm: Communicator, *, checkpoints: bool = False, resume: bool = False,
            overwrite: bool = False) -> Problem:
    """Output directory, data shard, model, operator, sanity checks and optional training (collective).

    With ``checkpoints``, also the checkpoint store (stale temporaries removed) and, with
    ``resume``, the checkpoint to continue from: its weights replace training. ``overwrite``
    removes the files of the run already in the output folder (only hpcspec's), but only once
    everything that can refuse this run (data, model, sizes, the operator check) has passed.
    """
    started = time.perf_counter()
    threads, device = start_rank(cfg, comm)
    if cfg.checkpoint.hdf5_locking in HDF5_LOCKING_ENV:
        os.environ["HDF5_USE_FILE_LOCKING"] = HDF5_LOCKING_ENV[cfg.checkpoint.hdf5_locking]
    output = agreed(comm, claim_output, cfg, comm)
    store = None
    if checkpoints:
        store = CheckpointStore(checkpoint_dir(cfg), comm, keep=cfg.checkpoint.keep,
                                locking=cfg.checkpoint.hdf5_locking)
        agreed(comm, checkpoint_dir_ready, store, comm, cfg.force_output)
        if not overwrite:  # --overwrite deletes the previous run only once this one can start (below)
            _clean_start(store, comm, resume)
    staged = None
    if cfg.model.stages > 1:
        work, staged = collective(comm, build_staged_workload, cfg, comm, threads)
    else:
        work = collective(comm, build_workload, cfg, comm, device, threads)
    loss, shard, model = work.loss, work.shard, work.model
    unselected = agreed(comm, _select, model, cfg.model.params)
    if staged is not None:
        agreed(comm, settle_ranges, staged)
        if store is not None:  # each rank writes and reads its stage's slices: known before a resume loads them
            grid = staged.grid
            store.bounds = launcher_bounds(stage_bounds(staged.offsets, grid.shards), grid.stages, grid.shards,
                                           cfg.model.placement)
    identity: dict[str, Any] = {}
    loaded = None
    if store is not None:
        size = sum(p.numel() for p in model.parameters() if p.requires_grad)
        identity = {"config": config_identity(cfg), "model": model_fingerprint(model),
                    "data": data_fingerprint(shard, comm), "num_params": size}
        if not overwrite and comm.bcast_object(agreed(comm, finished_already, store, identity, output, resume, comm)):
            log.info("this run already finished: results in %s", output / "results.h5")
            return Problem(cfg=cfg, comm=comm, output=output, shard=shard, op=None, loss_value=float("nan"),  # type: ignore[arg-type]
                           device=device, started=started, store=store, identity=identity, complete=True)
        if resume:
            loaded = resume_from(store, comm, identity)
    method, reason, trials = cfg.hessian.hvp, "", 0
    if loaded is not None and staged is None:  # a pipelined run's weights are the seed's (no training)
        agreed(comm, restore_parameters, model, loaded.state["params"])
        method = loaded.meta.get("hvp_method", method)  # the recorded choice, not decided again
        reason = loaded.meta.get("hvp_reason", "recorded in the checkpoint")
        trials = int(loaded.meta.get("hvp_trial_products", 0))

    def operator() -> HessianOperator:
        nonlocal method, reason, trials
        if staged is not None:
            return collective(comm, staged_operator, cfg, work, staged, device)  # type: ignore[return-value]
        made = build_operator(cfg, comm, model, loss, shard, method)
        # decided once: the training operator's choice is the analysis operator's (then named)
        method, reason, trials = made.method, reason or made.method_reason, trials + made.trial_products
        record_method(made, reason, trials)
        return made

    if cfg.train.steps and loaded is None:
        if cfg.hessian.dtype in TRAIN_IN_FLOAT32:  # Adam on bfloat16 weights loses its small updates
            model.to(torch.float32)
        with _unfrozen(unselected):  # every parameter is trained, then H is taken over the selection
            history = train_full_batch(operator(), cfg.train.steps, cfg.train.lr)
        log.info("trained %d full-batch Adam steps%s: loss %.4g -> %.4g", cfg.train.steps,
                 " in float32, then rounded to " + cfg.hessian.dtype if cfg.hessian.dtype in TRAIN_IN_FLOAT32 else "",
                 history[0], history[-1])
        model.to(DTYPES[cfg.hessian.dtype])
    op = operator()
    del work, model  # a pipelined run keeps only its stage: the other stages' modules go with the whole model
    if staged is not None:
        staged.stages.clear()
    log.info("model %s: %s parameters in the Hessian%s", cfg.model.spec, f"{op.size:,}",
             f" (frozen, excluded: {', '.join(op.layout.excluded)})" if op.layout.excluded else "")
    agreed(comm, _check_sizes, cfg, op.size)
    if cfg.hessian.check:
        # rank 0 judges the reduced products and broadcasts its verdict: every rank fails (or not) alike
        check = collective(comm, check_operator, op, seed=cfg.seed, symmetry_tol=default_symmetry_tol(cfg.hessian.dtype))
        log.info("operator check: H·v repeatable bitwise, symmetry error %.1e (%d products)",
                 check.symmetry_error, check.num_matvecs)
    loss_value, _ = op.loss_and_gradient()
    if overwrite and store is not None:  # everything that can refuse this run has passed: now replace the old one
        removed = comm.bcast_object(agreed(comm, remove_previous_run, output, store, comm))
        log.warning("--overwrite: removed %d file(s) of the previous run in %s%s", len(removed), output,
                    f" ({', '.join(removed[:8])}{' …' if len(removed) > 8 else ''})" if removed else "")
        agreed(comm, checkpoint_dir_ready, store, comm, cfg.force_output)
        _clean_start(store, comm, resume=False)
    return Problem(cfg=cfg, comm=comm, output=output, shard=shard, op=op, loss_value=loss_value, device=device,
                   started=started, store=store, identity=identity, loaded=loaded)


def _clean_start(store: CheckpointStore, comm: Communicator, resume: bool) -> None:
    """Remove the temporaries a killed run left; refuse to start afresh over a resumable run."""
    stale = collective(comm, store.remove_stale)
    if stale:
        log.warning("removed %d unfinished checkpoint write(s) left by a killed run: %s", len(stale), ", ".join(stale))
    if not resume:
        agreed(comm, check_fresh_start, store, comm)


def record_method(op: HessianOperator, reason: str, trials: int) -> None:
    """Keep on ``op`` why its HVP method was chosen and the trial products that took: on a resume
    those recorded in the checkpoint (the method is reused, not decided again), otherwise this
    run's (``auto``'s rule, or "named"; the trials of every operator it built, the trainer's too)."""
    op.method_reason, op.trial_products = reason, trials


def build_operator(cfg: Config, comm: Communicator, model: nn.Module, loss: Loss, shard: AnyShard,
                   method: str) -> HessianOperator:
    """The run's operator on ``model`` (collective), its data and modes checked (agreed)."""
    made = collective(comm, HessianOperator, model, loss, shard, comm, batch_size=cfg.data.batch_size,
                      method=method, bn_mode=cfg.hessian.bn_mode, graph_budget_mb=cfg.hessian.graph_budget_mb,
                      shard_vectors=cfg.hessian.shard_vectors, reduction=cfg.hessian.reduction)
    agreed(comm, made.check_data)
    agreed(comm, check_operator_modes, made)
    return made


def reference_operator(problem: Problem) -> HessianOperator:
    """The float64 operator ``validate`` compares with (collective): the run's own when it computes
    in float64, else one on a float64 copy of its model — the same weights exactly (every float32 and
    bfloat16 number is a float64 number), on the same data, batches and settings — so the errors
    ``validate`` reports are those of the chosen dtype's arithmetic."""
    op = problem.op
    if op.compute_dtype == torch.float64:
        return op
    log.info("validate: the reference is the dense Hessian of a float64 copy of the %s model",
             problem.cfg.hessian.dtype)
    copy = copy_module(op.model).to(torch.float64)
    return build_operator(problem.cfg, problem.comm, copy, op.loss, problem.shard, op.method)


def _check_sizes(cfg: Config, size: int) -> None:
    if "eigen" in cfg.tasks and cfg.eigen.top_k > size:
        raise InputError(f"eigen.top_k = {cfg.eigen.top_k} exceeds the number of parameters in the Hessian ({size})")


def _checkpointer(problem: Problem, flag: StopFlag) -> Checkpointer:
    cfg, op = problem.cfg, problem.op
    meta = {"identity": problem.identity, "hvp_method": op.method, "hvp_reason": op.method_reason,
            "hvp_trial_products": op.trial_products, "config_toml": to_toml(cfg),
            "versions": {k: v for k, v in versions(problem.comm).items() if k != "communicator"}}
    return Checkpointer(problem.store, problem.comm, op.size, every_iters=cfg.checkpoint.every_iters,  # type: ignore[arg-type]
                        every_seconds=cfg.checkpoint.every_seconds, max_overhead=cfg.checkpoint.max_overhead,
                        flag=flag, meta=meta)


def _solve(problem: Problem, checkpointer: Checkpointer | None = None) -> TaskResults:
    """Every task, and with a ``checkpointer`` a final commit of every task's state before any result
    is written (so a failed results write is recovered by ``--resume`` without recomputing)."""
    staged = problem.cfg.model.stages > 1  # its weights are the seed's: nothing to save but the solvers' state
    params = flat_parameters(problem.op.model) if checkpointer is not None and not staged else None

    def extra_state() -> State:
        # every weight, also those outside model.params: a whole array (rank 0's file), not a vector of length P
        return {"params": params.numpy()} if params is not None else {}

    def final(state: Any) -> None:
        if checkpointer is not None and (problem.loaded is None or checkpointer.boundaries or checkpointer.commits):
            checkpointer.commit(state())

    results = run_tasks(problem.op, problem.cfg, progress=log.info,
                        checkpoint=checkpointer.boundary if checkpointer is not None else None,
                        resume=problem.loaded.state if problem.loaded is not None else None,
                        extra_state=extra_state, finished=final if checkpointer is not None else None,
                        display=progress_display(problem))
    if results.eigen is not None and getattr(results.eigen, "rows", None) is not None:
        results.eigen = _whole_on_root(problem.op.space, results.eigen)
    if results.eigen is not None and not results.eigen.converged:
        log.warning("eigenpairs did not converge within eigen.maxiter: residuals %s",
                    ", ".join(f"{r:.2e}" for r in results.eigen.residuals))
    if results.trace is not None and not results.trace.converged:
        log.warning("trace: trace.rtol = %g not reached within trace.matvecs = %d (standard error %.3g)",
                    problem.cfg.trace.rtol, problem.cfg.trace.matvecs, results.trace.stderr)
    return results


def progress_display(problem: Problem) -> ProgressDisplay:
    """Rank 0's progress display for the run's tasks (``progress.every_seconds``), through the log."""
    return ProgressDisplay(problem.comm.rank, problem.cfg.progress.every_seconds, log.info)


def _whole_on_root(space: Sharded, result: LanczosResult) -> LanczosResult:
    """Rank 0 gets the k whole Ritz vectors to write (k·P numbers, never a basis); the other ranks
    keep their rows. The rows are gathered over the space's communicator, whose rank order is the
    rows' (a pipelined grid renumbers the launcher's ranks); its rank 0 is the launcher's."""
    whole = space.comm.gather_rows(result.eigenvectors.contiguous(), space.bounds)
    return dataclasses.replace(result, eigenvectors=whole, rows=None) if whole is not None else result


def _run_info(problem: Problem, results: TaskResults, checkpointer: Checkpointer | None = None) -> RunInfo:
    cfg, comm = problem.cfg, problem.comm
    commits = checkpointer.commits if checkpointer is not None else []
    checkpoints = {"checkpoints": len(commits), "checkpoint_seconds": checkpointer.seconds if checkpointer else 0.0,
                   "checkpoint_bytes": max((c.nbytes for c in commits), default=0),
                   "resumed_from": str(problem.loaded.path) if problem.loaded is not None else ""}
    return RunInfo(model=cfg.model.spec, data=cfg.data.spec, loss=cfg.hessian.loss, num_samples=problem.shard.total,
                   world_size=comm.size, dtype=cfg.hessian.dtype, hvp_method=problem.op.method,
                   hvp_reason=problem.op.method_reason, hvp_trial_products=problem.op.trial_products,
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
        if problem.store is not None:
            agreed(comm, mark_complete, problem.store, comm, problem.identity, cfg)
        return results


def validate_job(cfg: Config, comm: Communicator, max_params: int = MAX_DENSE_PARAMS) -> Validation | None:
    """``validate``: the run's tasks, then each one's error against the dense float64 Hessian
    (returned on rank 0; None on the other ranks)."""
    with released_after(cfg.output):
        return _validate(cfg, comm, max_params)


def _validate(cfg: Config, comm: Communicator, max_params: int) -> Validation | None:
    problem = prepare(cfg, comm)
    agreed(comm, _check_dense_size, problem.op.size, max_params)
    results = _solve(problem)
    reference = reference_operator(problem)
    log.info("building the dense float64 Hessian: %s products", f"{problem.op.size:,}")
    started = time.perf_counter()
    display = progress_display(problem)
    meter = display.task("dense Hessian", problem.op.size, bound=False)
    try:
        matrix = dense_hessian(reference, max_params=max_params, progress=meter.update)
    finally:
        display.finished(meter)
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
    """Rank 0: the run's files and console summary (:func:`~hpcspec.commands.finish.write_outputs`)."""
    write_outputs(problem.comm, problem.cfg, problem.output, problem.op.layout, results, info, validation, kept)
