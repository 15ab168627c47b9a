"""When to checkpoint and when to stop: one small collective at every iteration boundary.

Rank 0 owns the clock and the cadence; any rank may have caught a stop signal. At each boundary
every rank contributes two numbers to one sum — "I caught a signal", and (rank 0 only) "a
checkpoint is due" — so all ranks take the same decision in the same step: carry on, commit a
checkpoint, or commit one and stop (:class:`StopRequested`, exit code 3).

The time cadence stretches itself so that writing checkpoints costs at most ``max_overhead`` of
the run: after a write that took w seconds, the next one waits at least ``w / max_overhead``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch

from ..parallel.comm import Communicator
from ..parallel.watchdog import check_launcher
from ..solvers.base import State
from .signals import StopFlag
from .store import CheckpointStore, Commit

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """Every rank stopped on a signal after committing ``commit`` (exit code 3)."""

    def __init__(self, signal_name: str, commit: Commit) -> None:
        self.signal_name = signal_name
        self.commit = commit
        super().__init__(f"stopped on {signal_name or 'a signal'} after committing checkpoint {commit.path}")


class Checkpointer:
    """Decides at each boundary whether to checkpoint or stop, and keeps the overhead figures.

    Args:
        store: where checkpoints go.
        size: the vector length P (the store splits vectors of this length across ranks).
        every_iters: commit every this many boundaries (0: no iteration cadence).
        every_seconds: commit when this long has passed since the last commit or the start
            (0: no time cadence).
        max_overhead: stretch the time cadence so writes take at most this share of run time.
        flag: the stop flag the signal handlers set.
        meta: scalars stored in every manifest (identity, HVP method, …).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, store: CheckpointStore, comm: Communicator, size: int, *, every_iters: int = 0,
                 every_seconds: float = 0.0, max_overhead: float = 0.02, flag: StopFlag | None = None,
                 meta: dict[str, Any] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.comm, self.size = store, comm, size
        self.every_iters, self.every_seconds, self.max_overhead = every_iters, every_seconds, max_overhead
        self.flag = flag or StopFlag()
        self.meta = dict(meta or {})
        self._clock = clock
        self._last = clock()
        self._since = 0
        self._interval = every_seconds
        self.commits: list[Commit] = []
        #: Boundaries met so far (0 after a resume that found every task finished).
        self.boundaries = 0

    @property
    def seconds(self) -> float:
        """Time spent writing checkpoints so far."""
        return sum(c.seconds for c in self.commits)

    def _due(self) -> bool:
        if self.every_iters and self._since >= self.every_iters:
            return True
        return bool(self._interval) and self._clock() - self._last >= self._interval

    def boundary(self, state: Callable[[], State]) -> None:
        """Called by every rank between two iterations; ``state`` is evaluated only to commit."""
        self._since += 1
        self.boundaries += 1
        votes = torch.tensor([1.0 if self.flag.signal is not None else 0.0,
                              1.0 if self.comm.rank == 0 and self._due() else 0.0], dtype=torch.float64)
        self.comm.allreduce_sum_(votes)
        stop, due = bool(votes[0] > 0), bool(votes[1] > 0)
        if not (stop or due):
            return
        commit = self.commit(state())
        if stop:
            raise StopRequested(self.flag.name, commit)

    def commit(self, state: State) -> Commit:
        """Commit ``state`` now (collective) and restart the cadence. An orphaned rank (its launcher
        killed) stops here, before committing again; the boundary's vote collective checks too."""
        check_launcher(self.comm)
        commit = self.store.save(state, self.size, self.meta)
        self.commits.append(commit)
        self._since = 0
        self._last = self._clock()
        if self.every_seconds and self.max_overhead > 0:
            self._interval = max(self.every_seconds, commit.seconds / self.max_overhead)
        log.info("checkpoint %s committed: %.1f MB in %.2f s", commit.path.name, commit.nbytes / 1e6, commit.seconds)
        return commit
