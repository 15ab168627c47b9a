"""One ``hpcspec run`` or ``validate``: set up data, model and operator on every rank, solve, report.

Setup is a sequence of local steps, each followed by a collective agreement on failure, with the
collectives kept between them — so a bad input on any one rank makes every rank exit 2 with the
same message and no rank waits in a collective the others never reach.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checks import check_model_modes, check_operator
from .comm import Communicator, agreed
from .config import Config, to_toml
from .data import Shard, load_shard
from .dense import MAX_DENSE_PARAMS, dense_hessian
from .device import select_device, set_threads
from .errors import InputError
from .logs import setup_logging
from .losses import get_loss
from .models import build_model, load_weights
from .operator import HessianOperator
from .provenance import provenance
from .report import (RunInfo, console_summary, summary, validation_table, write_density_plot, write_results,
                     write_summary)
from .tasks import TaskResults, run_tasks
from .train import train_full_batch
from .validation import Validation, validate_results

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class DataShape:
    """What the zoo needs to size a model, agreed over all ranks' shards."""

    input_dim: int
    output_dim: int


def _data_shape(comm: Communicator, shard: Shard, loss_name: str) -> DataShape:
    """Input width and output width (classes for cross-entropy, target width for MSE), over ranks."""
    local = None
    if len(shard):
        classes = int(shard.targets.max()) + 1 if not shard.targets.dtype.is_floating_point else 0
        local = (shard.inputs[0].numel(), classes, shard.targets[0].numel())
    found = [entry for entry in comm.allgather_object(local) if entry is not None]
    input_dim = found[0][0]
    if loss_name == "cross_entropy":
        return DataShape(input_dim, max(max(entry[1] for entry in found), 1))
    return DataShape(input_dim, found[0][2])


def _output_dir(cfg: Config, comm: Communicator) -> Path:
    """Create the output directory on rank 0 and check it is writable."""
    path = Path(cfg.output)
    if comm.rank == 0:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create output directory {str(path)!r} ({exc.strerror})") from None
        if not path.is_dir():
            raise InputError(f"output {str(path)!r} exists and is not a directory")
        probe = path / f".hpcspec-write-test-{time.time_ns()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise InputError(f"output directory {str(path)!r} is not writable ({exc.strerror})") from None
    return path


def _model(cfg: Config, shape: DataShape, device: torch.device) -> nn.Module:
    model = build_model(cfg.model.spec, input_dim=shape.input_dim, output_dim=shape.output_dim,
                        hidden=cfg.model.hidden, activation=cfg.model.activation, seed=cfg.seed)
    if cfg.model.weights:
        load_weights(model, cfg.model.weights)
    if not any(param.requires_grad for param in model.parameters()):
        raise InputError(f"model {cfg.model.spec!r} has no parameters that require gradients")
    return model.to(device=device, dtype=DTYPES[cfg.hessian.dtype])


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


def prepare(cfg: Config, comm: Communicator) -> Problem:
    """Output directory, data shard, model, operator, sanity checks and optional training (collective)."""
    log = setup_logging(comm)
    started = time.perf_counter()
    threads = set_threads(comm, cfg.threads)
    device = select_device(comm)
    output = agreed(comm, _output_dir, cfg, comm)
    loss = agreed(comm, get_loss, cfg.hessian.loss)
    shard = agreed(comm, load_shard, cfg.data.spec, comm.rank, comm.size, samples=cfg.data.samples,
                   features=cfg.data.features, classes=cfg.data.classes, outputs=cfg.data.outputs,
                   seed=cfg.seed)
    log.info("data %s: %d samples, this rank holds [%d, %d); %d thread(s) per rank on %s",
             cfg.data.spec, shard.total, shard.start, shard.stop, threads, device)
    shape = _data_shape(comm, shard, loss.name)
    model = agreed(comm, _model, cfg, shape, device)
    op = HessianOperator(model, loss, shard, comm, batch_size=cfg.data.batch_size, method=cfg.hessian.hvp,
                         bn_mode=cfg.hessian.bn_mode)
    agreed(comm, op.check_data)
    agreed(comm, check_model_modes, op.model, cfg.hessian.bn_mode)
    log.info("model %s: %s parameters in the Hessian%s", cfg.model.spec, f"{op.size:,}",
             f" (frozen, excluded: {', '.join(op.layout.excluded)})" if op.layout.excluded else "")
    agreed(comm, _check_sizes, cfg, op.size)
    if cfg.train.steps:
        history = train_full_batch(op, cfg.train.steps, cfg.train.lr)
        log.info("trained %d full-batch Adam steps: loss %.4g -> %.4g", cfg.train.steps, history[0], history[-1])
    if cfg.hessian.check:
        # The products are reduced, so every rank sees the same numbers and fails (or not) alike.
        check = agreed(comm, check_operator, op, seed=cfg.seed)
        log.info("operator check: H·v repeatable bitwise, symmetry error %.1e (%d products)",
                 check.symmetry_error, check.num_matvecs)
    loss_value, _ = op.loss_and_gradient()
    return Problem(cfg=cfg, comm=comm, output=output, shard=shard, op=op, loss_value=loss_value, device=device,
                   started=started)


def _check_sizes(cfg: Config, size: int) -> None:
    if "eigen" in cfg.tasks and cfg.eigen.top_k > size:
        raise InputError(f"eigen.top_k = {cfg.eigen.top_k} exceeds the number of parameters in the Hessian ({size})")


def _solve(problem: Problem) -> TaskResults:
    log = setup_logging(problem.comm)
    results = run_tasks(problem.op, problem.cfg, progress=log.info)
    if results.eigen is not None and not results.eigen.converged:
        log.warning("eigenpairs did not converge within eigen.maxiter: residuals %s",
                    ", ".join(f"{r:.2e}" for r in results.eigen.residuals))
    if results.trace is not None and not results.trace.converged:
        log.warning("trace: trace.rtol = %g not reached within trace.matvecs = %d (standard error %.3g)",
                    problem.cfg.trace.rtol, problem.cfg.trace.matvecs, results.trace.stderr)
    return results


def _run_info(problem: Problem, results: TaskResults) -> RunInfo:
    cfg, comm = problem.cfg, problem.comm
    return RunInfo(model=cfg.model.spec, data=cfg.data.spec, loss=cfg.hessian.loss, num_samples=problem.shard.total,
                   world_size=comm.size, dtype=cfg.hessian.dtype, hvp_method=problem.op.method,
                   bn_mode=cfg.hessian.bn_mode, loss_value=problem.loss_value,
                   seconds=time.perf_counter() - problem.started, config_toml=to_toml(cfg),
                   provenance=provenance(comm, problem.device) if comm.rank == 0 else {})


def run_job(cfg: Config, comm: Communicator) -> TaskResults:
    """The whole ``run`` subcommand on this rank; rank 0 writes the outputs and prints the summary."""
    problem = prepare(cfg, comm)
    results = _solve(problem)
    agreed(comm, _write_outputs, problem, results, _run_info(problem, results), None)
    return results


def validate_job(cfg: Config, comm: Communicator, max_params: int = MAX_DENSE_PARAMS) -> Validation | None:
    """``validate``: the run's tasks, then each one's error against the dense float64 Hessian
    (returned on rank 0; None on the other ranks)."""
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


def _write_outputs(problem: Problem, results: TaskResults, info: RunInfo, validation: Validation | None) -> None:
    if problem.comm.rank != 0:
        return
    output, layout = problem.output, problem.op.layout
    plot = None
    try:
        write_results(output / "results.h5", results, layout, info, validation)
        write_summary(output / "summary.json", summary(results, layout, info, validation))
        if results.density is not None and problem.cfg.density.plot:
            plot = output / "density.png"
            write_density_plot(plot, results, info)
    except OSError as exc:
        raise InputError(f"cannot write results to {str(output)!r} ({exc})") from None
    except ImportError as exc:  # the numbers are written; a missing plotting library must not lose them
        setup_logging(problem.comm).warning("density.png not written: %s", exc)
        plot = None
    print(console_summary(results, layout, info, output, plot), flush=True)
    if validation is not None:
        print(validation_table(validation, results), flush=True)
