"""Gradient in the top eigenspace, loss along eigenvectors, parameter selection — each against an
independent computation: a dense float64 eigendecomposition, the gradient by ``torch.func.grad``, and
the loss by ``functional_call`` on the whole data set at once."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from helpers import classification_data, dense_hessian, flat_params, mlp, mpirun
from hpcspec.cli import main
from hpcspec.config import load_config
from hpcspec.errors import ConfigError, InputError
from hpcspec.analyses.gradient import gradient_overlap
from hpcspec.analyses.landscape import RANDOM_STREAM, loss_landscape, random_direction
from hpcspec.curvature.operator import HessianOperator
from hpcspec.problem.params import ParamLayout, select_parameters
from hpcspec.results.plots import write_landscape_plots
from hpcspec.results.hdf5 import read_gradient, read_landscape
from hpcspec.analyses.tasks import run_tasks

USER_MODULE = '''
import torch

def make_model():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()

def make_data():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (30,), generator=gen)
'''


def mean_loss_at(model: nn.Module, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 names: list[str] | None = None) -> float:
    """Cross-entropy mean over all of (x, y) with the named parameters set from ``flat`` (others as they are)."""
    layout = ParamLayout.of(model)
    names = names or list(layout.names)
    shapes = {name: param.shape for name, param in model.named_parameters()}
    pieces = torch.split(flat, [shapes[n].numel() for n in names])
    params = {n: p.view(shapes[n]) for n, p in zip(names, pieces)}
    with torch.no_grad():
        return float(nn.functional.cross_entropy(functional_call(model, params, (x,)), y))


def direct_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    layout = ParamLayout.of(model)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params = dict(zip(layout.names, layout.split(flat)))
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.func.grad(loss)(flat_params(model).double())


def exact_fraction(matrix: torch.Tensor, g: torch.Tensor, k: int) -> tuple[float, np.ndarray]:
    values, vectors = np.linalg.eigh(matrix.numpy())
    top = vectors[:, ::-1][:, :k]
    overlaps = (top.T @ g.numpy()) ** 2 / float(g @ g)
    return float(overlaps.sum()), overlaps


@pytest.fixture
def problem():
    model = mlp(seed=0, sizes=(5, 7, 3))
    x, y = classification_data(n=37)
    return model, x, y


def test_gradient_fraction_matches_dense_eigendecomposition(problem):
    model, x, y = problem
    op = HessianOperator(model, "cross_entropy", (x, y), batch_size=10, method="double_backward")
    cfg = load_config(overrides={"tasks": ["eigen"], "eigen.top_k": 3, "eigen.tol": 1e-12})
    results = run_tasks(op, cfg)
    g = direct_gradient(model, x, y)
    fraction, overlaps = exact_fraction(dense_hessian(model, "cross_entropy", x, y), g, 3)
    found = results.gradient
    assert found is not None and results.landscape is None
    assert found.norm == pytest.approx(float(torch.linalg.vector_norm(g)), rel=1e-12)
    assert found.fraction == pytest.approx(fraction, rel=1e-8, abs=1e-12)
    np.testing.assert_allclose(found.overlaps, overlaps, rtol=1e-7, atol=1e-12)
    assert 0 < found.fraction < 1
    # sharded rows give the same numbers as whole vectors (one rank: rows = everything)
    rows = gradient_overlap(g, results.eigen.eigenvectors, found.eigenvalues, comm=op.comm, rows=(0, op.size))
    np.testing.assert_allclose(rows.overlaps, found.overlaps, rtol=1e-12)


def test_landscape_equals_direct_evaluation_and_restores_parameters(problem):
    model, x, y = problem
    op = HessianOperator(model, "cross_entropy", (x, y), batch_size=8, method="double_backward")  # 37 = 4·8 + 5
    before = [p.detach().clone() for p in model.parameters()]
    theta = flat_params(model)
    values, vectors = np.linalg.eigh(dense_hessian(model, "cross_entropy", x, y).numpy())
    top = torch.from_numpy(vectors[:, ::-1][:, :2].copy())
    land = loss_landscape(op, top, values[::-1][:2], radius=0.7, points=5, points_2d=3, random=True, seed=11)
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q.detach())  # restored bitwise
    assert land.loss == pytest.approx(mean_loss_at(model, theta, x, y), rel=1e-13)
    direct = [mean_loss_at(model, theta + a * top[:, 0], x, y) for a in land.alphas]
    np.testing.assert_allclose(land.loss_top, direct, rtol=1e-12)
    r = random_direction(op.size, 11 + RANDOM_STREAM)
    assert float(torch.linalg.vector_norm(r)) == pytest.approx(1.0, rel=1e-14)
    np.testing.assert_allclose(land.loss_random, [mean_loss_at(model, theta + a * r, x, y) for a in land.alphas],
                               rtol=1e-12)
    grid = [[mean_loss_at(model, theta + a * top[:, 0] + b * top[:, 1], x, y) for b in land.betas] for a in land.betas]
    np.testing.assert_allclose(land.loss_2d, grid, rtol=1e-12)
    assert land.loss_2d[1, 1] == pytest.approx(land.loss, rel=1e-13)


def test_landscape_near_zero_is_the_quadratic_model(problem):
    model, x, y = problem
    op = HessianOperator(model, "cross_entropy", (x, y), batch_size=16, method="double_backward")
    values, vectors = np.linalg.eigh(dense_hessian(model, "cross_entropy", x, y).numpy())
    v, lam = torch.from_numpy(vectors[:, -1].copy()), float(values[-1])
    slope = float(direct_gradient(model, x, y) @ v)
    errors = {}
    for radius in (1e-2, 1e-3):
        land = loss_landscape(op, v, np.array([lam]), radius=radius, points=5, points_2d=0, random=False, seed=0)
        quadratic = land.loss + slope * land.alphas + 0.5 * lam * land.alphas ** 2
        errors[radius] = float(np.max(np.abs(land.loss_top - quadratic)))
        curvature = 0.5 * lam * radius ** 2
        assert errors[radius] < 1e-2 * curvature  # the second-order term is right
    assert errors[1e-3] < errors[1e-2] / 200  # and what is left is O(α³)


def test_selected_parameters_give_the_diagonal_block_of_the_full_hessian(problem):
    from hpcspec.curvature.dense import dense_hessian as operator_dense

    model, x, y = problem
    full = dense_hessian(model, "cross_entropy", x, y)
    offsets = dict(zip(ParamLayout.of(model).names, zip(ParamLayout.of(model).offsets[:-1],
                                                         ParamLayout.of(model).offsets[1:])))
    selected = select_parameters(model, "0.bias, 2.*")
    assert selected == ["0.bias", "2.weight", "2.bias"]
    op = HessianOperator(model, "cross_entropy", (x, y), batch_size=10, method="double_backward")
    assert op.layout.names == tuple(selected) and op.layout.excluded == ("0.weight",)
    index = torch.cat([torch.arange(*offsets[name]) for name in selected])
    block = operator_dense(op)
    torch.testing.assert_close(block, full[index][:, index], rtol=1e-10, atol=1e-13)
    assert select_parameters(model, "") == selected  # empty: nothing changes


def test_a_pattern_matching_nothing_names_the_parameters(problem):
    model, _, _ = problem
    with pytest.raises(InputError, match=r"'layer3\.\*' matches no parameter.*0\.weight, 0\.bias, 2\.weight"):
        select_parameters(model, "0.*,layer3.*")
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen on error


def test_landscape_config_needs_the_eigen_task():
    with pytest.raises(ConfigError, match="add eigen to tasks"):
        load_config(overrides={"tasks": ["landscape"]})
    with pytest.raises(ConfigError, match="eigen.top_k >= 2"):
        load_config(overrides={"tasks": ["eigen", "landscape"], "eigen.top_k": 1})
    assert load_config(overrides={"tasks": ["eigen", "landscape"], "eigen.top_k": 1,
                                  "landscape.points_2d": 0}).landscape.points_2d == 0
    with pytest.raises(ConfigError, match="landscape.points_2d"):
        load_config(overrides={"landscape.points_2d": 1})


def _check_run(out, x, y, model):
    """The run's /gradient and /landscape against a dense eigendecomposition and direct evaluation."""
    with h5py.File(out / "results.h5") as f:
        names = [n.decode() for n in f["params/names"][:]]
        vectors, values = f["eigen/vectors"][:], f["eigen/values"][:]
        alphas, loss_top = f["landscape/alphas"][:], f["landscape/loss_top"][:]
        loss_2d, betas = f["landscape/loss_2d"][:], f["landscape/betas"][:]
        fraction, overlaps = f["gradient/fraction"][()], f["gradient/overlaps"][:]
        assert f["landscape/loss_random"].shape == alphas.shape and f.attrs["world_size"] in (1, 2)
    assert names == ["0.weight", "2.weight", "2.bias"]
    select_parameters(model, "0.weight,2.*")
    theta = flat_params(model)
    v1, v2 = torch.from_numpy(vectors[0]), torch.from_numpy(vectors[1])
    direct = [mean_loss_at(model, theta + a * v1, x, y, names) for a in alphas]
    np.testing.assert_allclose(loss_top, direct, rtol=1e-12)
    assert loss_2d[0, -1] == pytest.approx(mean_loss_at(model, theta + betas[0] * v1 + betas[-1] * v2, x, y, names),
                                           rel=1e-12)
    exact, exact_overlaps = exact_fraction(dense_hessian(model, "cross_entropy", x, y),
                                           direct_gradient(model, x, y), len(values))
    assert fraction == pytest.approx(exact, rel=1e-7, abs=1e-12)
    np.testing.assert_allclose(overlaps, exact_overlaps, rtol=1e-6, atol=1e-12)
    assert (out / "landscape_1d.png").stat().st_size > 0 and (out / "landscape_2d.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gradient"]["fraction"] == pytest.approx(fraction) and summary["landscape"]["points"] == 7


ARGS = ["-m", "hpcspec", "run", "--model", "analysesmod:make_model", "--data", "analysesmod:make_data", "--top-k", "2",
        "--landscape", "--params", "0.weight,2.*", "--tol", "1e-12", "--batch-size", "7",
        "--set", "landscape.points=7", "--set", "landscape.points_2d=3", "--set", "landscape.radius=0.3"]


def test_run_writes_gradient_and_landscape(tmp_path, monkeypatch, capsys):
    (tmp_path / "analysesmod.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(ARGS[2:] + ["--output", "out"]) == 0
    printed = capsys.readouterr().out
    assert "gradient: ‖g‖ =" in printed and "landscape (α ∈ [-0.3, 0.3], 7 points)" in printed
    import analysesmod

    _check_run(tmp_path / "out", *analysesmod.make_data(), analysesmod.make_model())
    # the groups read back whole, and the plots redraw from results.h5 alone (the offline report)
    with h5py.File(tmp_path / "out" / "results.h5") as f:
        gradient, land = read_gradient(f["gradient"]), read_landscape(f["landscape"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert gradient.overlaps.tolist() == summary["gradient"]["overlaps"] and land.loss_2d.shape == (3, 3)
    redrawn = write_landscape_plots(tmp_path / "out" / "results.h5", tmp_path)
    assert [path.name for path in redrawn] == ["landscape_1d.png", "landscape_2d.png"]


@pytest.mark.mpi
def test_run_writes_gradient_and_landscape_on_two_ranks(tmp_path):
    (tmp_path / "analysesmod.py").write_text(USER_MODULE)
    done = mpirun(2, ARGS + ["--output", str(tmp_path / "out")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    namespace: dict = {}
    exec(USER_MODULE, namespace)
    _check_run(tmp_path / "out", *namespace["make_data"](), namespace["make_model"]())
