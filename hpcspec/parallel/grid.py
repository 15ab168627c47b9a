"""The 2-D grid of a pipelined run: S model stages × D data shards over R = S·D ranks.

**Vector order.** In the grid's ``world`` communicator rank ``s·D + d`` holds stage ``s`` of the
model and data shard ``d`` (stage-major), so in ``world``'s rank order the ranks' slices of the
flat parameter vector (stage order = parameter order, each stage's range cut into D pieces) run
from 0 to P without a gap: every world collective on long vectors (``allgather_rows``,
``gather_rows``) works unchanged on such a space.

**Placement** (``model.placement``) is which *launcher* rank takes which place: ``pipe`` (the
default) numbers the launcher's ranks ``r = d·S + s``, so a launcher that fills nodes with
consecutive ranks puts the S stages of one data shard — the ranks that exchange activations
point to point for every micro-batch — on one node; ``stage`` numbers them ``r = s·D + d`` (the D
shards of one stage together: only its once-per-product reduction stays on the node). The grid's
``world`` is then the launcher's communicator renumbered stage-major (one split); a ``stage``
placement uses it as it is. docs/pipeline.md compares the traffic of the two.

Two sub-communicators per rank:

* ``stage``: the D ranks holding stage ``s`` (one per data shard). Partial products of a stage's
  block of H·v are reduced over it (each data shard contributes its samples' share).
* ``pipe``: the S ranks holding data shard ``d`` (one per stage), in stage order. Activations,
  tangents and cotangents move along it point to point, between neighbouring stages.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import PLACEMENTS
from ..errors import InputError
from .comm import Communicator


@dataclass(frozen=True)
class Grid:
    """This rank's place in the S × D grid and its communicators (see the module docstring):
    ``world`` holds every rank numbered stage-major (``stage·shards + shard``), whatever the placement."""

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


def grid_position(rank: int, stages: int, shards: int, placement: str = "pipe") -> tuple[int, int]:
    """``(stage, shard)`` of launcher rank ``rank`` under ``placement`` (see the module docstring)."""
    if placement not in PLACEMENTS:
        raise InputError(f"model.placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if placement == "pipe":
        shard, stage = divmod(rank, stages)
        return stage, shard
    return divmod(rank, shards)


def launcher_bounds(bounds: list[tuple[int, int]], stages: int, shards: int,
                    placement: str = "pipe") -> list[tuple[int, int]]:
    """``bounds`` (indexed by the grid's stage-major ``world`` rank) indexed by launcher rank: what
    a store that numbers its files by the launcher's ranks writes and reads on each rank."""
    out = []
    for rank in range(stages * shards):
        stage, shard = grid_position(rank, stages, shards, placement)
        out.append(bounds[stage * shards + shard])
    return out


def make_grid(world: Communicator, stages: int, placement: str = "pipe") -> Grid:
    """The grid of ``stages`` stages over the launcher's ``world`` (collective: up to three splits;
    every rank raises alike when ``stages`` does not divide the world, before any collective)."""
    stages, shards = grid_shape(world.size, stages)
    stage, shard = grid_position(world.rank, stages, shards, placement)
    # with one stage or one shard both numberings are the launcher's: no renumbered copy needed
    renumber = placement == "pipe" and stages > 1 and shards > 1
    ordered = world.split(0, stage * shards + shard) if renumber else world
    return Grid(ordered, stages, shards, stage, shard, stage_comm=ordered.split(stage, shard),
                pipe_comm=ordered.split(shard, stage))
