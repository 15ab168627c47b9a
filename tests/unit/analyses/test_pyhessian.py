"""``hpcspec.hessian``: PyHessian's documented call sequence against a dense float64 Hessian.

The reference is ``torch.func.hessian`` of the criterion over all samples at once (independent of
hpcspec's batching and sums). The model has dropout, is in training mode and has one frozen
parameter, so the state it must get back is not the trivial one.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import hpcspec
from hpcspec import InputError, hessian
from hpcspec.analyses.pyhessian import RankBatches
from hpcspec.solvers.density import STREAM as DENSITY_STREAM
from hpcspec.solvers.probes import probe

N, FEATURES, CLASSES = 53, 5, 3


def problem(seed: int = 0) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, FEATURES, generator=gen, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (N,), generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, CLASSES)).double().train()
    model[0].bias.requires_grad_(False)  # frozen: outside the Hessian, and must stay frozen
    return model, nn.CrossEntropyLoss(label_smoothing=0.1), x, y


def exact_hessian(model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """∇² over the trainable parameters of ``criterion(model(x), y)`` on all samples, model in eval mode."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for p in model.parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    training = model.training
    model.eval()

    def mean_loss(flat: torch.Tensor) -> torch.Tensor:
        parts = [part.view(shape) for part, shape in zip(torch.split(flat, sizes), shapes)]
        return criterion(functional_call(model, dict(zip(names, parts)), (x,)), y)

    dense = torch.func.hessian(mean_loss)(torch.cat([p.reshape(-1) for p in params])).numpy()
    model.train(training)
    return (dense + dense.T) / 2


@pytest.fixture(scope="module")
def sequence():
    """PyHessian's call sequence on a DataLoader of uneven batches, and the dense answer."""
    model, criterion, x, y = problem()
    flags = [p.requires_grad for p in model.parameters()]
    loader = DataLoader(TensorDataset(x, y), batch_size=7)  # 7 batches of 7, one of 4
    h = hpcspec.hessian(model, criterion, dataloader=loader)
    eigenvalues, eigenvectors = h.eigenvalues(top_n=5)
    values = h.trace()
    density = h.density(n_v=3)
    state = {"training": [m.training for m in model.modules()], "flags": [p.requires_grad for p in model.parameters()],
             "expected_flags": flags}
    return {"model": model, "h": h, "eigenvalues": eigenvalues, "eigenvectors": eigenvectors, "trace": values,
            "density": density, "state": state, "dense": exact_hessian(model, criterion, x, y), "x": x, "y": y,
            "criterion": criterion}


def test_top_eigenvalues_are_the_dense_ones_of_largest_magnitude(sequence):
    lam = np.linalg.eigvalsh(sequence["dense"])
    expected = lam[np.argsort(-np.abs(lam), kind="stable")[:5]]
    found = np.array(sequence["eigenvalues"])
    assert all(isinstance(v, float) for v in sequence["eigenvalues"]) and len(found) == 5
    assert np.max(np.abs(found - expected)) <= 1e-8 * np.max(np.abs(lam))
    assert sequence["h"].eigen_result.converged


def test_eigenvectors_are_per_parameter_and_align_with_the_dense_ones(sequence):
    lam, vectors = np.linalg.eigh(sequence["dense"])
    order = np.argsort(-np.abs(lam), kind="stable")[:5]
    assert np.min(np.diff(np.sort(np.abs(lam[order])))) > 1e-3  # distinct: each vector is defined up to sign
    trainable = [p for p in sequence["model"].parameters() if p.requires_grad]
    for vector, column in zip(sequence["eigenvectors"], order):
        assert [t.shape for t in vector] == [p.shape for p in trainable]
        assert all(t.dtype == p.dtype and t.device == p.device for t, p in zip(vector, trainable))
        flat = torch.cat([t.reshape(-1) for t in vector]).numpy()
        assert abs(np.linalg.norm(flat) - 1) <= 1e-12
        assert abs(abs(flat @ vectors[:, column]) - 1) <= 1e-8


def test_trace_terms_average_to_the_exact_trace_within_their_exact_spread(sequence):
    dense, values = sequence["dense"], sequence["trace"]
    assert all(isinstance(v, float) for v in values) and 2 <= len(values) <= 100
    # Rademacher terms zᵀHz: mean tr H, variance 2(‖H‖_F² − Σ H_jj²) (Hutchinson 1989), exactly
    variance = 2 * (np.sum(dense ** 2) - np.sum(np.diag(dense) ** 2))
    assert abs(np.mean(values) - np.trace(dense)) <= 4 * np.sqrt(variance / len(values))
    # PyHessian's stop rule held at the last term and at no earlier one
    means = np.cumsum(values) / np.arange(1, len(values) + 1)
    changes = np.abs(np.diff(means)) < 1e-3 * np.abs(means[:-1])
    assert (changes[-1] or len(values) == 100) and not changes[:-1].any()
    # the terms are hpcspec's Hutchinson samples, whose mean and standard error trace_result holds
    reference = hpcspec.trace(sequence["h"].operator, method="hutchinson", matvecs=len(values))
    assert np.allclose(reference.samples, values, rtol=1e-12, atol=0)
    assert sequence["h"].trace_result.estimate == pytest.approx(np.mean(values), rel=1e-14)


def test_density_is_a_gauss_quadrature_inside_the_spectrum(sequence):
    dense = sequence["dense"]
    nodes, weights = sequence["density"]
    lam = np.linalg.eigvalsh(dense)
    scale = np.max(np.abs(lam))
    assert len(nodes) == len(weights) == 3
    for j, (theta, w) in enumerate(zip(nodes, weights)):
        theta, w = np.array(theta), np.array(w)
        assert len(theta) == len(w) and all(isinstance(v, float) for v in nodes[j] + weights[j])
        assert abs(w.sum() - 1) <= 1e-12 and np.all(w >= 0)
        assert lam[0] - 1e-10 * scale <= theta.min() and theta.max() <= lam[-1] + 1e-10 * scale
        # moments of degree < 2·steps are exact: zᵀHᵖz/‖z‖² for the probe's start vector z
        z = probe(len(dense), 0, DENSITY_STREAM, j).numpy()
        for power in (1, 2, 3):
            exact = z @ np.linalg.matrix_power(dense, power) @ z / (z @ z)
            assert abs(np.sum(w * theta ** power) - exact) <= 1e-10 * scale ** power


def test_the_model_is_left_as_it_was(sequence):
    state = sequence["state"]
    assert all(state["training"])  # train mode everywhere, dropout included
    assert state["flags"] == state["expected_flags"]


def test_data_pair_gives_the_loader_numbers(sequence):
    model, criterion, x, y = problem()
    h = hessian(model, criterion, data=(x, y), cuda=True, batch_size=10)
    eigenvalues, _ = h.eigenvalues(top_n=5)
    scale = abs(sequence["eigenvalues"][0])
    assert np.max(np.abs(np.array(eigenvalues) - sequence["eigenvalues"])) <= 1e-10 * scale
    assert np.allclose(h.trace(), sequence["trace"], rtol=1e-10, atol=1e-10 * scale)
    nodes, _ = h.density(n_v=3)
    for ours, theirs in zip(nodes, sequence["density"][0]):
        assert np.max(np.abs(np.array(ours) - theirs)) <= 1e-9 * scale


def test_a_budget_that_runs_out_is_reported(caplog):
    model, criterion, x, y = problem()
    h = hessian(model, criterion, data=(x, y))
    with caplog.at_level(logging.WARNING, logger="hpcspec.analyses.pyhessian"):
        eigenvalues, eigenvectors = h.eigenvalues(maxIter=1, top_n=3)
    assert len(eigenvalues) == len(eigenvectors) == 3 and not h.eigen_result.converged
    assert "raise maxIter" in caplog.text


def test_rank_batches_split_a_loader_exactly_once():
    batches = [torch.full((size,), float(i)) for i, size in enumerate([3, 1, 4, 1, 5, 9, 2])]
    for ranks in (1, 2, 3, 8):
        shares = [list(RankBatches(batches, rank, ranks)) for rank in range(ranks)]
        seen = sorted(int(b[0]) for share in shares for b in share)
        assert seen == list(range(len(batches)))
        assert all(len(share) in (len(batches) // ranks, -(-len(batches) // ranks)) for share in shares)


class TwoRanks:
    """Rank 0 of 2, for the checks made before any collective."""

    rank, size = 0, 2


def bad_calls():
    model, criterion, x, y = problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    return {
        "both": (lambda: hessian(model, criterion, data=(x, y), dataloader=loader), "exactly one of data"),
        "neither": (lambda: hessian(model, criterion), "exactly one of data"),
        "data not a pair": (lambda: hessian(model, criterion, data=x), "pair of tensors"),
        "data of two lengths": (lambda: hessian(model, criterion, data=(x, y[:-1])), "53 samples but targets 52"),
        "a one-pass iterator": (lambda: hessian(model, criterion, dataloader=iter(loader)), "one-pass iterator"),
        "a tensor loader": (lambda: hessian(model, criterion, dataloader=x), "DataLoader or another re-iterable"),
        "a pair as loader": (lambda: hessian(model, criterion, dataloader=(x, y)), "as data="),
        "cuda not a flag": (lambda: hessian(model, criterion, data=(x, y), cuda="yes"), "cuda must be"),
        "not a module": (lambda: hessian(lambda t: t, criterion, data=(x, y)), "torch.nn.Module"),
        "criterion not callable": (lambda: hessian(model, 3, data=(x, y)), "criterion must be"),
        "an unknown option": (lambda: hessian(model, criterion, data=(x, y), batchsize=4), "unknown option(s) batchsize"),
        "sharded not a flag": (lambda: hessian(model, criterion, data=(x, y), sharded=1), "sharded must be"),
        "a shuffling loader on 2 ranks": (
            lambda: hessian(model, criterion, comm=TwoRanks(), dataloader=DataLoader(TensorDataset(x, y), shuffle=True)),
            "shuffles"),
        "a DistributedSampler, not sharded": (
            lambda: hessian(model, criterion, comm=TwoRanks(), dataloader=DataLoader(
                TensorDataset(x, y), sampler=DistributedSampler(TensorDataset(x, y), 2, 0, shuffle=False))),
            "sharded=True"),
        "a padding DistributedSampler": (
            lambda: hessian(model, criterion, comm=TwoRanks(), sharded=True, dataloader=DataLoader(
                TensorDataset(x, y), sampler=DistributedSampler(TensorDataset(x, y), 2, 0, shuffle=False))),
            "repeats 1"),
    }


@pytest.mark.parametrize("case", list(bad_calls()))
def test_bad_calls_raise_a_one_line_input_error(case):
    call, message = bad_calls()[case]
    with pytest.raises(InputError) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("call, message", [
    (lambda h: h.eigenvalues(top_n=0), "top_n must be an integer ≥ 1"),
    (lambda h: h.eigenvalues(top_n=10_000), "at most the parameter count"),
    (lambda h: h.eigenvalues(tol=0), "tol must be a number > 0"),
    (lambda h: h.eigenvalues(which="top"), "which must be one of"),
    (lambda h: h.eigenvalues(block_size=0), "block_size must be"),
    (lambda h: h.trace(maxIter=0), "maxIter must be"),
    (lambda h: h.density(n_v=0), "n_v must be"),
    (lambda h: h.density(iter=2.5), "iter must be"),
])
def test_bad_method_arguments_raise_input_error(call, message):
    model, criterion, x, y = problem()
    with pytest.raises(InputError, match=message):
        call(hessian(model, criterion, data=(x, y)))


def _train(probe_every: int) -> list[float]:
    """Losses of a short training run (shuffling loader, dropout, BatchNorm, momentum) that asks for
    the sharpness every ``probe_every`` steps (0: never)."""
    torch.manual_seed(0)
    x, y = torch.randn(96, 6), torch.randint(0, 3, (96,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)  # shuffles with the global generator
    probe_loader = DataLoader(TensorDataset(x[:40], y[:40]), batch_size=16)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion, losses = nn.CrossEntropyLoss(label_smoothing=0.1), []
    batches = ((xb, yb) for _epoch in range(2) for xb, yb in loader)
    for step, (xb, yb) in enumerate(batches, start=1):
        model.train()
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if probe_every and step % probe_every == 0:
            h = hessian(model, criterion, dataloader=probe_loader)
            h.eigenvalues(top_n=2)
            h.trace(maxIter=3)
    return losses


def test_a_training_script_that_asks_every_few_steps_trains_on_bitwise_as_without():
    """Modes, requires_grad, BatchNorm statistics and torch's global random stream (which every
    DataLoader pass draws a seed from) are all left as they were."""
    assert _train(probe_every=4) == _train(probe_every=0)


def test_a_designed_spectrum_with_repeated_and_clustered_eigenvalues_is_found_whole():
    """A linear least-squares model whose Hessian is Q diag(λ) Qᵀ by construction: a triple
    eigenvalue, a pair 1e-9 apart and a dense tail. PyHessian's power iteration with deflation
    is the case such spectra break; every copy must come back, with vectors spanning each space."""
    n, d = 120, 12
    gen = torch.Generator().manual_seed(3)
    spectrum = torch.tensor([4.0, 4.0, 4.0, 2.5, 2.5 - 1e-9, 1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=gen, dtype=torch.float64))
    x = (n / 2) ** 0.5 * u @ torch.diag(spectrum.sqrt()) @ q.T  # nn.MSELoss (mean): H = (2/n) XᵀX = Q diag(λ) Qᵀ
    y = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    loader = DataLoader(TensorDataset(x, y), batch_size=37)  # uneven batches: 37, 37, 37, 9
    values, vectors = hessian(model, nn.MSELoss(), dataloader=loader).eigenvalues(top_n=5)
    np.testing.assert_allclose(values, spectrum[:5].numpy(), rtol=0, atol=1e-8 * 4.0)
    found = torch.stack([torch.cat([t.reshape(-1) for t in v]) for v in vectors], dim=1)
    for block in (slice(0, 3), slice(3, 5)):  # each eigenspace spanned, whatever basis Lanczos picked in it
        space = q[:, block]
        assert torch.linalg.matrix_norm(space.T @ found[:, block], ord=2).item() == pytest.approx(1.0, abs=1e-7)
        assert torch.linalg.svdvals(space.T @ found[:, block]).min().item() == pytest.approx(1.0, abs=1e-7)
