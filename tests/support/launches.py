"""Launching, watching and killing whole ``mpirun … python -m hpcspec run`` jobs: shared by the
restart tests (SIGKILL anywhere, resume) and the watchdog tests (hung ranks, Ctrl-C, orphans)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import spawn
from helpers import REPO

COMMON = ["--set", "hessian.hvp='double_backward'", "--set", "hessian.check=false", "--set", "density.plot=false",
          "--set", "checkpoint.every_iters=1"]
LANCZOS = ["--top-k", "5", "--eigen-method", "lanczos", "--tol", "1e-14", "--maxiter", "60", *COMMON]
#: The default solver with a basis so small that it restarts every few passes, then a check round.
BLOCK = ["--top-k", "5", "--block-size", "2", "--max-basis", "11", "--tol", "1e-10", *COMMON]
BLOCK_NUMBERS = ("eigen/values", "eigen/vectors", "eigen/residuals")
SLQ = ["--density", "--probes", "3", "--steps", "40", *COMMON]
#: (dataset, what it is) compared between runs.
LANCZOS_NUMBERS = ("eigen/values", "eigen/alpha", "eigen/beta")
SLQ_NUMBERS = ("lanczos/alpha", "lanczos/beta", "density/nodes")
PAUSE = "0.05"


def launch_env(pause: str = PAUSE) -> dict[str, str]:
    """The environment of a test's ``mpirun``: one thread per rank, oversubscription allowed, this
    checkout importable, and the checkpoint pause the restart tests aim their kills into."""
    return spawn.one_thread_env(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                HPCSPEC_TEST_CHECKPOINT_PAUSE=pause)


def launch(ranks: int, output: Path, args: list[str], pause: str = PAUSE) -> subprocess.Popen:
    command = ["mpirun", "--oversubscribe", "-n", str(ranks), sys.executable, "-m", "hpcspec", "run",
               "--output", str(output), "--resume", *args]
    return spawn.popen(command, env=launch_env(pause), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def processes(marker: Path) -> dict[int, list[bytes]]:
    """Live processes whose command line names ``marker``, with their argv (read from /proc, so
    no procps is needed on a fresh machine)."""
    found = {}
    needle = str(marker).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(needle in arg for arg in argv):
            found[int(entry.name)] = argv
    return found


def kill_everything(proc: subprocess.Popen, marker: Path) -> None:
    """SIGKILL mpirun and every rank (found by the output path on their command lines)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 20
    while True:
        for pid in processes(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is not None and not processes(marker):
            break
        assert time.monotonic() < deadline, "ranks survived SIGKILL"
        time.sleep(0.05)
    proc.wait(timeout=30)


def latest(checkpoints: Path) -> str:
    try:
        return (checkpoints / "LATEST").read_text().strip()
    except OSError:
        return ""


def wait_for(proc: subprocess.Popen, condition, timeout: float = 60.0) -> bool:
    """Poll ``condition`` until true (True) or until the job ends on its own (False)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if condition():
            return True
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.005)
    return False


def read_numbers(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    with h5py.File(path / "results.h5") as f:
        return {name: f[name][...] for name in names}


def rank_pids(marker: Path) -> list[int]:
    """The hpcspec rank processes (not mpirun) whose command line names ``marker``."""
    return [pid for pid, argv in processes(marker).items() if Path(argv[0].decode()).name.startswith("python")]
