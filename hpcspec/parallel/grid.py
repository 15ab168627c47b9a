"""The 2-D grid of a pipelined run: S model stages × D data shards over R = S·D ranks.

World rank ``r = s·D + d`` holds stage ``s`` of the model and data shard ``d`` (stage-major), so
the ranks of one stage are consecutive and, in world-rank order, the ranks' slices of the flat
parameter vector (stage order = parameter order, each stage's range cut into D pieces) run
from 0 to P without a gap: every world collective on long vectors (``allgather_rows``,
``gather_rows``, the checkpoint store's slices) works unchanged on such a space.

Two sub-communicators per rank:

* ``stage``: the D ranks holding stage ``s`` (one per data shard). Partial products of a stage's
  block of H·v are reduced over it (each data shard contributes its samples' share).
* ``pipe``: the S ranks holding data shard ``d`` (one per stage), in stage order. Activations,
  tangents and cotangents move along it point to point, between neighbouring stages.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from .comm import Communicator


@dataclass(frozen=True)
class Grid:
    """This rank's place in the S × D grid and its two sub-communicators (see the module docstring)."""

    world: Communicator
    stages: int
    shards: int
    stage: int
    shard: int
    stage_comm: Communicator
    pipe_comm: Communicator

    @property
    def first(self) -> bool:
        """This rank holds the first stage (it reads the inputs)."""
        return self.stage == 0

    @property
    def last(self) -> bool:
        """This rank holds the last stage (it computes the loss)."""
        return self.stage == self.stages - 1


def grid_shape(world_size: int, stages: int) -> tuple[int, int]:
    """``(S, D)`` for ``stages`` stages on ``world_size`` ranks; :class:`InputError` unless S divides R."""
    if stages < 1:
        raise InputError(f"model.stages must be >= 1, got {stages}")
    if world_size % stages:
        raise InputError(f"model.stages = {stages} does not divide the {world_size} ranks: launch a multiple of "
                         f"{stages} ranks (stages × data shards)")
    return stages, world_size // stages


def make_grid(world: Communicator, stages: int) -> Grid:
    """The grid of ``stages`` stages over ``world`` (collective: two splits; every rank raises alike
    when ``stages`` does not divide the world, before any collective)."""
    stages, shards = grid_shape(world.size, stages)
    stage, shard = divmod(world.rank, shards)
    return Grid(world, stages, shards, stage, shard, stage_comm=world.split(stage, shard),
                pipe_comm=world.split(shard, stage))
