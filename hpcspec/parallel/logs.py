"""Rank-aware logging: progress from rank 0 on stderr, only errors from the others.

Configured once, by the entry point (:func:`hpcspec.cli.main`) or by a library user who asks for
it; every module logs through ``logging.getLogger(__name__)``, a child of the ``hpcspec`` logger,
and never configures anything. Without :func:`setup_logging` the library stays quiet the standard
way: its records go to the root logger (Python prints warnings and errors, unformatted).
"""

from __future__ import annotations

import logging
import sys

from .comm import Communicator

LOGGER_NAME = "hpcspec"


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a record is emitted (a redirection or a test's
    capture made after the set-up still receives the lines), as :data:`logging.lastResort` does."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def setup_logging(comm: Communicator, verbose: bool = True) -> logging.Logger:
    """Configure the ``hpcspec`` logger: ``[hpcspec {rank}/{size} HH:MM:SS]`` before every line,
    INFO on rank 0 (with ``verbose``), only errors on the other ranks. Replaces an earlier set-up
    (each entry point call configures afresh); returns the logger."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter(f"[hpcspec {comm.rank}/{comm.size} %(asctime)s] %(message)s",
                                           datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if comm.rank == 0 and verbose else logging.ERROR)
    logger.propagate = False
    return logger
