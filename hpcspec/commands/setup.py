"""What every command that builds a model on data does first, shared by ``run``, ``validate``,
``train``, ``track`` and ``run --per-block``: pick this rank's threads and device, claim the output
folder, load this rank's shard, agree on the data's shape over ranks, and build the model in the
analysis dtype (:func:`start_rank`, :func:`claim_output`, :func:`build_workload`)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import choices
from ..config import Config
from ..errors import InputError
from ..files.outputs import claim
from ..parallel.agree import agreed
from ..parallel.comm import Communicator
from ..parallel.device import select_device, set_threads
from ..problem.data import Shard, load_shard, memory_budget
from ..problem.losses import Loss, check_labels, get_loss
from ..problem.models import build_model, load_weights

log = logging.getLogger(__name__)

#: The analysis dtypes (``hessian.dtype``) as torch dtypes.
DTYPES = {name: getattr(torch, name) for name in choices.DTYPES}


@dataclass(frozen=True)
class DataShape:
    """What the zoo needs to size a model, agreed over all ranks' shards: one sample's flattened
    width and shape, and the output width."""

    input_dim: int
    output_dim: int
    input_shape: tuple[int, ...] = ()


def data_shape(comm: Communicator, shard: Shard, loss_name: str) -> DataShape:
    """Input shape and output width over ranks: for cross-entropy the classes (the vocabulary for
    integer token sequences: highest token in x or y, + 1), at least what the source declares
    (``shard.classes``); for MSE the target width."""
    local = None
    if len(shard):
        classes = int(shard.targets.max()) + 1 if not shard.targets.dtype.is_floating_point else 0
        if classes and shard.targets.ndim == 2 and not shard.inputs.dtype.is_floating_point:
            classes = max(classes, int(shard.inputs.max()) + 1)
        local = (tuple(shard.inputs.shape[1:]), classes, shard.targets[0].numel())
    found = [entry for entry in comm.allgather_object(local) if entry is not None]
    input_shape = tuple(found[0][0])
    input_dim = math.prod(input_shape)
    if loss_name == "cross_entropy":
        return DataShape(input_dim, max(max(entry[1] for entry in found), shard.classes, 1), input_shape)
    return DataShape(input_dim, found[0][2], input_shape)


@dataclass(frozen=True)
class Workload:
    """What a command computes on, on this rank: the loss, this rank's shard, the data's shape over
    ranks, and the model sized from it (every parameter trainable: ``run`` narrows H to
    ``model.params`` itself)."""

    loss: Loss
    shard: Shard
    shape: DataShape
    model: nn.Module


def start_rank(cfg: Config, comm: Communicator) -> tuple[int, torch.device]:
    """This rank's intra-op threads (``threads``, or the node's cores shared among its ranks) and
    device (local): the first thing every command does."""
    return set_threads(comm, cfg.threads), select_device(comm)


def build_workload(cfg: Config, comm: Communicator, device: torch.device, threads: int | None = None) -> Workload:
    """The loss, this rank's shard and the model on ``device`` (a collective step: the data's shape
    is agreed over ranks; every local failure is agreed, so every rank raises it together). With
    ``threads``, rank 0 logs the data line ``run`` and ``train`` print."""
    loss = agreed(comm, get_loss, cfg.hessian.loss)
    shard = agreed(comm, load_data, cfg, comm)
    if threads is not None:
        log.info("data %s: %d samples, this rank holds [%d, %d); %d thread(s) per rank on %s",
                 cfg.data.spec, shard.total, shard.start, shard.stop, threads, device)
    shape = data_shape(comm, shard, loss.name)
    model = agreed(comm, job_model, cfg, shape, device)
    return Workload(loss=loss, shard=shard, shape=shape, model=model)


def claim_output(cfg: Config, comm: Communicator) -> Path:
    """Rank 0 claims the output folder (a local step: run it through ``agreed``): created, refused
    if it holds anything but an hpcspec run (unless ``force_output``), locked against a second run,
    and cleared of the temporaries a killed run left. The caller releases the lock when its job
    ends (:func:`hpcspec.files.lock.released_after`)."""
    path = Path(cfg.output)
    if comm.rank == 0:
        claim(path, force=cfg.force_output)
    return path


def job_model(cfg: Config, shape: DataShape, device: torch.device, keep_dtype: bool = False) -> nn.Module:
    """The configured model sized for ``shape`` (the given weights loaded), on ``device`` in the
    analysis dtype (``keep_dtype``: as built; a pipelined run converts only its stage) (local);
    refused when no parameter requires gradients."""
    model = build_model(cfg.model.spec, input_shape=shape.input_shape or (shape.input_dim,),
                        output_dim=shape.output_dim, cfg_model=cfg.model, seed=cfg.seed)
    if cfg.model.weights:
        load_weights(model, cfg.model.weights)
    if not any(param.requires_grad for param in model.parameters()):
        raise InputError(f"model {cfg.model.spec!r} has no parameters that require gradients")
    return model.to(device=device) if keep_dtype else model.to(device=device, dtype=DTYPES[cfg.hessian.dtype])


def checkpoint_dir(cfg: Config) -> Path:
    """``checkpoint.dir``, or ``OUTPUT/checkpoints`` when it is empty."""
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(cfg.output) / "checkpoints"


def load_data(cfg: Config, comm: Communicator) -> Shard:
    """This rank's shard of ``cfg.data`` (local, no collective): what ``run`` and ``train`` analyse and train on.
    Labels are checked here, before a zoo model is sized from them."""
    shard = load_shard(cfg.data.spec, comm.rank, comm.size, samples=cfg.data.samples, features=cfg.data.features,
                       classes=cfg.data.classes, outputs=cfg.data.outputs, seed=cfg.seed, granule=_granule(cfg),
                       split=cfg.data.split, normalize=cfg.data.normalize, context=cfg.data.context,
                       vocab=cfg.data.vocab, max_bytes=memory_budget(cfg.data.max_gb, comm.local_size))
    check_labels(get_loss(cfg.hessian.loss), shard.targets, cfg.data.spec, shard.inputs)
    return shard


def _granule(cfg: Config) -> int:
    """Shards are cut at whole batches when the batches must not depend on the rank count: for the
    ordered (exact) reduction, and for train-mode BatchNorm, whose Hessian depends on which samples
    share a batch (fixed batches ``[i·B, (i+1)·B)`` of the whole data set on any number of ranks)."""
    return cfg.data.batch_size if cfg.hessian.reduction == "ordered" or cfg.hessian.bn_mode == "train" else 1
