"""Progress of an iterative task on rank 0: products done / planned, products per second and ETA.

The solvers never print: their run loop calls a hook with the products done after every step
(:meth:`~hpcspec.solvers.base.IterativeSolver.run`), and a driver turns that into display through
a :class:`ProgressDisplay`, one :class:`Meter` per task:

- **a terminal** (``stream.isatty()``, with a width): a bar redrawn in place, ``tqdm``'s when it is installed
  (the optional ``progress`` extra), else a built-in one with the same fields;
- **anything else** (a batch job's log file, a pipe under ``mpirun``): one plain line every
  ``every_seconds`` seconds per task, through the caller's ``emit`` (the run's logger), none at all
  for a task shorter than that;
- **ranks other than 0**, or ``every_seconds = 0``: nothing.

"Planned" is honest: for an adaptive method (Lanczos and power iteration until converged, a trace
with ``rtol``, SLQ until breakdown) it is the budget, an upper bound the run usually stops well
short of, and the display says "at most" for the total and the ETA. The rate is the mean over
this session's products (a resumed task counts only what it computed since it was resumed).
Display reads only counters and a clock; it never touches a vector, so the numbers are unchanged.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Protocol, TextIO

Clock = Callable[[], float]
Emit = Callable[[str], None]


class Steps(Protocol):
    """What :meth:`ProgressDisplay.run` needs of a solver (an :class:`~hpcspec.solvers.base.IterativeSolver`)."""

    num_matvecs: int

    def planned_matvecs(self) -> tuple[int, bool]:
        """The products the run will take, and whether that is only an upper bound."""

    def run(self, boundary: Any = None, progress: Callable[[int], None] | None = None) -> Any:
        """Step until done, calling ``progress(num_matvecs)`` after every step."""


#: Seconds between redraws of a terminal bar (tqdm's default ``mininterval``).
BAR_INTERVAL = 0.1


def duration(seconds: float) -> str:
    """``seconds`` as a reader takes it in: ``42 s``, ``3m05s``, ``2h07m``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Meter:
    """The progress of one task: counts, rate and ETA from a clock; shows nothing itself."""

    def __init__(self, label: str, planned: int, *, bound: bool, done: int = 0, clock: Clock = time.monotonic) -> None:
        self.label, self.planned, self.bound = label, max(int(planned), 0), bound
        self.first = self.done = int(done)
        self.clock = clock
        self.started = clock()

    def rate(self) -> float:
        """Products per second over this session's products (0.0 before any)."""
        elapsed = self.clock() - self.started
        return (self.done - self.first) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds to the planned count at the current rate (an upper bound when ``bound``); None
        while no rate is known."""
        rate = self.rate()
        return max(self.planned - self.done, 0) / rate if rate > 0 else None

    def text(self) -> str:
        """``label: done/planned products (share), rate, ETA``, with "at most" for a bound."""
        total = f"at most {self.planned:,}" if self.bound else f"{self.planned:,}"
        share = f" ({100 * self.done / self.planned:.0f} %)" if self.planned else ""
        eta = self.eta()
        left = "ETA unknown" if eta is None else f"{'at most ' if self.bound else ''}{duration(eta)} left"
        return f"{self.label}: {self.done:,} of {total} products{share}, {self.rate():.3g} products/s, {left}"

    def update(self, done: int) -> None:
        """The task has now done ``done`` products in all."""
        self.done = int(done)

    def write(self, message: str, emit: Emit) -> None:
        """Pass a log line through ``emit`` (a bar clears itself first and redraws after)."""
        emit(message)

    def close(self) -> None:
        """The task ended (finished, stopped for a checkpoint, or failed)."""


class LogMeter(Meter):
    """Batch jobs: one plain line through ``emit`` every ``every`` seconds of the task."""

    def __init__(self, label: str, planned: int, *, bound: bool, done: int = 0, clock: Clock = time.monotonic,
                 every: float, emit: Emit) -> None:
        super().__init__(label, planned, bound=bound, done=done, clock=clock)
        self.every, self.emit = every, emit
        self.last = self.started

    def update(self, done: int) -> None:
        super().update(done)
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.emit(self.text())


class BarMeter(Meter):
    """A terminal: the line redrawn in place (``\\r``), at most every :data:`BAR_INTERVAL` seconds."""

    def __init__(self, label: str, planned: int, *, bound: bool, done: int = 0, clock: Clock = time.monotonic,
                 stream: TextIO) -> None:
        super().__init__(label, planned, bound=bound, done=done, clock=clock)
        self.stream = stream
        self.drawn = False
        self.last = -float("inf")

    def _draw(self) -> None:
        width = 24
        filled = min(width, width * self.done // self.planned) if self.planned else 0
        self.stream.write(f"\r\x1b[K[{'#' * filled}{'.' * (width - filled)}] {self.text()}")
        self.stream.flush()
        self.drawn, self.last = True, self.clock()

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def update(self, done: int) -> None:
        super().update(done)
        if self.clock() - self.last >= BAR_INTERVAL:
            self._draw()

    def write(self, message: str, emit: Emit) -> None:
        self._clear()
        emit(message)
        if self.drawn:
            self._draw()

    def close(self) -> None:
        if self.drawn:
            self._draw()  # the final count stays on screen
            self.stream.write("\n")
            self.stream.flush()


class TqdmMeter(Meter):
    """A terminal with ``tqdm`` installed: its bar, total marked "≤" when it is an upper bound."""

    def __init__(self, label: str, planned: int, *, bound: bool, done: int = 0, clock: Clock = time.monotonic,
                 stream: TextIO, tqdm: type) -> None:
        super().__init__(label, planned, bound=bound, done=done, clock=clock)
        name = f"{label} (total ≤, stops early)" if bound else label
        self.bar = tqdm(total=self.planned, initial=self.done, desc=name, unit="product", file=stream,
                        dynamic_ncols=True, leave=True)

    def update(self, done: int) -> None:
        step = int(done) - self.done
        super().update(done)
        if step > 0:
            self.bar.update(step)

    def write(self, message: str, emit: Emit) -> None:
        self.bar.clear()
        emit(message)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _tqdm() -> type | None:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class ProgressDisplay:
    """Makes the :class:`Meter` of each task for one rank (see the module docstring).

    Args:
        rank: this rank; only rank 0 displays anything.
        every_seconds: a log line's cadence when ``stream`` is not a terminal; 0: no display.
        emit: where log lines go (the run's logger, which adds the rank and the time).
        stream: the terminal to test and draw on (default: ``sys.stderr`` when a task starts).
        clock: seconds, monotonic (a test passes a fake one).
        bar: ``"auto"`` (tqdm if installed, else the built-in bar), ``"builtin"`` or ``"tqdm"``.
    """

    def __init__(self, rank: int, every_seconds: float, emit: Emit, *, stream: TextIO | None = None,
                 clock: Clock = time.monotonic, bar: str = "auto") -> None:
        self.on = rank == 0 and every_seconds > 0
        self.every, self.emit, self.stream, self.clock, self.bar = every_seconds, emit, stream, clock, bar
        self.current: Meter | None = None

    def _terminal(self) -> TextIO | None:
        """The stream to draw a bar on, or None for log lines: not a terminal, or one that reports
        zero columns (a pseudo-terminal nobody sized: a bar there would draw nothing at all)."""
        stream = self.stream if self.stream is not None else sys.stderr
        isatty = getattr(stream, "isatty", None)
        if isatty is None or not isatty():
            return None
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return stream  # a terminal-like object without a descriptor (a test's fake): trust isatty
        return stream if columns > 0 else None

    def task(self, label: str, planned: int, *, bound: bool, done: int = 0) -> Meter:
        """The meter of a task about to run ``planned`` products (an upper bound when ``bound``),
        ``done`` of them already (a resumed task)."""
        args = dict(bound=bound, done=done, clock=self.clock)
        terminal = self._terminal() if self.on else None
        tqdm = _tqdm() if terminal is not None and self.bar != "builtin" else None
        if not self.on:
            meter: Meter = Meter(label, planned, **args)  # type: ignore[arg-type]
        elif terminal is None:
            meter = LogMeter(label, planned, every=self.every, emit=self.emit, **args)  # type: ignore[arg-type]
        elif tqdm is not None:
            meter = TqdmMeter(label, planned, stream=terminal, tqdm=tqdm, **args)  # type: ignore[arg-type]
        else:
            meter = BarMeter(label, planned, stream=terminal, **args)  # type: ignore[arg-type]
        self.current = meter
        return meter

    def run(self, solver: Steps, label: str, boundary: Any = None) -> Any:
        """``solver.run(boundary)`` with its products shown under ``label``; the meter is closed
        however the run ends (finished, stopped for a checkpoint, or failed)."""
        planned, bound = solver.planned_matvecs()
        meter = self.task(label, planned, bound=bound, done=solver.num_matvecs)
        try:
            return solver.run(boundary, meter.update)
        finally:
            self.finished(meter)

    def around(self, emit: Emit) -> Emit:
        """``emit`` made safe to call while a bar is drawn (the bar steps aside for the line)."""
        def write(message: str) -> None:
            if self.current is None:
                emit(message)
            else:
                self.current.write(message, emit)
        return write

    def finished(self, meter: Meter) -> None:
        """Close ``meter`` (the task ended, however)."""
        meter.close()
        if self.current is meter:
            self.current = None
