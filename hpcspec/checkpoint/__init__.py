"""Checkpoint and restart: the store on disk, when to commit, signals, and what must match to resume."""

from .identity import (
           config_identity,
           data_fingerprint,
           describe_mismatch,
           model_fingerprint,
)
from .policy import Checkpointer, StopRequested
from .signals import StopFlag
from .store import CheckpointStore, Commit, Loaded

__all__ = ["CheckpointStore", "Checkpointer", "Commit", "Loaded", "StopFlag", "StopRequested", "config_identity",
           "data_fingerprint", "describe_mismatch", "model_fingerprint"]
