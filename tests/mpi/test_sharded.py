"""Sharded vectors: each rank keeps a 1/R slice of every Lanczos/SLQ vector, with the same answers."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from helpers import REPO, mpirun

from hpcspec.parallel.vectors import LocalSlice, Replicated, all_bounds, make_space

SCRIPT = str(REPO / "tests" / "mpi" / "mpi_sharded.py")


def test_bounds_cover_the_vector_once():
    for size, ranks in [(10, 3), (2, 4), (301, 2), (0, 2)]:
        bounds = all_bounds(size, ranks)
        assert bounds[0][0] == 0 and bounds[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_local_slice_refuses_a_wrong_width():
    with pytest.raises(ValueError, match="cannot hold"):
        LocalSlice(torch.zeros(2, 5, dtype=torch.float64), 0, 4, 10)


def test_one_rank_is_replicated():
    from hpcspec.parallel.comm import SingleProcess

    space = make_space(SingleProcess(), 7, True)
    assert isinstance(space, Replicated) and space.local_size == 7
    whole = LocalSlice(torch.ones(3, 7, dtype=torch.float64), 0, 7, 7)
    assert torch.equal(space.take(whole), whole.values)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_sharded_solvers_match_the_known_spectrum(tmp_path, ranks):
    done = mpirun(ranks, [SCRIPT, str(tmp_path / "out.json")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((tmp_path / "out.json").read_text())
    assert len(records) == ranks
    for record in records:
        assert record["eigen_error"] <= 1e-10
        assert record["vector_difference"] <= 1e-8
        assert record["alpha_difference"] <= 1e-12 and record["beta_difference"] <= 1e-12
        width = record["hi"] - record["lo"]
        assert record["basis_rows"][1] == width  # the basis holds this rank's rows only
        assert record["slq_basis_shape"][2] == width
    assert sum(r["hi"] - r["lo"] for r in records) == 301


@pytest.mark.mpi
@pytest.mark.parametrize("saved, resumed", [(2, 3), (3, 2), (2, 1)])
def test_sharded_checkpoint_resumes_on_another_rank_count(tmp_path, saved, resumed):
    store = tmp_path / "ckpt"
    done = mpirun(saved, [SCRIPT, str(tmp_path / "a.json"), "save", str(store)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(store.glob("step-*/rank-*.h5"))
    assert len(files) == saved
    with h5py.File(files[0]) as f:  # each file holds one slice of the basis, not the whole basis
        assert f["vectors/basis"].shape[1] == f.attrs["hi"] - f.attrs["lo"] < 301
    done = mpirun(resumed, [SCRIPT, str(tmp_path / "b.json"), "load", str(store)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((tmp_path / "b.json").read_text())
    for record in records:
        assert record["slice"] == [record["lo"], record["hi"]]  # this rank's part, [0, 301) on one rank
        assert record["eigen_error"] <= 1e-10
        assert record["alpha_difference"] <= 1e-12


@pytest.mark.mpi
def test_job_sharded_equals_replicated(tmp_path):
    """The whole job on 3 ranks: sharded and replicated vectors give the same numbers to 1e-10."""
    job = ["-m", "hpcspec", "run", "--top-k", "3", "--trace", "--density", "--probes", "2", "--steps", "15",
           "--trace-matvecs", "12", "--set", "hessian.check=false", "--set", "density.plot=false"]
    found = {}
    for shard in ("true", "false"):
        out = tmp_path / shard
        done = mpirun(3, [*job, "--set", f"hessian.shard_vectors={shard}", "--output", str(out)], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        with h5py.File(out / "results.h5") as f:
            found[shard] = {name: f[name][...] for name in ("eigen/values", "eigen/vectors", "lanczos/alpha",
                                                           "lanczos/beta", "trace/samples")}
    for name, value in found["true"].items():
        reference = found["false"][name]
        assert value.shape == reference.shape, name
        tol = 1e-7 if name == "eigen/vectors" else 1e-10
        assert np.max(np.abs(value - reference)) <= tol * np.max(np.abs(reference)), name


def test_ordered_sum_is_exact_and_order_free():
    """The fixed-point sum of one rank's batches: any order of the terms gives the same bits, and
    the result is within 2^-50 of the float64 sum relative to the largest term."""
    from helpers import classification_data, mlp

    from hpcspec.curvature.operator import HessianOperator
    from hpcspec.curvature.ordered import exact_sum

    x, y = classification_data(n=40)
    op = HessianOperator(mlp(), "cross_entropy", (x, y), batch_size=7, method="double_backward",
                         reduction="ordered")
    gen = torch.Generator().manual_seed(3)
    parts = [torch.randn(2, op.size, generator=gen, dtype=torch.float64) * 10.0 ** e for e in (-3, 0, 2, 5, -8, 1)]
    forward = exact_sum(op.comm, parts, op.size, True, None)
    backward = exact_sum(op.comm, parts[::-1], op.size, True, None)
    assert torch.equal(forward, backward)
    reference = torch.stack(parts).sum(dim=0)
    largest = torch.stack(parts).abs().amax(dim=(0, 2))
    assert torch.all((forward - reference).abs().amax(dim=1) <= 2.0**-50 * largest)
    v = torch.randn(op.size, generator=gen, dtype=torch.float64)
    fast = HessianOperator(mlp(), "cross_entropy", (x, y), batch_size=7, method="double_backward").apply(v)
    assert torch.allclose(op.apply(v), fast, rtol=0, atol=1e-14 * fast.abs().max())


def test_unknown_reduction_is_refused():
    from helpers import classification_data, mlp

    from hpcspec.errors import InputError
    from hpcspec.curvature.operator import HessianOperator

    with pytest.raises(InputError, match="unknown reduction 'exact'"):
        HessianOperator(mlp(), "cross_entropy", classification_data(), reduction="exact")


@pytest.mark.mpi
def test_ordered_reduction_same_bits_on_1_2_3_ranks(tmp_path):
    """reduction = "ordered", replicated vectors, one thread: every number bitwise equal for any R."""
    job = ["-m", "hpcspec", "run", "--top-k", "3", "--trace", "--density", "--probes", "2", "--steps", "12",
           "--trace-matvecs", "12", "--batch-size", "128", "--set", "hessian.check=false", "--set", "density.plot=false",
           "--set", "hessian.reduction='ordered'", "--set", "hessian.shard_vectors=false", "--set", "threads=1",
           "--set", "hessian.hvp='double_backward'"]
    names = ("eigen/values", "eigen/vectors", "lanczos/alpha", "lanczos/beta", "trace/samples")
    found = {}
    for ranks in (1, 2, 3):
        out = tmp_path / f"r{ranks}"
        done = mpirun(ranks, [*job, "--output", str(out)], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        with h5py.File(out / "results.h5") as f:
            found[ranks] = {name: f[name][...] for name in names}
    for ranks in (2, 3):
        for name in names:
            assert np.array_equal(found[ranks][name], found[1][name]), (ranks, name)
