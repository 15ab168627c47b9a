"""A model as an ordered list of pipeline stages, cut at block boundaries (``model.stages``).

A model is a chain of *blocks* ``f = b_n ∘ … ∘ b_1``: an ``nn.Sequential`` (its children), a user
factory's list of modules (made an ``nn.Sequential`` by :func:`~hpcspec.problem.models.build_model`),
or a built-in model (:func:`blocks_of`: the MLP's Linear+activation pairs, the CNN's conv blocks,
the transformer's embedding / blocks / head, a ResNet's stem / basic blocks / pooled classifier).
:func:`split_stages` groups consecutive blocks into S stages with the largest stage's parameter
count as small as it can be (the linear-partition problem, solved exactly by dynamic
programming), so stage ``s`` holds a contiguous range of the flat parameter vector: stage order is
parameter order. The stages share their modules with the whole model: building the whole model
with the fixed seed and keeping stage s's modules gives every grid the weights of S = 1.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import InputError
from .models.cnn import CNN
from .models.mlp import MLP
from .models.resnet import ResNet
from .models.transformer import TransformerLM


class Stage(nn.Module):
    """Consecutive blocks of a model applied in order; ``names`` are its parameters' names in the
    whole model (the flat vector's names), in this stage's parameter order."""

    def __init__(self, blocks: Sequence[nn.Module], names: Sequence[str]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.names = tuple(names)

    def forward(self, x: Any) -> Any:
        for block in self.blocks:
            x = block(x)
        return x


class TokenEmbedding(nn.Module):
    """The transformer's first block: token plus position embeddings of ``(B, T)`` integer tokens."""

    def __init__(self, model: TransformerLM) -> None:
        super().__init__()
        self.tokens, self.positions, self.context = model.tokens, model.positions, model.context

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        steps = tokens.shape[1]
        if steps > self.context:
            raise ValueError(f"sequence of {steps} tokens exceeds the model's context of {self.context}")
        return self.tokens(tokens) + self.positions(torch.arange(steps, device=tokens.device))


class ResNetStem(nn.Module):
    """A ResNet's first convolution, normalisation and ReLU."""

    def __init__(self, model: ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1 = model.conv1, model.bn1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn1(self.conv1(x)))


class PooledHead(nn.Module):
    """A ResNet's global average pooling and linear classifier."""

    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The model's chain of blocks (see the module docstring); :class:`InputError` for a model
    hpcspec does not know how to cut."""
    if isinstance(model, MLP):
        layers = list(model.layers)
        blocks: list[nn.Module] = [nn.Sequential(nn.Flatten(start_dim=1), *layers[:2])]
        blocks += [nn.Sequential(*layers[i:i + 2]) for i in range(2, len(layers), 2)]
        return blocks
    if isinstance(model, CNN):
        features = list(model.features)
        return [nn.Sequential(*features[:3]), nn.Sequential(*features[3:]),
                nn.Sequential(nn.Flatten(start_dim=1), model.head)]
    if isinstance(model, TransformerLM):
        return [TokenEmbedding(model), *model.blocks, nn.Sequential(model.ln, model.head)]
    if isinstance(model, ResNet):
        return [ResNetStem(model), *model.layer1, *model.layer2, *model.layer3, PooledHead(model.linear)]
    if isinstance(model, nn.Sequential):
        return list(model)
    raise InputError(f"a {type(model).__name__} cannot be split into pipeline stages: give an nn.Sequential, a "
                     "factory returning a list of blocks, or a built-in model (mlp, cnn, resnet*, transformer)")


def partition(counts: Sequence[int], parts: int) -> list[int]:
    """Boundaries ``[0, c_1, …, n]`` cutting ``counts`` into ``parts`` non-empty consecutive groups
    with the smallest possible largest group sum (ties: the earliest cut), by dynamic programming."""
    n = len(counts)
    prefix = [0]
    for count in counts:
        prefix.append(prefix[-1] + count)
    inf = float("inf")
    # best[p][i]: the smallest largest sum cutting the first i blocks into p groups; cut[p][i]: where
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for p in range(1, parts + 1):
        for i in range(p, n + 1):
            for j in range(p - 1, i):
                value = max(best[p - 1][j], prefix[i] - prefix[j])
                if value < best[p][i]:
                    best[p][i], cut[p][i] = value, j
    bounds = [n]
    for p in range(parts, 0, -1):
        bounds.append(cut[p][bounds[-1]])
    return bounds[::-1]


def split_stages(model: nn.Module, stages: int) -> list[Stage]:
    """The model as ``stages`` stages of whole blocks, balanced by parameter count.

    Raises:
        InputError: the model cannot be cut (:func:`blocks_of`), has fewer blocks than stages, a
            stage would hold no parameter, a parameter is shared by two blocks of different stages,
            or the blocks' parameters are not the model's parameters in their order (the flat
            vector's order must be stage order).
    """
    blocks = blocks_of(model)
    if len(blocks) < stages:
        raise InputError(f"model.stages = {stages} but the model has only {len(blocks)} block(s) to split "
                         "at: use fewer stages")
    counts = [sum(p.numel() for p in block.parameters() if p.requires_grad) for block in blocks]
    bounds = partition(counts, stages)
    named = {id(param): name for name, param in model.named_parameters()}
    result, seen = [], []
    for s, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        params = list(nn.ModuleList(blocks[begin:end]).parameters())
        if not any(p.requires_grad for p in params):
            raise InputError(f"model.stages = {stages}: stage {s} (blocks {begin}..{end - 1}) would hold no "
                             "trainable parameter: use fewer stages")
        missing = [p for p in params if id(p) not in named]
        if missing:
            raise InputError(f"stage {s} holds a parameter that is not one of the model's")
        names = [named[id(p)] for p in params]
        result.append(Stage(blocks[begin:end], [n for n, p in zip(names, params) if p.requires_grad]))
        seen += names
    order = [name for name, _ in model.named_parameters()]
    if len(set(seen)) != len(seen):
        raise InputError("a parameter is shared by blocks of different stages (tied weights): pipeline stages "
                         "need each parameter in one stage")
    if seen != order:
        raise InputError("the blocks' parameters are not the model's parameters in their order: pipeline stages "
                         "need the flat vector's order to be stage order (register the blocks in call order)")
    return result


def check_stages(stages: Sequence[Stage], sample: Any) -> None:
    """Push one sample through the stages in order: :class:`InputError` naming the first stage that
    cannot take its predecessor's output (mismatched shapes), rather than a hang mid-pipeline."""
    x = sample
    with torch.no_grad():
        for s, stage in enumerate(stages):
            try:
                x = stage(x)
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise InputError(f"pipeline stage {s} cannot take its input of shape {shape}: {first}") from None
            if not isinstance(x, torch.Tensor):
                raise InputError(f"pipeline stage {s} returns a {type(x).__name__}: stages must pass one tensor on")
