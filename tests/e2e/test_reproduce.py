"""``jobs/reproduce_pyhessian.sh`` end to end on a fake CIFAR-10 folder, tiny models and step counts,
under ``mpirun -n 2``: every model trains, is analysed, and lands in the comparison table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import h5py
import pytest
import torch

from fakes import make_fake_cifar
from helpers import REPO
import spawn

MODELS = ("resnet20", "resnet56")


@pytest.mark.mpi
def test_reproduce_pyhessian_script_on_fake_cifar(tmp_path: Path) -> None:
    cifar = make_fake_cifar(tmp_path / "cifar", samples_per_batch=4)
    out = tmp_path / "out"
    env = spawn.one_thread_env(CIFAR=str(cifar), OUT=str(out), PYTHON=sys.executable, MODELS=" ".join(MODELS),
               LAUNCH="mpirun --oversubscribe -n 2", STEPS="2", MODEL_ARGS="--set model.width=2",
               TRAIN_ARGS="--batch-size 8", RUN_ARGS="--set eigen.maxiter=8 --trace-matvecs 4 --probes 1 --steps 4",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = spawn.run(["bash", str(REPO / "jobs" / "reproduce_pyhessian.sh")], cwd=tmp_path, env=env,
                     capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (out / "comparison.md").read_text().strip().splitlines()
    assert len(table) == 2 + 2 * len(MODELS)
    for model in MODELS:
        for bn, switch in (("bn", "on"), ("nobn", "off")):
            name = f"{model}-{bn}"
            final = torch.load(out / name / "train" / "step_00000002.pt", weights_only=True)
            assert any(".bn1." in key or key.startswith("bn1.") for key in final) == (bn == "bn")
            with h5py.File(out / name / "analysis" / "results.h5", "r") as f:
                top, residual = f["eigen/values"][0], f["eigen/residuals"][0]
                trace, stderr = f["trace"].attrs["estimate"], f["trace"].attrs["stderr"]
                assert f.attrs["world_size"] == 2 and str(out / name / "train") in f.attrs["config"]
            assert (out / name / "analysis" / "density.png").stat().st_size > 0
            row = next(line for line in table if line.startswith(f"| {name}/analysis |"))
            assert f"| {model} | {switch} | on |" in row
            assert f"{top:.6g} ± {residual:.1e}" in row and f"{trace:.6g} ± {stderr:.2g}" in row


def test_reproduce_pyhessian_script_refuses_a_missing_folder(tmp_path: Path) -> None:
    env = spawn.one_thread_env(CIFAR=str(tmp_path / "nowhere"), OUT=str(tmp_path / "out"))
    done = spawn.run(["bash", str(REPO / "jobs" / "reproduce_pyhessian.sh")], cwd=tmp_path, env=env,
                     capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert not (tmp_path / "out").exists()
