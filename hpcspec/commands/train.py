"""``python -m hpcspec train``: data-parallel minibatch SGD over the same communicator, saving the
checkpoint series the analyses read, restartable.

Every step draws one global minibatch of ``train.batch_size`` sample indices from a permutation of
the whole data set seeded by (``seed``, epoch) — identical on every rank. Each rank takes the
indices that fall in its shard ``[start, stop)``, sums the per-sample losses over them and
back-propagates that sum; one reduction adds the gradient sums, the loss sums and the counts of
all ranks, and dividing by the global count gives exactly the minibatch-mean gradient whatever the
number of ranks (up to rounding), for models without BatchNorm. Every rank applies the same reduced
gradient to the same initial weights (same seed), so the weights are identical on every rank at
all times.

BatchNorm in train mode normalises each rank's sub-batch with that sub-batch's statistics (as
PyTorch DDP without SyncBatchNorm does), so with BatchNorm the trajectory depends on the rank
count. The running statistics each rank then updates are averaged across ranks (weighted by the
ranks' sample counts) in the same reduction, every step, so the buffers too are identical on every
rank and the saved weights do not depend on which rank writes them.

The learning rate is a function of the step alone (no stateful scheduler), so a restart needs only
the weights, the optimizer's momentum buffers, the step and each rank's RNG state: ``train_state.pt``.
A run resumed from it on the same number of ranks ends with bitwise the same weights as an
uninterrupted one.

Files in the output directory (rank 0 writes, each atomically):

- ``step_{step:08d}.pt``: the model's state dict (parameters and buffers) after ``step`` updates,
  at step 0, every ``train.save_every`` steps, and at the last step; ``run --weights`` loads it;
- ``train.toml``: the full config, written at the start (``track`` rebuilds model and data from it);
- ``train_state.pt``: model, optimizer, step, RNG states and history, at every save and on a stop
  signal (SIGTERM/SIGUSR1/SIGINT: exit 3, continue with ``--resume``);
- ``train_log.json``: minibatch loss and learning rate of every step so far.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import (
    StopFlag,
    StopRequested,
    config_identity,
    data_fingerprint,
    describe_mismatch,
    model_fingerprint,
)
from ..config import Config, to_toml, training_identity_keys
from ..errors import InputError
from ..files.atomic import write_atomic, write_text_atomic
from ..files.outputs import released_after
from ..parallel.agree import agreed, collective
from ..parallel.comm import Communicator
from ..problem.data import Shard
from ..problem.losses import Loss
from ..problem.pairing import check_pairing
from .setup import TRAIN_IN_FLOAT32, build_workload, claim_output, sample_data, start_rank
from .training import (
    DataParallelStep,
    History,
    learning_rate,
    minibatch,
    steps_per_epoch,
    total_steps,
)

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.json"
CONFIG_FILE = "train.toml"
#: Config keys that decide the trained weights (each declares it: ``identity`` in
#: :mod:`hpcspec.config.schema`); the others may change on --resume.
IDENTITY_KEYS = training_identity_keys()
STATE_VERSION = 1


def step_file(step: int) -> str:
    """The name of the weights file saved after ``step`` updates."""
    return f"step_{step:08d}.pt"


def training_identity(cfg: Config, model: nn.Module, shard: Shard, comm: Communicator) -> dict[str, Any]:
    """What a resumed training must match (collective: hashes the data set)."""
    keys = {key: value for key, value in config_identity(cfg).items()
            if key in IDENTITY_KEYS}
    return {"config": keys, "model": model_fingerprint(model), "data": data_fingerprint(shard, comm),
            "num_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _read_state(path: Path) -> dict[str, Any] | None:
    """``train_state.pt``, or None when there is none (local; every rank reads the shared file)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise InputError(f"{str(path)!r} cannot be read ({type(exc).__name__}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise InputError(f"{str(path)!r} is not a training state this hpcspec wrote; delete it to start over")
    return state


def _check_fresh(state: dict[str, Any] | None, path: Path) -> None:
    if state is not None and state["step"] < state["total"]:
        raise InputError(f"{str(path)!r} holds an unfinished training (step {state['step']} of {state['total']}); "
                         "add --resume to continue it, or delete it to start over")


def _clear_finished(output: Path, comm: Communicator) -> list[str]:
    """Rank 0, on a fresh start: remove a finished training's files, so its series does not mix with this one."""
    if comm.rank != 0:
        return []
    removed = []
    for path in [*sorted(output.glob("step_*.pt")), output / STATE_FILE, output / LOG_FILE]:
        if path.is_file():
            path.unlink()
            removed.append(path.name)
    return removed


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu").clone() for key, value in model.state_dict().items()}


@dataclass
class Trainer:
    """A set-up training on this rank (see :func:`train_job`)."""

    cfg: Config
    comm: Communicator
    output: Path
    model: nn.Module
    optimizer: torch.optim.SGD
    step_fn: DataParallelStep
    identity: dict[str, Any]
    total: int
    num_samples: int
    device: torch.device
    step: int = 0
    history: History = field(default_factory=History)

    def save(self, weights: bool) -> None:
        """Collective: gather the RNG states; rank 0 writes (the weights file when ``weights``),
        ``train_state.pt`` and ``train_log.json``; every rank agrees on a write failure."""
        rngs = self.comm.allgather_object(_rng_state(self.device))
        name = step_file(self.step)
        if weights and name not in self.history.saved:
            self.history.saved.append(name)
        agreed(self.comm, self._write_files, name if weights else None, rngs)

    def _write_files(self, name: str | None, rngs: list[dict[str, torch.Tensor]]) -> None:
        if self.comm.rank != 0:
            return
        weights = _plain_state_dict(self.model)
        if name is not None:
            write_atomic(self.output / name, lambda tmp: torch.save(weights, tmp))
        state = {"version": STATE_VERSION, "step": self.step, "total": self.total, "model": weights,
                 "optimizer": self.optimizer.state_dict(), "rng": rngs, "world_size": self.comm.size,
                 "identity": json.dumps(self.identity, sort_keys=True), "loss": list(self.history.loss),
                 "lr": list(self.history.lr), "saved": list(self.history.saved)}
        write_atomic(self.output / STATE_FILE, lambda tmp: torch.save(state, tmp))
        record = {"steps": self.total, "step": self.step, "world_size": self.comm.size,
                  "batch_size": self.cfg.train.batch_size, "num_samples": self.num_samples,
                  "steps_per_epoch": steps_per_epoch(self.cfg.train, self.num_samples),
                  "loss": self.history.loss, "lr": self.history.lr, "saved": self.history.saved}
        write_text_atomic(self.output / LOG_FILE, json.dumps(record, indent=1) + "\n")

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a ``train_state.pt`` (weights, momentum buffers, step, history, RNG)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history = History(list(state["loss"]), list(state["lr"]), list(state["saved"]))
        rngs = state["rng"]
        _set_rng_state(rngs[self.comm.rank] if len(rngs) == self.comm.size else rngs[0], self.device)

    def due(self) -> bool:
        every = self.cfg.train.save_every
        return self.step == self.total or (every > 0 and self.step % every == 0)

    def run(self, flag: StopFlag) -> None:
        """Train from ``self.step`` to ``self.total``; on a stop signal save the state and raise
        :class:`StopRequested` on every rank together."""
        train, seed = self.cfg.train, self.cfg.seed
        every = max(1, self.total // 20)
        started, first = time.perf_counter(), self.step
        self.model.train()
        while self.step < self.total:
            rate = learning_rate(train, self.step, self.total)
            for group in self.optimizer.param_groups:
                group["lr"] = rate
            indices = minibatch(train, seed, self.step, self.num_samples)
            loss, _, stopping = self.step_fn.gradient(indices, stop=flag.signal is not None)
            self.optimizer.step()
            self.step += 1
            self.history.loss.append(loss)
            self.history.lr.append(rate)
            if self.step % every == 0 or self.step == self.total:
                done = self.step - first
                per_epoch = steps_per_epoch(train, self.num_samples)
                log.info("step %d/%d (epoch %d/%d): minibatch loss %.4g, lr %.3g, %.3f s/step", self.step,
                         self.total, (self.step - 1) // per_epoch + 1, -(-self.total // per_epoch), loss, rate,
                         (time.perf_counter() - started) / done)
            if self.due():
                self.save(weights=True)
            elif stopping:
                self.save(weights=False)
            if stopping and self.step < self.total:
                raise TrainingStopped(flag.name, self.output / STATE_FILE, self.step)
        for param in self.step_fn.params:
            param.grad = None


class TrainingStopped(StopRequested):
    """Every rank stopped on a signal after ``train_state.pt`` was written (exit code 3)."""

    def __init__(self, signal_name: str, path: Path, step: int) -> None:
        Exception.__init__(self, f"stopped on {signal_name or 'a signal'} after saving {path} at step {step}")
        self.signal_name = signal_name
        self.path = path
        self.step = step


def _check_train_config(cfg: Config) -> None:
    if cfg.train.steps == 0 and cfg.train.epochs == 0:
        raise InputError("train needs train.steps > 0 or train.epochs > 0 (e.g. --epochs 10)")
    if cfg.train.lr <= 0:
        raise InputError(f"train.lr must be > 0 for training, got {cfg.train.lr!r}")
    if cfg.hessian.dtype in TRAIN_IN_FLOAT32:
        raise InputError(f"train keeps its weights in --dtype, and {cfg.hessian.dtype} weights lose every update below "
                         "2^-8 of their size: train in float32 (or tf32) and analyse with run --dtype bfloat16")


def _check_data(model: nn.Module, loss: Loss, shard: Shard) -> None:
    """Local: the model takes this rank's samples and the loss its targets (one eval-mode forward of
    one sample, the operator's check: :func:`~hpcspec.problem.pairing.check_pairing`)."""
    if not len(shard):
        return
    inputs = shard.inputs[:1].to(next(model.parameters()).device)
    if inputs.dtype.is_floating_point:
        inputs = inputs.to(next(p for p in model.parameters() if p.requires_grad).dtype)
    model.eval()
    try:
        check_pairing(model, loss, inputs, shard.targets)
    finally:
        model.train()


def _check_optimizable(model: nn.Module) -> None:
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    if len(dtypes) != 1:
        raise InputError(f"the model's trainable parameters mix dtypes ({', '.join(map(str, dtypes))}); "
                         "train needs one compute dtype")


def _write_config(cfg: Config, output: Path, comm: Communicator) -> None:
    if comm.rank == 0:
        text = to_toml(cfg)
        write_text_atomic(output / CONFIG_FILE, text)


def prepare_training(cfg: Config, comm: Communicator, *, resume: bool = False) -> tuple[Trainer, dict[str, Any] | None]:
    """Output directory, data, model, optimizer and (with ``resume``) the state to continue from
    (collective; every failure agreed on every rank)."""
    agreed(comm, _check_train_config, cfg)
    threads, device = start_rank(cfg, comm)
    output = agreed(comm, claim_output, cfg, comm)
    work = collective(comm, build_workload, cfg, comm, device, threads)  # as run loads it
    loss, model = work.loss, work.model  # every parameter: model.params narrows only H
    shard = agreed(comm, sample_data, work.shard, "train")
    agreed(comm, _check_optimizable, model)
    agreed(comm, _check_data, model, loss, shard)
    identity = training_identity(cfg, model, shard, comm)
    path = output / STATE_FILE
    state = agreed(comm, _read_state, path)
    if resume and state is not None:
        problem = describe_mismatch(json.loads(state["identity"]), identity)
        if problem is not None:
            agreed(comm, _raise, InputError(f"{str(path)!r} is of another training ({problem}); resume with the "
                                            "settings it was written with, or use another output directory"))
    elif not resume:
        agreed(comm, _check_fresh, state, path)
        removed = agreed(comm, _clear_finished, output, comm)
        if removed:
            log.info("removed a finished training's files from %s: %s", output, ", ".join(removed))
        state = None
    torch.manual_seed(int.from_bytes(hashlib.sha256(f"hpcspec-train-rng:{cfg.seed}:{comm.rank}".encode())
                                     .digest()[:8], "little") >> 1)  # dropout etc.; independent per rank
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay, nesterov=cfg.train.nesterov)
    total = total_steps(cfg.train, shard.total)
    trainer = Trainer(cfg=cfg, comm=comm, output=output, model=model, optimizer=optimizer,
                      step_fn=DataParallelStep(model, loss, shard, comm, device), identity=identity,
                      total=total, num_samples=shard.total, device=device)
    log.info("model %s: %s trainable parameters; %d steps of %d samples (%d per epoch), %s schedule from lr %g",
             cfg.model.spec, f"{identity['num_params']:,}", total, min(cfg.train.batch_size, shard.total),
             steps_per_epoch(cfg.train, shard.total), cfg.train.schedule, cfg.train.lr)
    return trainer, state


def _raise(error: InputError) -> None:
    raise error


def train_job(cfg: Config, comm: Communicator, *, resume: bool = False, flag: StopFlag | None = None) -> Trainer:
    """The whole ``train`` subcommand on this rank; rank 0 writes the files and prints the summary."""
    with released_after(cfg.output):
        return _train(cfg, comm, resume, flag)


def _train(cfg: Config, comm: Communicator, resume: bool, flag: StopFlag | None) -> Trainer:
    started = time.perf_counter()
    trainer, state = prepare_training(cfg, comm, resume=resume)
    if state is not None:
        trainer.restore(state)
        if trainer.step >= trainer.total:
            if comm.rank == 0:
                print(f"training already finished ({trainer.total} steps): weights in {trainer.output}", flush=True)
            return trainer
        log.info("resuming from %s at step %d of %d (written by %d rank%s)", trainer.output / STATE_FILE,
                 trainer.step, trainer.total, state["world_size"], "" if state["world_size"] == 1 else "s")
        if state["world_size"] != comm.size:
            log.warning("the state was written by %d ranks, this run has %d: the continuation agrees with an "
                        "uninterrupted run to rounding, not bitwise", state["world_size"], comm.size)
    else:
        agreed(comm, _write_config, cfg, trainer.output, comm)
        trainer.save(weights=True)
    trainer.run(flag or StopFlag())
    if comm.rank == 0:
        history = trainer.history
        print(f"trained {trainer.total} steps on {comm.size} rank{'s' if comm.size > 1 else ''} in "
              f"{time.perf_counter() - started:.1f} s: minibatch loss {history.loss[0]:.4g} -> {history.loss[-1]:.4g}; "
              f"{len(history.saved)} weights files (step_*.pt), {STATE_FILE}, {LOG_FILE}, {CONFIG_FILE} in "
              f"{trainer.output}", flush=True)
    return trainer
