"""Stochastic Lanczos quadrature against closed-form spectra and the dense digits-MLP Hessian;
the smoothing, distances and the density plot."""

import sys

import numpy as np
import pytest
import scipy.stats
import torch

from hpcspec import MatrixOperator, SingleProcess
from hpcspec.solvers.density import (DensityResult, l1_distance, slq, smoothed_density, spectral_grid,
                                     wasserstein1)
from hpcspec.solvers.probes import probe


def rotated(eigenvalues: np.ndarray, seed: int = 0) -> MatrixOperator:
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return MatrixOperator(q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ q.T)


def unit_probe(n: int, seed: int, j: int, distribution: str = "rademacher") -> np.ndarray:
    z = probe(n, seed, "density", j, distribution).numpy()
    return z / np.linalg.norm(z)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_gauss_quadrature_is_exact_below_degree_2m_and_not_at_2m(distribution):
    spectrum = np.concatenate([np.linspace(-1.0, 1.0, 150), [1.3, 1.6, -1.2]])
    op = MatrixOperator(torch.diag(torch.from_numpy(spectrum)))
    m, probes = 8, 3
    result = slq(op, probes=probes, steps=m, seed=5, distribution=distribution)
    assert np.array_equal(result.steps, [m] * probes) and result.num_matvecs == m * probes
    for j in range(probes):
        q2 = unit_probe(len(spectrum), 5, j, distribution) ** 2
        theta, w = result.nodes[j], result.weights[j]
        for degree in range(2 * m):  # Σ w θ^k = qᵀ H^k q for k < 2m
            assert np.sum(w * theta ** degree) == pytest.approx(np.sum(q2 * spectrum ** degree), rel=1e-11, abs=1e-13)
        # the Gauss rule's error at degree 2m is ∫ π_m² dμ > 0: the bound is tight
        assert abs(np.sum(w * theta ** (2 * m)) - np.sum(q2 * spectrum ** (2 * m))) > 1e-8
        assert np.all(np.diff(theta) > 0) and spectrum.min() <= theta[0] and theta[-1] <= spectrum.max()
        assert np.sum(w) == pytest.approx(1.0, abs=1e-14) and np.all(w > 0)


def test_few_distinct_eigenvalues_are_recovered_exactly_with_breakdown():
    distinct = np.array([-1.0, 0.5, 2.0, 3.0])
    op = rotated(np.repeat(distinct, [10, 25, 5, 20]), seed=3)
    result = slq(op, probes=3, steps=20, seed=1)
    assert np.array_equal(result.steps, [4, 4, 4]) and result.num_matvecs == 12
    assert np.allclose(result.nodes[:, :4], distinct, atol=1e-12)
    assert np.all(result.weights[:, 4:] == 0) and np.all(result.alpha[:, 4:] == 0) and np.all(result.beta[:, 3:] == 0)
    assert np.all(result.nodes[:, 4:] == result.nodes[:, 3:4])  # padding: the largest node, rows stay ascending
    assert np.allclose(result.weights.sum(axis=1), 1.0, atol=1e-14)
    atoms, weights = result.measure()
    assert len(atoms) == 12 and weights.sum() == pytest.approx(1.0, abs=1e-14)
    assert np.allclose(np.bincount(np.searchsorted(distinct, atoms.round(9)), weights), result.weights[:, :4].mean(0))


def test_probes_stop_at_their_own_breakdown_while_others_continue():
    # Hadamard eigenvectors: a Rademacher probe is orthogonal to several of them, and which ones depends on the
    # probe, so each probe's Krylov space has its own dimension (the number of eigenvectors it sees).
    n = 16
    hadamard = np.array([[1.0]])
    while len(hadamard) < n:
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    eigenvalues = np.arange(1.0, n + 1)
    op = MatrixOperator(torch.from_numpy(hadamard @ np.diag(eigenvalues) @ hadamard.T / n))
    probes = 8
    result = slq(op, probes=probes, steps=n, seed=2)
    seen = []
    for j in range(probes):
        z = probe(n, 2, "density", j).numpy()
        projections = (hadamard.T @ z) ** 2 / n**2  # (qᵀu_k)² with q = z/√n, u_k = h_k/√n
        visible = projections > 1e-12
        seen.append(visible.sum())
        s = result.steps[j]
        assert s == visible.sum()
        assert np.allclose(result.nodes[j, :s], eigenvalues[visible], atol=1e-10)
        assert np.allclose(result.weights[j, :s], projections[visible], atol=1e-12)
    assert len(set(seen)) > 1  # the case really has probes stopping at different steps
    assert result.num_matvecs == result.steps.sum()


def test_breakdown_decisions_come_from_rank_0():
    class Recorder(SingleProcess):
        def __init__(self, override=None):
            self.sent, self.override = [], override

        def bcast_object(self, obj, root=0):
            self.sent.append(obj)
            return obj if self.override is None else self.override(obj)

    matrix = rotated(np.linspace(1.0, 2.0, 40)).matrix
    honest = Recorder()
    result = slq(MatrixOperator(matrix, honest), probes=2, steps=6)
    assert honest.sent == [[False, False]] * 5  # one broadcast per step but the last, one flag per active probe
    assert np.array_equal(result.steps, [6, 6])
    # a rank whose own numbers say "go on" still stops where rank 0 says so
    told = Recorder(override=lambda flags: [True] * len(flags) if len(told.sent) == 3 else flags)
    stopped = slq(MatrixOperator(matrix, told), probes=2, steps=6)
    assert np.array_equal(stopped.steps, [3, 3]) and stopped.num_matvecs == 6
    assert np.allclose(stopped.alpha[:, :3], result.alpha[:, :3], rtol=1e-14)


def test_probe_j_depends_only_on_seed_and_j():
    op = rotated(np.linspace(-2.0, 5.0, 120), seed=1)
    four, two = slq(op, probes=4, steps=15, seed=9), slq(op, probes=2, steps=15, seed=9)
    for name in ("nodes", "weights", "alpha", "beta"):
        assert np.allclose(getattr(two, name), getattr(four, name)[:2], rtol=1e-13, atol=1e-14), name
    other = slq(op, probes=2, steps=15, seed=10)
    assert not np.allclose(other.nodes, two.nodes)


def test_steps_are_capped_at_the_size_and_bad_arguments_are_refused():
    op = rotated(np.array([1.0, 2.0, 4.0, 8.0, 16.0]))
    result = slq(op, probes=2, steps=50)
    assert isinstance(result, DensityResult) and result.nodes.shape == (2, 5) and result.beta.shape == (2, 4)
    assert np.allclose(result.nodes, [1, 2, 4, 8, 16], rtol=1e-12)
    for kwargs, message in [({"probes": 0}, "probes"), ({"steps": 0}, "steps"), ({"distribution": "cauchy"}, "cauchy")]:
        with pytest.raises(ValueError, match=message):
            slq(op, **kwargs)


def test_grid_and_smoothing_integrate_to_one():
    rng = np.random.default_rng(0)
    atoms, weights = rng.normal(size=300) ** 3, rng.random(300)
    weights /= weights.sum()
    grid, sigma = spectral_grid(atoms)
    span = atoms.max() - atoms.min()
    assert sigma == pytest.approx(0.01 * span, rel=1e-14) and len(grid) == 1000
    assert grid[0] == pytest.approx(atoms.min() - 5 * sigma) and grid[-1] == pytest.approx(atoms.max() + 5 * sigma)
    density = smoothed_density(atoms, weights, grid, sigma)
    assert np.all(density >= 0) and np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    # one atom: the normal density itself, peak 1/(σ√(2π))
    grid, sigma = spectral_grid([2.0, 4.0], 0.1, 2001)
    single = smoothed_density([3.0], [1.0], grid, sigma)
    assert sigma == pytest.approx(0.2) and single.max() == pytest.approx(1 / (0.2 * np.sqrt(2 * np.pi)), rel=1e-12)
    assert grid[np.argmax(single)] == pytest.approx(3.0)
    grid, sigma = spectral_grid([7.0, 7.0])  # one distinct value: σ from its magnitude
    assert sigma == pytest.approx(0.07)
    with pytest.raises(ValueError):
        spectral_grid([])


def test_wasserstein1_hand_computed():
    assert wasserstein1([0.0], [1.0], [3.0], [1.0]) == pytest.approx(3.0)
    assert wasserstein1([0.0, 1.0], [0.5, 0.5], [0.0, 1.0], [0.25, 0.75]) == pytest.approx(0.25)
    assert wasserstein1([0.0, 2.0], [1.0, 1.0], [1.0], [5.0]) == pytest.approx(1.0)  # masses normalised
    assert wasserstein1([2.0, 0.0, 1.0], [1, 1, 1], [0.0, 1.0, 2.0], [1, 1, 1]) == 0.0  # order does not matter
    # shifting a measure by c moves it by exactly c
    atoms = np.array([0.3, -1.0, 4.0, 2.5])
    assert wasserstein1(atoms, np.ones(4), atoms + 0.7, np.ones(4)) == pytest.approx(0.7)
    rng = np.random.default_rng(1)
    xa, xb, wa, wb = rng.normal(size=40), rng.normal(1, 2, size=70), rng.random(40), rng.random(70)
    assert wasserstein1(xa, wa, xb, wb) == pytest.approx(scipy.stats.wasserstein_distance(xa, xb, wa, wb), rel=1e-12)
    assert wasserstein1(xa, wa, xb, wb) == pytest.approx(wasserstein1(xb, wb, xa, wa), rel=1e-14)
    with pytest.raises(ValueError):
        wasserstein1([0.0], [-1.0], [1.0], [1.0])


def test_l1_distance_sanity():
    grid = np.linspace(-20, 20, 4001)
    f = smoothed_density([0.0], [1.0], grid, 1.0)
    assert l1_distance(grid, f, f) == 0.0
    assert l1_distance(grid, f, np.zeros_like(f)) == pytest.approx(1.0, abs=1e-9)
    # two unit normals a distance d apart: ∫|f − g| = 2(2Φ(d/2) − 1); 2 − 4e-9 for d = 12
    for d in (1.0, 12.0):
        g = smoothed_density([d], [1.0], grid, 1.0)
        assert l1_distance(grid, f, g) == pytest.approx(2 * (2 * scipy.stats.norm.cdf(d / 2) - 1), rel=2e-5, abs=1e-11)
    with pytest.raises(ValueError):
        l1_distance(grid, f, f[:-1])


# Measured with 4 probes x 80 steps (Rademacher), σ = 1% of the exact range, 1000 points: the ten 4-probe
# estimates below (probes 4g..4g+3 of seed 0) have L1 median 0.0113 (max 0.0156; the target is
# 0.015) and W1 median 1.09e-4 (0.09% of the range). At 80 steps the quadrature has converged (60 steps give
# the same smoothed density to 3e-12 in L1): what remains is the sampling error of 4 probes, ∝ 1/√probes
# (all 40 probes pooled: L1 0.0029).
def test_digits_density_meets_the_accuracy_target(digits_problem):
    _, matrix, exact = digits_problem
    grid, sigma = spectral_grid(exact)  # σ = 1% of the exact spectral range
    uniform = np.full(len(exact), 1.0 / len(exact))
    reference = smoothed_density(exact, uniform, grid, sigma)
    result = slq(MatrixOperator(matrix), probes=40, steps=80, seed=0)
    assert result.num_matvecs == 40 * 80
    l1, w1 = [], []
    for g in range(10):  # ten independent 4-probe estimates: probe j depends only on (seed, j)
        rows = slice(4 * g, 4 * g + 4)
        part = DensityResult(result.nodes[rows], result.weights[rows], result.alpha[rows], result.beta[rows],
                             result.steps[rows], 4 * 80)
        atoms, weights = part.measure()
        assert exact[0] - 1e-12 <= atoms[0] and atoms[-1] <= exact[-1] + 1e-12
        l1.append(l1_distance(grid, smoothed_density(atoms, weights, grid, sigma), reference))
        w1.append(wasserstein1(atoms, weights, exact, uniform))
    assert np.median(l1) <= 0.015 and max(l1) <= 0.025
    assert np.median(w1) <= 2.5e-3 * (exact[-1] - exact[0])
    atoms, weights = result.measure()
    assert l1_distance(grid, smoothed_density(atoms, weights, grid, sigma), reference) <= 0.006


def test_hessian_operator_and_dense_matrix_give_one_quadrature(digits_problem):
    op, matrix, exact = digits_problem
    operator = slq(op, probes=2, steps=25, seed=3)
    dense = slq(MatrixOperator(matrix), probes=2, steps=25, seed=3)
    assert np.max(np.abs(operator.nodes - dense.nodes)) <= 1e-8 * (exact[-1] - exact[0])
    assert np.max(np.abs(operator.weights - dense.weights)) <= 1e-8


def test_plot_density_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from hpcspec.results.plots import plot_density

    grid, sigma = spectral_grid([-1.0, 10.0])
    values = smoothed_density([0.0, 0.1, 9.5], [0.6, 0.39, 0.01], grid, sigma)
    path = tmp_path / "density.png"
    plot_density(path, grid, values, title="test", eigenvalues=[9.5], sigma=sigma)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["density.png"]  # no temporary left behind


def test_plot_density_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    from hpcspec.results.plots import plot_density

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(ImportError, match=r"pip install matplotlib \(or, from hpcspec's source folder, "
                                          r"pip install '\.\[plots\]'\)"):
        plot_density(tmp_path / "x.png", np.linspace(0, 1, 5), np.ones(5))
    assert not list(tmp_path.iterdir())
