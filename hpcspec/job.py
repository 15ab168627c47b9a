"""One ``hpcspec run``: set up data, model and operator on every rank, solve, report.

Setup is a sequence of local steps, each followed by a collective agreement on failure, with the
collectives kept between them — so a bad input on any one rank makes every rank exit 2 with the
same message and no rank waits in a collective the others never reach.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .comm import Communicator, agreed
from .config import Config, to_toml
from .data import Shard, load_shard
from .device import select_device, set_threads
from .errors import InputError
from .logs import setup_logging
from .losses import get_loss
from .models import build_model, load_weights
from .operator import HessianOperator
from .provenance import provenance
from .report import RunInfo, console_table, summary, write_results, write_summary
from .solvers import LanczosResult, lanczos
from .train import train_full_batch

DTYPES = {"float64": torch.float64, "float32": torch.float32}
DEFAULT_TOL = {"float64": 1e-8, "float32": 1e-5}


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


def _check_top_k(k: int, size: int) -> None:
    if k > size:
        raise InputError(f"eigen.top_k = {k} exceeds the number of parameters in the Hessian ({size})")


def run_job(cfg: Config, comm: Communicator) -> LanczosResult:
    """The whole ``run`` subcommand on this rank; rank 0 writes the outputs and prints the table."""
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
    op = HessianOperator(model, loss, shard, comm, batch_size=cfg.data.batch_size, method=cfg.hessian.hvp)
    agreed(comm, op.check_data)
    log.info("model %s: %s parameters in the Hessian%s", cfg.model.spec, f"{op.size:,}",
             f" (frozen, excluded: {', '.join(op.layout.excluded)})" if op.layout.excluded else "")
    agreed(comm, _check_top_k, cfg.eigen.top_k, op.size)
    if cfg.train.steps:
        history = train_full_batch(op, cfg.train.steps, cfg.train.lr)
        log.info("trained %d full-batch Adam steps: loss %.4g -> %.4g", cfg.train.steps, history[0], history[-1])
    loss_value, _ = op.loss_and_gradient()
    tol = cfg.eigen.tol or DEFAULT_TOL[cfg.hessian.dtype]

    def progress(step: int, values: Any, residuals: Any) -> None:
        if step % 10 == 0:
            log.info("Lanczos step %d: top Ritz value %.10g, largest wanted residual %.2e",
                     step, values[0], residuals.max())

    solve_start = time.perf_counter()
    result = lanczos(op, cfg.eigen.top_k, which=cfg.eigen.which, tol=tol, maxiter=cfg.eigen.maxiter or None,
                     seed=cfg.seed, callback=progress)
    log.info("Lanczos finished: %d steps in %.2f s", result.iterations, time.perf_counter() - solve_start)
    info = RunInfo(model=cfg.model.spec, data=cfg.data.spec, loss=loss.name, which=cfg.eigen.which, tol=tol,
                   num_samples=shard.total, world_size=comm.size, dtype=cfg.hessian.dtype, hvp_method=op.method,
                   loss_value=loss_value, seconds=time.perf_counter() - started, config_toml=to_toml(cfg),
                   provenance=provenance(comm, device) if comm.rank == 0 else {})
    agreed(comm, _write_outputs, comm, output, result, op, info)
    if not result.converged:
        log.warning("Lanczos did not converge within %d steps: residuals %s", result.iterations,
                    ", ".join(f"{r:.2e}" for r in result.residuals))
    return result


def _write_outputs(comm: Communicator, output: Path, result: LanczosResult, op: HessianOperator,
                   info: RunInfo) -> None:
    if comm.rank != 0:
        return
    try:
        write_results(output / "results.h5", result, op.layout, info)
        write_summary(output / "summary.json", summary(result, op.layout, info))
    except OSError as exc:
        raise InputError(f"cannot write results to {str(output)!r} ({exc})") from None
    print(console_table(result, op.layout, info, output), flush=True)
