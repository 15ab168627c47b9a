"""A deadline on every MPI collective, and a check that the launcher is still alive.

Blocking MPI collectives wait forever when one rank hangs (a SIGSTOPped process, a node that froze,
a deadlock in user code), and Open MPI busy-polls while it waits: a 64-rank job with one stuck rank
burns 63 cores until the allocation ends. :class:`Watchdog` waits on *non-blocking* collectives
instead: it tests the request in a tight loop for the first 10 ms (a run's usual collectives
finish within it and keep their latency; Open MPI's non-blocking collectives progress only while
tested), then sleeps between tests, backing off from 0.1 ms to 10 ms, so a rank that waits long
(for a slow or hung peer) costs almost no CPU.

When a collective has waited longer than the limit — ``max(comm.timeout_s, comm.timeout_factor ×
the longest this rank has computed between two collectives)`` — the rank asks every other rank, on a
separate communicator, which collective it is in. Ranks waiting in a collective answer from their
poll loop within milliseconds; a rank that is stopped, hung or still computing does not. After a
short grace period the lowest rank that timed out (or answered as waiting) prints one line naming
the ranks that did not arrive and aborts the world with :data:`EXIT_HUNG` (4).

Every poll, and every collective's start, also checks that the parent process (the launcher:
``mpirun``'s daemon, ``slurmstepd``) is still the one this rank started under. When it is gone,
the rank exits with :data:`EXIT_LAUNCHER_GONE` (5) at once, without aborting (there is nobody to
tell) and before any further checkpoint commit, so a requeued job starting in the same folder does
not race orphaned ranks.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np

#: Exit code of a job whose collective waited past the deadline (the world is aborted).
EXIT_HUNG = 4
#: Exit code of a rank whose launcher died (the rank stops without committing).
EXIT_LAUNCHER_GONE = 5
#: Defaults of ``comm.timeout_s`` and ``comm.timeout_factor``.
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_TIMEOUT_FACTOR = 20.0
#: Test without sleeping for this long: most collectives of a run finish within it (median 5.5 ms, docs/cluster.md).
SPIN_S = 1e-2
#: Sleeps between tests start here and double up to MAX_SLEEP_S.
FIRST_SLEEP_S = 1e-4
MAX_SLEEP_S = 1e-2
_QUERY, _REPLY = 7401, 7402


class Watchdog:
    """Waits on non-blocking requests against a deadline; names the ranks missing when it passes.

    Args:
        side: a communicator of the same ranks used only for "where are you?" queries (a
            ``Dup`` of the world, so these messages never match the run's own).
        abort: ends the whole world with the given code (``MPI_Abort``).
        timeout_s: the shortest deadline, seconds.
        factor: the deadline is at least this many times the longest gap between collectives.
        clock: monotonic seconds (tests pass a fake one).
        parent: the launcher's process id (default: this process's parent now).
    """

    def __init__(self, side: Any, abort: Callable[[int], None], *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 factor: float = DEFAULT_TIMEOUT_FACTOR, clock: Callable[[], float] = time.monotonic,
                 parent: int | None = None) -> None:
        self._side, self._abort, self._clock = side, abort, clock
        self.rank, self.size = side.Get_rank(), side.Get_size()
        self.timeout_s, self.factor = timeout_s, factor
        self.parent = os.getppid() if parent is None else parent
        self.sequence = 0
        self.longest_gap = 0.0
        self._last_exit = clock()
        self._operation = ""
        self._sent: list[Any] = []
        from mpi4py import MPI

        self._any, self._status = MPI.ANY_SOURCE, MPI.Status

    def configure(self, timeout_s: float, factor: float) -> None:
        """Set the deadline's two parts (from the config, once it is read)."""
        self.timeout_s, self.factor = timeout_s, factor

    @property
    def limit(self) -> float:
        """Seconds a collective may wait before the world is aborted."""
        return max(self.timeout_s, self.factor * self.longest_gap)

    def wait(self, request: Any, operation: str) -> None:
        """Wait for ``request`` (an ``MPI.Request``) to complete; abort the world past the deadline."""
        self.sequence += 1
        self._operation = operation
        entered = self._clock()
        self.longest_gap = max(self.longest_gap, entered - self._last_exit)
        self.check_launcher()
        delay = FIRST_SLEEP_S
        while not request.Test():
            now = self._clock()
            if now - entered < SPIN_S:
                continue
            self._answer_queries()
            self.check_launcher()
            if now - entered > self.limit:
                self._timed_out(now - entered)
            time.sleep(delay)
            delay = min(2 * delay, MAX_SLEEP_S)
        self._last_exit = self._clock()

    def check_launcher(self) -> None:
        """Exit (code 5) when the process that launched this rank is gone (it was re-parented)."""
        if os.getppid() == self.parent:
            return
        _say(f"hpcspec: rank {self.rank}: the launcher (pid {self.parent}) is gone; stopping before the next "
             f"checkpoint commit (exit {EXIT_LAUNCHER_GONE}); --resume continues from the last commit")
        os._exit(EXIT_LAUNCHER_GONE)

    def _answer_queries(self) -> None:
        """Tell every rank that asked that this one waits in collective number ``sequence``."""
        while self._side.Iprobe(source=self._any, tag=_QUERY):
            question = np.zeros(1, dtype=np.int64)
            status = self._status()
            self._side.Recv(question, source=self._any, tag=_QUERY, status=status)
            answer = np.array([self.sequence], dtype=np.int64)
            self._sent.append(self._side.Isend(answer, dest=status.Get_source(), tag=_REPLY))

    def _timed_out(self, waited: float) -> None:
        """Ask every rank where it is, wait a grace period for answers, report and abort."""
        for peer in range(self.size):
            if peer != self.rank:
                self._sent.append(self._side.Isend(np.array([self.sequence], dtype=np.int64), dest=peer, tag=_QUERY))
        grace = min(10.0, max(1.0, self.limit / 4))
        answers = self._collect(grace)
        waiting = sorted({self.rank, *answers})  # every rank that answered waits, in this collective or another
        missing = [peer for peer in range(self.size) if peer != self.rank and peer not in answers]
        elsewhere = {peer: seq for peer, seq in answers.items() if seq != self.sequence}
        line = _report(self.sequence, self._operation, waited, missing, elsewhere, self.size, self.limit)
        if waiting[0] != self.rank:  # the lowest rank that answered reports; this one only if it never does
            self._collect(2 * grace)
        _say(line)
        self._abort(EXIT_HUNG)
        os._exit(EXIT_HUNG)  # pragma: no cover - Abort does not return

    def _collect(self, seconds: float) -> dict[int, int]:
        """Answers to this rank's query for ``seconds``, answering other ranks' queries meanwhile."""
        answers: dict[int, int] = {}
        deadline = self._clock() + seconds
        while self._clock() < deadline and len(answers) < self.size - 1:
            self._answer_queries()
            while self._side.Iprobe(source=self._any, tag=_REPLY):
                reply = np.zeros(1, dtype=np.int64)
                status = self._status()
                self._side.Recv(reply, source=self._any, tag=_REPLY, status=status)
                answers[status.Get_source()] = int(reply[0])
            time.sleep(1e-3)
        return answers


def _report(sequence: int, operation: str, waited: float, missing: list[int], elsewhere: dict[int, int],
            size: int, limit: float) -> str:
    """The one line a hung collective ends with."""
    names = ", ".join(str(r) for r in missing) or "none"
    other = "".join(f"; rank {peer} waits in collective #{seq} instead" for peer, seq in sorted(elsewhere.items()))
    return (f"hpcspec: error: collective #{sequence} ({operation}) waited {waited:.0f} s, past the {limit:.0f} s "
            f"limit (comm.timeout_s): rank(s) {names} did not arrive{other}; aborting all {size} ranks "
            f"(exit {EXIT_HUNG}); --resume continues from the last checkpoint")


def _say(line: str) -> None:
    """One line on stderr, flushed before the process ends."""
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)


def check_launcher(comm: Any) -> None:
    """At an iteration boundary: stop (exit 5) if ``comm``'s launcher is gone; a no-op without a watchdog."""
    watchdog = getattr(comm, "watchdog", None)
    if watchdog is not None:
        watchdog.check_launcher()


def configure(comm: Any, timeout_s: float, factor: float) -> None:
    """Give ``comm``'s watchdog (if it has one) the configured deadline."""
    watchdog = getattr(comm, "watchdog", None)
    if watchdog is not None and math.isfinite(timeout_s):
        watchdog.configure(timeout_s, factor)
