"""Rank-aware logging: progress from rank 0 on stderr, only errors from the others."""

from __future__ import annotations

import logging
import sys

from .comm import Communicator

LOGGER_NAME = "hpcspec"


def setup_logging(comm: Communicator, verbose: bool = True) -> logging.Logger:
    """Configure the ``hpcspec`` logger once per process; ``{rank}/{size}`` in every line."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[hpcspec {comm.rank}/{comm.size} %(asctime)s] %(message)s",
                                           datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if comm.rank == 0 and verbose else logging.ERROR)
    logger.propagate = False
    return logger
