"""The mechanics of data-parallel minibatch SGD, apart from the ``train`` command: the learning-rate
schedule (a function of the step alone), the global minibatch order (a permutation of the whole
data set seeded by seed and epoch, the same on every rank), one SGD step's gradient reduced over
ranks (:class:`DataParallelStep`), and the per-step :class:`History`. See
:mod:`hpcspec.commands.train` for the command, its files and its restart.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import InputError
from ..parallel.comm import Communicator
from ..problem.data import Shard
from ..problem.losses import Loss


def total_steps(train: TrainConfig, num_samples: int) -> int:
    """Updates in the whole run: ``epochs`` × minibatches per epoch, or ``steps`` when epochs = 0."""
    if train.epochs:
        return train.epochs * steps_per_epoch(train, num_samples)
    return train.steps


def steps_per_epoch(train: TrainConfig, num_samples: int) -> int:
    """Minibatches per pass over the data (the last one may be short)."""
    return -(-num_samples // min(train.batch_size, num_samples))


def learning_rate(train: TrainConfig, step: int, total: int) -> float:
    """The learning rate of update ``step`` (0-based) of ``total``.

    ``cosine``: ``lr · (1 + cos(π·step/total)) / 2``; ``step``: ``lr · gamma^m`` where m counts the
    milestones with ``step >= round(milestone · total)``; ``constant``: ``lr``. During the first
    ``warmup`` steps the result is scaled by ``(step + 1) / warmup``.
    """
    if train.schedule == "cosine":
        rate = train.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    elif train.schedule == "step":
        passed = sum(step >= round(m * total) for m in train.milestones)
        rate = train.lr * train.gamma ** passed
    else:
        rate = train.lr
    if step < train.warmup:
        rate *= (step + 1) / train.warmup
    return rate


def epoch_permutation(seed: int, epoch: int, num_samples: int) -> torch.Tensor:
    """The order of the samples in ``epoch``: the same on every rank (seeded by seed and epoch only)."""
    digest = hashlib.sha256(f"hpcspec-train:{seed}:{epoch}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randperm(num_samples, generator=generator)


def minibatch(train: TrainConfig, seed: int, step: int, num_samples: int) -> torch.Tensor:
    """Global sample indices of update ``step``: a slice of its epoch's permutation."""
    per_epoch = steps_per_epoch(train, num_samples)
    epoch, position = divmod(step, per_epoch)
    batch = min(train.batch_size, num_samples)
    return epoch_permutation(seed, epoch, num_samples)[position * batch:(position + 1) * batch]


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    """BatchNorm running statistics (and batch counters), averaged across ranks every step."""
    found = []
    for module in _batchnorms(model):
        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked):
            if buffer is not None:
                found.append(buffer)
    return found


class DataParallelStep:
    """One SGD update on the global minibatch, computed by all ranks together (one reduction).

    The reduced vector holds, in float64: the gradient sums of the trainable parameters, the
    BatchNorm buffers times this rank's sample count, the loss sum, the sample count, the loss
    count, and "a stop signal was caught here" — so a stop request costs no extra collective.
    """

    def __init__(self, model: nn.Module, loss: Loss, shard: Shard, comm: Communicator, device: torch.device) -> None:
        self.model, self.loss, self.shard, self.comm, self.device = model, loss, shard, comm, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = _bn_buffers(model)
        self.dtype = self.params[0].dtype

    def gradient(self, indices: torch.Tensor, stop: bool = False) -> tuple[float, int, bool]:
        """Set every parameter's ``.grad`` to the minibatch-mean gradient over ``indices`` (global
        sample indices); average the BatchNorm buffers. Returns (mean loss, samples, any rank stopping)."""
        shard = self.shard
        mine = indices[(indices >= shard.start) & (indices < shard.stop)] - shard.start
        for param in self.params:
            param.grad = None
        local_loss = torch.zeros(1, dtype=torch.float64, device=self.device)
        count = 0
        if len(mine):
            inputs = shard.inputs[mine].to(self.device)
            if inputs.dtype.is_floating_point:
                inputs = inputs.to(self.dtype)
            targets = shard.targets[mine].to(self.device)
            try:
                outputs = self.model(inputs)
            except ValueError as exc:  # e.g. BatchNorm1d on a one-sample sub-batch
                raise InputError(f"forward pass on a sub-batch of {len(mine)} sample(s) failed ({exc}); use a "
                                 "larger train.batch_size or fewer ranks") from None
            summed = self.loss.sum(outputs, targets)
            summed.backward()
            local_loss = summed.detach().reshape(1).to(torch.float64)  # stays on the device: no sync here
            count = int(self.loss.count(targets))
        pieces = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float64)
                  for p in self.params]
        samples = len(mine)
        pieces += [b.reshape(-1).to(torch.float64) * samples for b in self.buffers]
        tail = torch.cat([local_loss, torch.tensor([float(samples), float(count), 1.0 if stop else 0.0],
                                                   dtype=torch.float64, device=self.device)])
        flat = torch.cat([piece.to(self.device) for piece in pieces] + [tail]).contiguous()
        self.comm.allreduce_sum_(flat)
        loss_sum, total_samples, total_count, stops = (float(v) for v in flat[-4:].cpu())
        offset = 0
        with torch.no_grad():
            for param in self.params:
                part = flat[offset:offset + param.numel()]
                param.grad = (part / total_count).view_as(param).to(param.dtype)
                offset += param.numel()
            if self.comm.size > 1:  # one rank: leave the buffers exactly as they are
                for buffer in self.buffers:
                    part = flat[offset:offset + buffer.numel()]
                    buffer.copy_((part / total_samples).view_as(buffer).to(buffer.dtype))
                    offset += buffer.numel()
        return loss_sum / total_count, int(total_samples), stops > 0


@dataclass
class History:
    """Per-step minibatch loss and learning rate, and the weights files saved so far."""

    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
