"""Stop requests from the batch system: SIGTERM, SIGUSR1 and SIGINT set a flag, nothing more.

A handler cannot safely checkpoint (it may interrupt an HDF5 write or a collective), so it only
records the signal; :class:`~hpcspec.checkpoint.policy.Checkpointer` reads the flag at the next
iteration boundary, where all ranks agree to checkpoint and exit 3. A second SIGINT restores
Python's default behaviour (KeyboardInterrupt), so an impatient user can still break out.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

#: The signals that request "checkpoint and stop": SLURM's ``--signal``, the scheduler's
#: SIGTERM at walltime or preemption, and Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopFlag:
    """Records the first stop signal received; installs and removes its handlers."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def request(self, signum: int) -> None:
        """Record a stop request (what the handlers do; tests call it directly)."""
        if self.signal is None:
            self.signal = signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.request(signum)

    def install(self) -> "StopFlag":
        """Handle :data:`STOP_SIGNALS` (main thread only; elsewhere this is a no-op)."""
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                break
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> "StopFlag":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
