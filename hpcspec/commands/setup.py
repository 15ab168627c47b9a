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
from ..parallel.device import Threads, select_device, set_matmul_precision, set_threads
from ..problem.data import load_shard, memory_budget
from ..problem.loaders import agree_batches
from ..problem.models import BUILTIN_MODELS
from ..problem.shards import AnyShard, BatchShard, Shard
from ..problem.losses import Loss, check_labels, get_loss
from ..problem.models import build_model, load_weights

log = logging.getLogger(__name__)

#: The analysis dtypes (``hessian.dtype``) as torch dtypes (``tf32``: float32 tensors, TF32 matmuls
#: switched on by :func:`start_rank`).
DTYPES = {name: torch.float32 if name == "tf32" else getattr(torch, name) for name in choices.DTYPES}
#: Dtypes whose weights lose most Adam/SGD updates (2⁻⁸ of a weight's size): ``run --train-steps``
#: trains in float32 first, then rounds the trained weights to the analysis dtype.
TRAIN_IN_FLOAT32 = ("bfloat16",)


@dataclass(frozen=True)
class DataShape:
    """What the zoo needs to size a model, agreed over all ranks' shards: one sample's flattened
    width and shape, and the output width."""

    input_dim: int
    output_dim: int
    input_shape: tuple[int, ...] = ()


def data_shape(comm: Communicator, shard: AnyShard, loss_name: str) -> DataShape:
    """Input shape and output width over ranks: for cross-entropy the classes (the vocabulary for
    integer token sequences: highest token in x or y, + 1), at least what the source declares
    (``shard.classes``); for MSE the target width. Batch data (:class:`BatchShard`) is measured on
    all its batches; inputs that are not one tensor (a dict or a tuple) give ``input_dim = 0``
    (only a ``module:callable`` model takes them)."""
    local = None
    pairs = list(shard.batches) if isinstance(shard, BatchShard) else [(shard.inputs, shard.targets)] if len(shard) else []
    if pairs:
        inputs, targets = pairs[0]
        shape = tuple(inputs.shape[1:]) if isinstance(inputs, torch.Tensor) else None
        classes = 0
        if not targets.dtype.is_floating_point:
            classes = max([0] + [int(t.max()) + 1 for _, t in pairs if t.numel()])
            if targets.ndim == 2:
                classes = max([classes] + [int(x.max()) + 1 for x, _ in pairs if isinstance(x, torch.Tensor)
                                           and not x.dtype.is_floating_point and x.numel()])
        local = (shape, classes, targets[0].numel() if targets.ndim else 1)
    found = [entry for entry in comm.allgather_object(local) if entry is not None]
    input_shape = tuple(found[0][0]) if found[0][0] is not None else ()
    input_dim = math.prod(input_shape) if found[0][0] is not None else 0
    if loss_name == "cross_entropy":
        return DataShape(input_dim, max(max(entry[1] for entry in found), shard.classes, 1), input_shape)
    return DataShape(input_dim, found[0][2], input_shape)


@dataclass(frozen=True)
class Workload:
    """What a command computes on, on this rank: the loss, this rank's shard, the data's shape over
    ranks, and the model sized from it (every parameter trainable: ``run`` narrows H to
    ``model.params`` itself)."""

    loss: Loss
    shard: AnyShard
    shape: DataShape
    model: nn.Module


def start_rank(cfg: Config, comm: Communicator) -> tuple[Threads, torch.device]:
    """This rank's intra-op threads (``threads``, ``OMP_NUM_THREADS``, or the node's cores shared
    among its ranks, with where the count came from) and device (local): the first thing every command does; with ``hessian.dtype = "tf32"`` it switches
    TF32 on for CUDA matmuls and convolutions (off for every other dtype), saying so in the log."""
    threads, device = set_threads(comm, cfg.threads), select_device(comm)
    line = set_matmul_precision(cfg.hessian.dtype == "tf32", device)
    if cfg.hessian.dtype == "tf32" or (cfg.hessian.dtype == "float32" and device.type == "cuda"):
        log.info("%s", line)
    return threads, device


def build_workload(cfg: Config, comm: Communicator, device: torch.device, threads: Threads | None = None) -> Workload:
    """The loss, this rank's shard and the model on ``device`` (a collective step: the data's shape
    is agreed over ranks; every local failure is agreed, so every rank raises it together). With
    ``threads``, rank 0 logs the data line ``run`` and ``train`` print, with the thread count and
    where it came from."""
    loss = agreed(comm, get_loss, cfg.hessian.loss)
    shard = agree_batches(agreed(comm, load_data, cfg, comm), comm, cfg.data.spec)
    if threads is not None and isinstance(shard, BatchShard):
        log.info("data %s: %d samples in %d batches, this rank holds %s (%d samples); %s on %s",
                 cfg.data.spec, shard.total, shard.num_batches, f"its own {len(shard.batches)} batches"
                 if shard.sharded else f"batches [{shard.start}, {shard.stop})", shard.samples, threads, device)
    elif threads is not None:
        log.info("data %s: %d samples, this rank holds [%d, %d); %s on %s",
                 cfg.data.spec, shard.total, shard.start, shard.stop, threads, device)
    shape = data_shape(comm, shard, loss.name)
    model = agreed(comm, job_model, cfg, shape, device)
    return Workload(loss=loss, shard=shard, shape=shape, model=model)


def claim_output(cfg: Config, comm: Communicator) -> Path:
    """Rank 0 claims the output folder (a local step: run it through ``agreed``): created, refused
    if it holds anything but an hpcspec run (unless ``force_output``), locked against a second run,
    and cleared of the temporaries a killed run left. The caller releases the lock when its job
    ends (:func:`hpcspec.files.outputs.released_after`)."""
    path = Path(cfg.output)
    if comm.rank == 0:
        claim(path, force=cfg.force_output)
    return path


def job_model(cfg: Config, shape: DataShape, device: torch.device, keep_dtype: bool = False) -> nn.Module:
    """The configured model sized for ``shape`` (the given weights loaded), on ``device`` in the
    analysis dtype (``keep_dtype``: as built; a pipelined run converts only its stage) (local);
    refused when no parameter requires gradients."""
    if cfg.model.spec in BUILTIN_MODELS and not shape.input_dim:
        raise InputError(f"model {cfg.model.spec!r} takes one input tensor, but data {cfg.data.spec!r} gives dict or "
                         "tuple inputs: use a module:callable model that takes them")
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


def load_data(cfg: Config, comm: Communicator) -> AnyShard:
    """This rank's shard of ``cfg.data`` (local, no collective): what ``run`` and ``train`` analyse and train on.
    Labels are checked here, before a zoo model is sized from them (every batch of batch data)."""
    shard = load_shard(cfg.data.spec, comm.rank, comm.size, samples=cfg.data.samples, features=cfg.data.features,
                       classes=cfg.data.classes, outputs=cfg.data.outputs, seed=cfg.seed, granule=_granule(cfg),
                       split=cfg.data.split, normalize=cfg.data.normalize, context=cfg.data.context,
                       vocab=cfg.data.vocab, max_bytes=memory_budget(cfg.data.max_gb, comm.local_size),
                       sharded=cfg.data.sharded, target_key=cfg.data.target_key)
    loss = get_loss(cfg.hessian.loss)
    for inputs, targets in shard.batches if isinstance(shard, BatchShard) else [(shard.inputs, shard.targets)]:
        check_labels(loss, targets, cfg.data.spec, inputs if isinstance(inputs, torch.Tensor) else None)
    return shard


def sample_data(shard: AnyShard, command: str) -> Shard:
    """``shard`` if it holds samples as tensors; :class:`InputError` for batch data, which ``command``
    (drawing minibatches of samples) cannot use (local)."""
    if isinstance(shard, BatchShard):
        raise InputError(f"{command} draws minibatches of samples and needs a data callable returning an (x, y) pair "
                         "of tensors or a Dataset, not batches (a DataLoader or a list): return those, or analyse "
                         "with run --train-steps")
    return shard


def _granule(cfg: Config) -> int:
    """Shards are cut at whole batches when the batches must not depend on the rank count: for the
    ordered (exact) reduction, and for train-mode BatchNorm, whose Hessian depends on which samples
    share a batch (fixed batches ``[i·B, (i+1)·B)`` of the whole data set on any number of ranks)."""
    return cfg.data.batch_size if cfg.hessian.reduction == "ordered" or cfg.hessian.bn_mode == "train" else 1
