"""A pipelined run (``model.stages = 2``) stopped with a checkpoint and resumed through the CLI on
another (S, D) grid with the same stage split: D = 1 → 2 and D = 2 → 1. The resumed eigenvalues,
eigenvectors and Lanczos coefficients equal an uninterrupted run's to 1e-10 relative — not bitwise: another D adds
each stage's partial products over other data shards, in another order. Changing S is refused on
every rank with one line naming the two splits."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from launches import COMMON, LANCZOS_NUMBERS, kill_everything, latest, launch, read_numbers, wait_for

from hpcspec.cli import main

pytestmark = pytest.mark.mpi

#: A 3-block MLP of 89 parameters (blocks of 36, 35 and 18: stages {36} | {35, 18} at S = 2).
JOB = ["--model", "mlp", "--data", "synthetic", "--set", "data.samples=30", "--set", "data.features=5",
       "--set", "data.classes=3", "--set", "model.hidden=[6, 5]", "--set", "data.batch_size=7",
       "--set", "hessian.dtype='float64'", "--top-k", "3", "--eigen-method", "lanczos", "--tol", "1e-13",
       "--maxiter", "60", *COMMON]
#: Also the eigenvectors: gathered whole over the stage-major space (4 ranks: placed pipe-major).
NUMBERS = (*LANCZOS_NUMBERS, "eigen/vectors")


def _stopped(ranks: int, output: Path, job: list[str]) -> str:
    """Run ``job`` on ``ranks`` ranks until it has committed 4 checkpoints, then stop it with
    SIGUSR1 to mpirun (checkpoint and exit 3, as a job script does at walltime); the checkpoint it left."""
    proc = launch(ranks, output, job)
    try:
        assert wait_for(proc, lambda: latest(output / "checkpoints") >= "step-00000004", timeout=40)
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            kill_everything(proc, output)
    assert proc.returncode == 3, out[-3000:]
    return latest(output / "checkpoints")


def _finished(ranks: int, output: Path, job: list[str]) -> str:
    proc = launch(ranks, output, job, pause="0")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    """The uninterrupted run, one rank, unsplit (equal to any grid's to rounding: test_pipeline.py)."""
    output = tmp_path_factory.mktemp("reference") / "out"
    assert main(["--backend", "single", "run", "--output", str(output), *JOB]) == 0
    return read_numbers(output, NUMBERS)


@pytest.mark.parametrize("before, after", [(2, 4), (4, 2)])
def test_resume_on_another_number_of_data_shards_agrees_to_1e_10(tmp_path, reference, before, after):
    output, job = tmp_path / "out", [*JOB, "--set", "model.stages=2"]
    stopped_at = _stopped(before, output, job)
    out = _finished(after, output, job)
    assert f"resuming from checkpoint {output / 'checkpoints' / stopped_at}" in out
    resumed = read_numbers(output, NUMBERS)
    for key in NUMBERS:
        error = float(np.max(np.abs(resumed[key] - reference[key])) / np.max(np.abs(reference[key])))
        print(f"S = 2, D = {before // 2} -> {after // 2}: {key} relative difference {error:.1e}")  # pytest -s
        assert error <= 1e-10, (key, error)


def test_resume_with_another_stage_count_is_refused_on_every_rank(tmp_path):
    output = tmp_path / "out"
    _stopped(2, output, [*JOB, "--set", "model.stages=2"])
    proc = launch(2, output, JOB, pause="0")  # model.stages = 1: one rank per data shard, the whole model
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("hpcspec: error:")]
    assert len(errors) == 1, out[-3000:]
    assert "split into 2 pipeline stage(s), this run into 1: the stage split differs" in errors[0]
    assert "--set model.stages=2" in errors[0]
