"""Under mpirun: same eigenvalues for 1, 2 and 3 ranks and any batch size; agreed exits; aborts."""

import json
import time

import bad_inputs
import h5py
import numpy as np
import pytest
from helpers import REPO, dense_hessian, mpirun, relative_error, top_eigenvalues

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("mpi")
    bad_inputs.prepare(path)
    return path


def _eigenvalues(path):
    with h5py.File(path) as f:
        return f["eigen/values"][:], f.attrs["world_size"]


def test_user_module_same_top5_for_1_2_3_ranks_and_batch_sizes(folder):
    import sys

    sys.path.insert(0, str(folder))
    import usermod

    exact = top_eigenvalues(dense_hessian(usermod.make_model(), "mse", *usermod.make_data()), 5)
    found = {}
    for ranks, batch in [(1, 16), (2, 16), (3, 16), (3, 7)]:
        out = folder / f"out-{ranks}-{batch}"
        done = mpirun(ranks, ["-m", "hpcspec", "run", "--model", "usermod:make_model", "--data", "usermod:make_data",
                              "--loss", "mse", "--top-k", "5", "--tol", "1e-12", "--batch-size", str(batch),
                              "--output", str(out)], cwd=folder)
        assert done.returncode == 0, done.stderr
        values, world_size = _eigenvalues(out / "results.h5")
        assert world_size == ranks
        assert relative_error(values, exact) <= 1e-8
        found[ranks, batch] = values
        assert done.stdout.count("top-5 Hessian eigenvalues") == 1  # rank 0 alone prints the table
    reference = found[1, 16]
    for key, values in found.items():
        assert relative_error(values, reference) <= 1e-10, key


def test_done_when_command_three_ranks_default_settings(folder):
    import sys

    sys.path.insert(0, str(folder))
    import usermod

    done = mpirun(3, ["-m", "hpcspec", "run", "--model", "usermod:make_model", "--data", "usermod:make_data",
                      "--loss", "mse", "--top-k", "5", "--output", "out"], cwd=folder)
    assert done.returncode == 0, done.stderr
    exact = top_eigenvalues(dense_hessian(usermod.make_model(), "mse", *usermod.make_data()), 5)
    assert relative_error(_eigenvalues(folder / "out" / "results.h5")[0], exact) <= 1e-8


def _estimates(path):
    """Every number a run estimates (eigenvalues, trace and its error, SLQ nodes and weights, density)."""
    with h5py.File(path) as f:
        return {"eigen": f["eigen/values"][:], "trace": np.array([f["trace"].attrs["estimate"], f["trace"].attrs["stderr"]]),
                "nodes": f["density/nodes"][:], "weights": f["density/weights"][:], "density": f["density/values"][:],
                "alpha": f["lanczos/alpha"][:]}


def _assert_same_estimates(found, reference, rtol):
    for key, values in found.items():
        scale = np.abs(reference[key]).max()
        assert np.max(np.abs(values - reference[key])) <= rtol * scale, key


def test_default_job_two_ranks_matches_one(folder):
    runs = {}
    for ranks in (1, 2):
        out = folder / f"default-{ranks}"
        out.mkdir()
        done = mpirun(ranks, ["-m", "hpcspec"], cwd=out)
        assert done.returncode == 0, done.stderr
        assert "trace (" in done.stdout and "density (SLQ" in done.stdout
        assert (out / "hpcspec-out" / "density.png").stat().st_size > 10_000
        runs[ranks] = _estimates(out / "hpcspec-out" / "results.h5")
    # trained for 100 Adam steps on each rank count: rounding in training is amplified a little
    _assert_same_estimates(runs[2], runs[1], 1e-8)


def test_all_tasks_equal_across_1_2_3_ranks(folder):
    """Top-k, trace and density in one run; every estimate equal across rank counts to 1e-10."""
    runs = {}
    for ranks in (1, 2, 3):
        out = folder / f"tasks-{ranks}"
        done = mpirun(ranks, ["-m", "hpcspec", "run", "--model", "usermod:make_model", "--data", "usermod:make_data",
                              "--loss", "mse", "--top-k", "3", "--trace", "--density", "--trace-matvecs", "30",
                              "--probes", "3", "--steps", "20", "--batch-size", "7", "--output", str(out)], cwd=folder)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("trace (") == 1 and done.stdout.count("density (SLQ") == 1
        runs[ranks] = _estimates(out / "results.h5")
    for ranks in (2, 3):
        _assert_same_estimates(runs[ranks], runs[1], 1e-10)


def test_every_bad_input_exits_2_on_every_rank_in_one_world(folder):
    done = mpirun(2, [str(REPO / "tests" / "mpi" / "mpi_bad_inputs.py"), str(folder)], cwd=folder, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    per_rank = json.loads((folder / "mpi_bad_inputs.json").read_text())
    for (name, _, message), rank0, rank1 in zip(bad_inputs.cases(folder), *per_rank):
        assert rank0["code"] == rank1["code"] == 2, name
        lines = [line for line in rank0["stderr"].splitlines() if line.startswith("hpcspec: error:")]
        assert len(lines) == 1 and message in lines[0], (name, rank0["stderr"])
        assert "hpcspec: error:" not in rank1["stderr"], name
    nan_case = next(r for r in per_rank[0] if r["name"] == "hdf5 with NaN")
    assert "(on rank 1)" in nan_case["stderr"]  # only rank 1's half holds the NaN


def test_cli_exit_code_2_under_mpirun(folder):
    done = mpirun(2, ["-m", "hpcspec", "run", "--data", str(folder / "nan.h5"), "--output", str(folder / "x")],
                  cwd=folder)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("hpcspec: error:")]
    assert len(errors) == 1 and "NaN" in errors[0]


def test_crash_on_one_rank_aborts_the_world_quickly(folder):
    (folder / "crashmod.py").write_text(  # a bug in the model's forward (not in its factory: that is bad input)
        "import os, torch\n"
        "class Boom(torch.nn.Linear):\n"
        "    calls = 0\n"
        "    def forward(self, x):\n"
        "        Boom.calls += 1\n"
        "        if os.environ.get('OMPI_COMM_WORLD_RANK') == '1' and Boom.calls >= 4:  # after the data check\n"
        "            raise RuntimeError('boom on rank 1')\n"
        "        return super().forward(x)\n"
        "def make_model():\n"
        "    return Boom(4, 2).double()\n")
    started = time.monotonic()
    done = mpirun(2, ["-m", "hpcspec", "run", "--model", "crashmod:make_model", "--data", "usermod:make_data",
                      "--loss", "mse", "--set", "hessian.graph_budget_mb=0", "--output", str(folder / "crash")],
                  cwd=folder, timeout=60)
    assert done.returncode not in (0, 2)
    assert "boom on rank 1" in done.stderr and "aborting all 2 ranks" in done.stderr
    assert time.monotonic() - started < 30


def test_factory_raising_on_one_rank_is_agreed_bad_input(folder):
    """A user factory that raises on rank 1 only: every rank exits 2, rank 0 prints the one line."""
    (folder / "rankmod.py").write_text(
        "import os, torch\n"
        "def make_model():\n"
        "    if os.environ.get('OMPI_COMM_WORLD_RANK') == '1':\n"
        "        raise ZeroDivisionError('no model on rank 1')\n"
        "    return torch.nn.Linear(4, 2).double()\n")
    done = mpirun(2, ["-m", "hpcspec", "run", "--model", "rankmod:make_model", "--data", "usermod:make_data",
                      "--loss", "mse", "--output", str(folder / "rankmod")], cwd=folder, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("hpcspec: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "rankmod:make_model raised ZeroDivisionError: no model on rank 1 (rankmod.py:4)" in errors[0]
    assert errors[0].endswith("(on rank 1)")


def test_more_ranks_than_samples(folder):
    (folder / "tinymod.py").write_text(
        "import torch\n"
        "def make_data():\n"
        "    return torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64), torch.tensor([[1.0], [0.0]], dtype=torch.float64)\n"
        "def make_model():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1)).double()\n")
    done = mpirun(3, ["-m", "hpcspec", "run", "--model", "tinymod:make_model", "--data", "tinymod:make_data",
                      "--loss", "mse", "--top-k", "2", "--output", str(folder / "tiny")], cwd=folder)
    assert done.returncode == 0, done.stderr
    import sys

    sys.path.insert(0, str(folder))
    import tinymod

    exact = top_eigenvalues(dense_hessian(tinymod.make_model(), "mse", *tinymod.make_data()), 2)
    assert relative_error(_eigenvalues(folder / "tiny" / "results.h5")[0], exact) <= 1e-8
