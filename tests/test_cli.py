"""The command line in one process: outputs, layout, and one-line errors with exit code 2."""

import json

import h5py
import numpy as np
import pytest

import bad_inputs
from helpers import dense_hessian, relative_error, top_eigenvalues
from hpcspec.cli import main


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    bad_inputs.prepare(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", [case[0] for case in bad_inputs.cases(bad_inputs.Path("."))])
def test_bad_input_is_one_line_and_exit_2(workdir, capsys, name):
    argv, message = next((argv, message) for case, argv, message in bad_inputs.cases(workdir) if case == name)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("hpcspec: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert not (workdir / "out" / "results.h5").exists()


def test_user_module_matches_dense_eigendecomposition(workdir, capsys):
    code = main(["run", "--model", "usermod:make_model", "--data", "usermod:make_data", "--loss", "mse",
                 "--top-k", "5", "--output", "out", "--batch-size", "7"])
    assert code == 0
    import usermod

    model = usermod.make_model()
    x, y = usermod.make_data()
    exact = top_eigenvalues(dense_hessian(model, "mse", x, y), 5)
    with h5py.File(workdir / "out" / "results.h5") as f:
        values, vectors = f["eigen/values"][:], f["eigen/vectors"][:]
        offsets, names = f["params/offsets"][:], [n.decode() for n in f["params/names"][:]]
        assert f.attrs["world_size"] == 1 and f.attrs["num_params"] == 44 and "[eigen]" in f.attrs["config"]
        assert f["eigen/residuals"].shape == (5,) and f["eigen"].attrs["converged"]
    assert relative_error(values, exact) <= 1e-8
    assert vectors.shape == (5, 44) and np.allclose(vectors @ vectors.T, np.eye(5), atol=1e-10)
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"] and offsets.tolist() == [0, 24, 30, 42, 44]
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    assert summary["eigen"]["values"] == values.tolist() and summary["num_params"] == 44
    table = capsys.readouterr().out
    assert "top-5 Hessian eigenvalues" in table and f"{values[0]:.15e}" in table


def test_default_run_trains_and_reports(workdir, capsys):
    assert main(["--backend", "single"]) == 0
    summary = json.loads((workdir / "hpcspec-out" / "summary.json").read_text())
    assert summary["data"] == "digits" and summary["num_samples"] == 1797 and summary["eigen"]["converged"]
    assert summary["loss_value"] < 0.1  # it was trained before the analysis
    values = summary["eigen"]["values"]
    assert len(values) == 5 and values == sorted(values, reverse=True) and values[-1] > 0


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("hpcspec", "torch", "numpy", "h5py", "mpi4py", "world size", "device"):
        assert name in out


def test_float32_and_which_flags(workdir):
    assert main(["run", "--model", "usermod:make_model", "--data", "usermod:make_data", "--loss", "mse",
                 "--dtype", "float32", "--which", "smallest", "--top-k", "2", "--output", "o32"]) == 0
    import usermod

    exact = np.linalg.eigvalsh(dense_hessian(usermod.make_model(), "mse", *usermod.make_data()).numpy())[:2]
    with h5py.File(workdir / "o32" / "results.h5") as f:
        assert f.attrs["dtype"] == "float32"
        assert np.allclose(f["eigen/values"][:], exact, rtol=1e-4, atol=1e-5 * abs(exact).max())
