"""The torch.distributed (gloo) and Horovod backends give the MPI backend's numbers: launched by torchrun or mpirun."""

from __future__ import annotations

import os
import sys

import h5py
import numpy as np
import pytest
from helpers import REPO, mpirun
import spawn

from hpcspec.errors import InputError
from hpcspec.parallel.comm import world

pytestmark = pytest.mark.mpi

JOB = ["run", "--top-k", "4", "--trace", "--density", "--probes", "2", "--steps", "20", "--trace-matvecs", "20",
       "--set", "hessian.hvp='double_backward'", "--set", "density.plot=false", "--set", "hessian.check=false"]
NUMBERS = ("eigen/values", "eigen/vectors", "trace/samples", "lanczos/alpha", "lanczos/beta")


def _numbers(path) -> dict[str, np.ndarray]:
    with h5py.File(path / "results.h5") as f:
        assert f.attrs["world_size"] > 0
        return {name: f[name][...] for name in NUMBERS} | {"communicator": f.attrs["communicator"]}


def _torchrun(ranks: int, output, cwd) -> None:
    env = spawn.one_thread_env(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr",
               "127.0.0.1", "--master_port", str(spawn.free_port()), "-m", "hpcspec", *JOB, "--output", str(output)]
    done = spawn.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]


def _assert_same_numbers(ours: dict[str, np.ndarray], mpi: dict[str, np.ndarray], ranks: int) -> None:
    """Bitwise on 2 ranks (a sum of two partial products is the same in any order); within
    1e-10 of the largest magnitude on 3, where the backends may add the partial products in other orders."""
    for name in NUMBERS:
        if ranks == 2:
            assert np.array_equal(ours[name], mpi[name]), name
        else:
            scale = np.max(np.abs(mpi[name]))
            assert np.max(np.abs(ours[name] - mpi[name])) <= 1e-10 * scale, name


def _mpi_numbers(ranks: int, tmp_path, *backend: str) -> dict[str, np.ndarray]:
    """The JOB's numbers from ``mpirun -n ranks python -m hpcspec [BACKEND] JOB``."""
    output = tmp_path / (backend[-1] if backend else "mpi")
    done = mpirun(ranks, ["-m", "hpcspec", *backend, *JOB, "--output", str(output)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return _numbers(output)


@pytest.mark.parametrize("ranks", [2, 3])
def test_torchrun_gloo_equals_mpi(tmp_path, ranks):
    _torchrun(ranks, tmp_path / "torch", tmp_path)
    gloo, mpi = _numbers(tmp_path / "torch"), _mpi_numbers(ranks, tmp_path)
    assert gloo.pop("communicator").startswith("torch.distributed gloo")
    assert mpi.pop("communicator").startswith("mpi4py")
    _assert_same_numbers(gloo, mpi, ranks)


@pytest.mark.parametrize("ranks", [2, 3])
def test_horovod_equals_mpi(tmp_path, ranks):
    pytest.importorskip("horovod.torch")
    horovod, mpi = _mpi_numbers(ranks, tmp_path, "--backend", "horovod"), _mpi_numbers(ranks, tmp_path)
    assert horovod.pop("communicator").startswith("horovod")
    assert mpi.pop("communicator").startswith("mpi4py")
    _assert_same_numbers(horovod, mpi, ranks)


def test_horovod_backend_without_horovod_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "horovod.torch", None)  # ``import horovod.torch`` now fails
    with pytest.raises(InputError) as caught:
        world("horovod")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the horovod backend needs horovod, which is not installed")
    assert "pip install horovod (built with PyTorch and MPI support)" in message


def test_torch_backend_under_mpirun(tmp_path):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(spawn.free_port())
    try:
        done = mpirun(2, ["-m", "hpcspec", "--backend", "torch", *JOB, "--output", str(tmp_path / "t")], tmp_path)
    finally:
        del os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert _numbers(tmp_path / "t")["communicator"].startswith("torch.distributed gloo")


def test_torch_backend_without_a_launcher_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    env.update(spawn.ONE_THREAD, PYTHONPATH=str(REPO))
    done = spawn.run([sys.executable, "-m", "hpcspec", "--backend", "torch", "info"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("hpcspec: error: the torch backend needs RANK")
