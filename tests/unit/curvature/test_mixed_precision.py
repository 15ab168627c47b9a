"""``hessian.dtype = "bfloat16"`` and ``"tf32"``: the model computes in the low precision, products
are accumulated and reduced in float64, and the answers stay within a few unit roundoffs u of the
float64 answer (bfloat16: u = 2⁻⁸). float16 is refused with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from helpers import mpirun
from hpcspec.choices import DEFAULT_TOL, UNIT_ROUNDOFF
from hpcspec.cli import main
from hpcspec.commands.demo import digits_mlp_operator
from hpcspec.curvature.operator import HessianOperator
from hpcspec.curvature.preflight import default_symmetry_tol
from hpcspec.errors import EXIT_BAD_INPUT
from hpcspec.parallel.device import set_matmul_precision
from hpcspec.solvers import block_lanczos, trace

U = UNIT_ROUNDOFF["bfloat16"]
#: Error bounds in units of bfloat16's u, each ~1.5–3× what the default job measured (docs/accuracy.md,
#: "Mixed precision": top-5 2.3 % = 5.9 u, trace 4.3 % = 11 u; the trace also carries its own
#: standard error, ~0.6 %).
EIGEN_BOUND, TRACE_BOUND = 8 * U, 16 * U

SMALL = ["--model", "mlp", "--set", "model.hidden=[6]", "--data", "synthetic", "--set", "data.samples=120",
         "--set", "data.features=5", "--set", "data.classes=3", "--progress-every", "0"]


def test_tolerances_are_four_unit_roundoffs():
    assert DEFAULT_TOL["bfloat16"] == 2.0**-6 and DEFAULT_TOL["tf32"] == 2.0**-9
    assert default_symmetry_tol(torch.bfloat16) == default_symmetry_tol("bfloat16") == 2 * U
    assert default_symmetry_tol("tf32") == 2 * UNIT_ROUNDOFF["tf32"]
    assert default_symmetry_tol("float32") == default_symmetry_tol(torch.float32) == 1e-4


def test_bfloat16_default_model_top5_and_trace_within_the_bound(digits_problem):
    """The default job's trained MLP rounded to bfloat16, against its float64 dense Hessian (so the
    bound covers both the arithmetic and the rounded weights)."""
    torch.set_num_threads(1)
    _, matrix, exact = digits_problem
    op = digits_mlp_operator(dtype=torch.bfloat16)
    assert op.compute_dtype == torch.bfloat16 and op.method == "double_backward"
    top = block_lanczos(op, 5)  # the default tolerance for bfloat16: 4 u
    expected = exact[::-1][:5]
    assert top.converged
    errors = np.abs(top.eigenvalues - expected) / expected
    assert errors.max() <= EIGEN_BOUND, errors
    assert errors.max() > 1e-5  # bfloat16 really computed: float32 would be ~1e-6
    estimate = trace(op, matvecs=100)
    exact_trace = float(torch.trace(matrix))
    assert abs(estimate.estimate - exact_trace) / exact_trace <= TRACE_BOUND


def test_validate_bfloat16_reports_errors_against_a_float64_reference(tmp_path, capsys):
    """validate builds the dense Hessian of a float64 copy of the bfloat16 model: the errors are
    bfloat16-sized (not the ~u² of comparing a bfloat16 operator with its own dense matrix)."""
    code = main(["validate", *SMALL, "--dtype", "bfloat16", "--train-steps", "20", "--top-k", "3",
                 "--set", 'tasks=["eigen","trace","density"]',
                 "--output", str(tmp_path / "out")])
    assert code == 0
    assert "float64 copy of the bfloat16 model" in capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    errors = summary["validation"]
    assert summary["dtype"] == "bfloat16"
    assert errors["eigen"]["max_relative_error"] <= EIGEN_BOUND
    assert errors["trace"]["relative_error"] <= TRACE_BOUND
    assert errors["density"]["wasserstein1"] <= 4 * U * (errors["exact_range"][1] - errors["exact_range"][0])


def test_tf32_on_a_cpu_is_float32_bitwise(tmp_path, capsys):
    """On a CPU TF32 does not exist: the tf32 operator's products are float32's, and the log says so."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).float()
    data = (torch.randn(40, 5), torch.randint(0, 3, (40,)))
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    try:
        line = set_matmul_precision(True, torch.device("cpu"))
        with_tf32 = HessianOperator(model, "cross_entropy", data).apply(v)
        assert "plain float32" in line
    finally:
        set_matmul_precision(False, torch.device("cpu"))
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.equal(with_tf32, HessianOperator(model, "cross_entropy", data).apply(v))
    try:
        assert main(["run", *SMALL, "--dtype", "tf32", "--top-k", "2", "--set", 'tasks=["eigen"]',
                     "--output", str(tmp_path / "out")]) == 0
        assert torch.backends.cuda.matmul.allow_tf32  # the command switched it on for its process
    finally:
        set_matmul_precision(False, torch.device("cpu"))
    assert "tf32 on cpu: TF32 is a CUDA tensor-core format, so this computes in plain float32" in capsys.readouterr().err


@pytest.mark.parametrize("dtype, message", [
    ("float16", "hessian.dtype = 'float16' is not supported: float16's range"),
    ("bf16", "hessian.dtype = 'bf16' is not one of float64, float32, bfloat16, tf32; did you mean 'bfloat16'?"),
])
def test_float16_and_unknown_dtypes_are_refused_in_one_line(tmp_path, capsys, dtype, message):
    assert main(["run", *SMALL, "--dtype", dtype, "--output", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_train_refuses_bfloat16_weights(tmp_path, capsys):
    assert main(["train", *SMALL[:-2], "--dtype", "bfloat16", "--set", "train.steps=2",
                 "--output", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "bfloat16 weights lose every update below 2^-8" in err and "run --dtype bfloat16" in err


@pytest.mark.mpi
def test_bfloat16_products_are_the_same_bits_on_1_and_2_ranks(tmp_path: Path) -> None:
    """With batches that do not depend on the rank count (the ordered reduction cuts shards at whole
    batches) every bfloat16 batch product is the same on 1 and 2 ranks and the float64 sum is exact:
    the eigenvalues and the trace samples agree bitwise."""
    found = {}
    for ranks in (1, 2):
        output = tmp_path / f"out{ranks}"
        done = mpirun(ranks, ["-m", "hpcspec", "run", *SMALL, "--dtype", "bfloat16", "--batch-size", "32",
                              "--set", "hessian.reduction=\"ordered\"", "--set", "hessian.shard_vectors=false",
                              "--threads", "1", "--top-k", "3", "--set", 'tasks=["eigen","trace"]', "--set",
                              "trace.matvecs=20", "--output", str(output)], tmp_path)
        assert done.returncode == 0, done.stderr
        with h5py.File(output / "results.h5", "r") as f:
            found[ranks] = (f["eigen/values"][()], f["trace/samples"][()])
    assert np.array_equal(found[1][0], found[2][0]) and np.array_equal(found[1][1], found[2][1])
