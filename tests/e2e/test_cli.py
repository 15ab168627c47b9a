"""The command line in one process: outputs, layout, and one-line errors with exit code 2."""

import json

import h5py
import numpy as np
import pytest

import bad_inputs
from helpers import dense_hessian, relative_error, top_eigenvalues
from hpcspec.cli import main
from hpcspec.solvers import wasserstein1


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


def _h5(path):
    with h5py.File(path) as f:
        return {name: (dict(f[name].attrs), {key: f[name][key][()] for key in f[name] if isinstance(f[name][key], h5py.Dataset)})
                for name in f if name != "params"}


def test_top_k_trace_and_density_in_one_run(workdir, capsys):
    assert main(["run", "--model", "usermod:make_model", "--data", "usermod:make_data", "--loss", "mse",
                 "--top-k", "3", "--trace", "--density", "--trace-matvecs", "40", "--probes", "3", "--steps", "30",
                 "--output", "all"]) == 0
    import usermod

    matrix = dense_hessian(usermod.make_model(), "mse", *usermod.make_data()).numpy()
    exact = np.linalg.eigvalsh(matrix)
    groups = _h5(workdir / "all" / "results.h5")
    assert set(groups) == {"eigen", "trace", "density", "lanczos", "gradient"}
    assert np.allclose(groups["eigen"][1]["values"], exact[::-1][:3], rtol=1e-8)
    trace = groups["trace"][0]
    assert trace["num_matvecs"] == 40 and trace["stderr"] >= 0
    assert abs(trace["estimate"] - np.trace(matrix)) <= max(4 * trace["stderr"], 1e-8 * abs(np.trace(matrix)))
    nodes, weights = groups["density"][1]["nodes"], groups["density"][1]["weights"]
    assert nodes.shape == weights.shape == (3, 30) and np.allclose(weights.sum(axis=1), 1.0)
    live = nodes[weights > 1e-12]
    assert live.min() >= exact[0] - 1e-8 and live.max() <= exact[-1] + 1e-8
    assert groups["lanczos"][1]["alpha"].shape == (3, 30)
    assert (workdir / "all" / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "top-3 Hessian eigenvalues" in out and "trace (" in out and " ± " in out and "density (SLQ" in out
    summary = json.loads((workdir / "all" / "summary.json").read_text())
    assert set(summary) >= {"eigen", "trace", "density"}


def test_trace_alone_writes_no_eigenpairs(workdir):
    assert main(["run", "--model", "usermod:make_model", "--data", "usermod:make_data", "--loss", "mse",
                 "--trace", "--output", "tr"]) == 0
    assert set(_h5(workdir / "tr" / "results.h5")) == {"trace"}


def test_power_iteration_flag(workdir):
    assert main(["run", "--model", "usermod:make_model", "--data", "usermod:make_data", "--loss", "mse",
                 "--top-k", "2", "--eigen-method", "power", "--set", "eigen.tol=1e-9", "--set", "eigen.maxiter=2000",
                 "--output", "pw"]) == 0
    import usermod

    exact = np.linalg.eigvalsh(dense_hessian(usermod.make_model(), "mse", *usermod.make_data()).numpy())
    expected = exact[np.argsort(-np.abs(exact))][:2]
    eigen = _h5(workdir / "pw" / "results.h5")["eigen"]
    assert eigen[0]["method"] == "power" and eigen[0]["which"] == "largest_magnitude"
    assert np.allclose(eigen[1]["values"], expected, rtol=1e-6)


def test_validate_reports_each_error_against_the_dense_hessian(workdir, capsys):
    assert main(["validate", "--model", "usermod:make_model", "--data", "usermod:make_data", "--loss", "mse",
                 "--output", "val", "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "validation against the dense float64 Hessian (44 × 44)" in out
    record = json.loads((workdir / "val" / "summary.json").read_text())["validation"]
    assert record["eigen"]["max_relative_error"] <= 1e-8
    import usermod

    matrix = dense_hessian(usermod.make_model(), "mse", *usermod.make_data()).numpy()
    assert abs(record["exact_trace"] - np.trace(matrix)) <= 1e-10 * abs(np.trace(matrix))
    assert record["trace"]["relative_error"] == abs(record["trace"]["estimate"] - record["exact_trace"]) / abs(record["exact_trace"])
    # the density errors are those of the stored quadrature against the exact spectrum
    exact = np.linalg.eigvalsh(matrix)
    with h5py.File(workdir / "val" / "results.h5") as f:
        nodes, weights, steps = f["density/nodes"][:], f["density/weights"][:], f["lanczos/steps"][:]
    live = np.arange(nodes.shape[1])[None, :] < steps[:, None]
    expected = wasserstein1(nodes[live], weights[live], exact, np.ones(len(exact)))
    assert np.isclose(record["density"]["wasserstein1"], expected, rtol=1e-9)
    assert 0 < record["density"]["l1"] < 2


def test_debug_keeps_the_user_frames_of_a_raising_factory(workdir, capsys):
    assert main(["run", "--model", "usermod:raising_model", "--output", "dbg"]) == 2
    quiet = capsys.readouterr().err
    assert "Traceback" not in quiet
    assert main(["run", "--model", "usermod:raising_model", "--output", "dbg", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: division by zero" in err
    assert 'usermod.py", line' in err and "in _helper" in err and "return 1 / 0" in err  # the user's own frames
    errors = [line for line in err.splitlines() if line.startswith("hpcspec: error:")]
    assert len(errors) == 1 and "usermod:raising_model raised ZeroDivisionError" in errors[0]


@pytest.mark.parametrize("method", ["block", "lanczos"])
def test_an_unconverged_result_is_not_called_the_top_k(workdir, capsys, method):
    argv = ["run", "--model", "usermod:make_model", "--data", "usermod:make_data", "--loss", "mse", "--top-k", "3",
            "--eigen-method", method, "--maxiter", "4" if method == "lanczos" else "6", "--tol", "1e-14",
            "--set", "hessian.check=false", "--output", "unconverged"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 Ritz values, NOT certified as the top-3 Hessian eigenvalues" in out and "NOT converged" in out, out
    assert "top-3 Hessian eigenvalues (" not in out.replace("as the top-3 Hessian eigenvalues (", "")
