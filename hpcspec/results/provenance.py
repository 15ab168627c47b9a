"""Versions and origin of a run, recorded in every output file and printed by ``info``."""

from __future__ import annotations

import datetime as _dt
import platform
import socket
import subprocess
from pathlib import Path

import numpy as np
import torch

from ..parallel.comm import Communicator
from ..version import __version__


def git_revision() -> str:
    """The commit of the hpcspec source tree when it runs from a git checkout, else ''."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def versions(comm: Communicator) -> dict[str, str]:
    """Library versions that determine the numbers a run produces."""
    found = {"hpcspec": __version__, "python": platform.python_version(), "torch": torch.__version__,
             "numpy": np.__version__}
    for name in ("scipy", "h5py", "mpi4py"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = "not installed"
    found["communicator"] = comm.description
    return found


def provenance(comm: Communicator, device: torch.device) -> dict[str, str | int]:
    """Everything stored as attributes on the results file's root group."""
    return {**versions(comm), "git_revision": git_revision(), "world_size": comm.size,
            "device": str(device), "host": socket.gethostname(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
