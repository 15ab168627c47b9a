"""Starting benchmark jobs under mpirun: one environment and one command line for every script."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The ≈270k-parameter job: MLP 64-480-480-10 on digits, 50 training steps, top-5 + trace + density.
MLP_JOB = ["--model", "mlp", "--data", "digits", "--top-k", "5", "--trace", "--density", "--train-steps", "50",
           "--set", "model.hidden=[480, 480]", "--set", "model.activation='relu'",
           "--set", "hessian.hvp='double_backward'", "--set", "density.plot=false"]


def mpirun(ranks: int, args: list[str], *, threads: int | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """``mpirun -n ranks python ARGS`` (oversubscribing, root allowed, this checkout importable);
    returns the finished process and its wall time in seconds."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = ["mpirun", "--oversubscribe", "-n", str(ranks), sys.executable, *args]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    return done, time.perf_counter() - started
