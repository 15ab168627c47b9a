"""Error and speed of each compute dtype against the float64 answer, side by side in one process.

For the default job's digits MLP (3,466 parameters, 100 float64 Adam steps, 1,797 samples) and a
ResNet-20 (width 1: 1,189 parameters, BatchNorm in eval mode, the first 64 digits as 1×8×8 images,
so that its dense Hessian takes a minute here), each dtype's operator is the float64 model rounded
to that dtype. The reference is the dense float64 Hessian *at the rounded weights* (a float64 copy
of the rounded model: what ``validate`` compares with), so the errors are those of the arithmetic;
the row ``weights`` gives how far rounding the weights alone moves the top eigenvalues.

Printed per model and dtype: the HVP time (mean over ``--repeats`` (P, 8) blocks per vector, kept
first-order graphs, one thread), the relative error of H·v, the largest relative error of the top-5
eigenvalues (block Lanczos at the dtype's default tolerance), the trace's relative error
(Krylov-deflated Hutchinson, 100 products; its own standard error beside it) and the density's
1-Wasserstein distance to the exact spectral measure, relative to the spectral range (SLQ, 4 × 80).

    OMP_NUM_THREADS=1 python benchmarks/mixed_precision.py
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from hpcspec.commands.demo import digits_mlp_operator
from hpcspec.config import ModelConfig
from hpcspec.curvature.dense import dense_hessian
from hpcspec.curvature.operator import HessianOperator
from hpcspec.problem.data import load_shard
from hpcspec.problem.models import build_model
from hpcspec.solvers import block_lanczos, slq, trace, wasserstein1

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


def models() -> dict[str, tuple[torch.nn.Module, object]]:
    """The two float64 models and their data."""
    mlp = digits_mlp_operator()
    shard = load_shard("digits", 0, 1)
    resnet = build_model("resnet20", input_shape=(1, 8, 8), output_dim=10, cfg_model=ModelConfig(width=1), seed=0)
    return {"digits MLP": (mlp.model, shard),
            "ResNet-20 (w 1, 64 img)": (resnet.to(torch.float64), (shard.inputs[:64], shard.targets[:64]))}


def hvp_seconds(op: HessianOperator, repeats: int) -> float:
    """Mean seconds per vector of a (P, 8) block product, after one warm-up that keeps the graphs."""
    block = torch.randn(op.size, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    op.apply(block)
    started = time.perf_counter()
    for _ in range(repeats):
        op.apply(block)
    return (time.perf_counter() - started) / (8 * repeats)


def measure(op: HessianOperator, reference: HessianOperator, matrix: torch.Tensor, repeats: int) -> dict[str, float]:
    """One dtype's row: speed and the errors against the dense float64 ``matrix``."""
    exact, _ = np.linalg.eigh(matrix.numpy())
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    hv, exact_hv = op.apply(v), reference.apply(v)
    top = block_lanczos(op, 5)
    expected = exact[::-1][:5]
    estimate = trace(op, matvecs=100)
    atoms, weights = slq(op).measure()
    span = float(exact[-1] - exact[0])
    return {"hvp_ms": 1e3 * hvp_seconds(op, repeats),
            "hv_error": float(torch.linalg.vector_norm(hv - exact_hv) / torch.linalg.vector_norm(exact_hv)),
            "eig_error": float(np.max(np.abs(top.eigenvalues - expected) / np.abs(expected))),
            "trace_error": abs(estimate.estimate - float(np.trace(matrix.numpy()))) / abs(float(np.trace(matrix.numpy()))),
            "trace_stderr": estimate.stderr / abs(float(np.trace(matrix.numpy()))),
            "w1": wasserstein1(atoms, weights, exact, np.full(len(exact), 1 / len(exact))) / span}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed (P, 8) block products per dtype")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':24} {'dtype':9} {'ms/HVP':>8} {'H·v err':>9} {'top-5 err':>9} {'trace err':>9} "
          f"{'(stderr)':>9} {'W1/range':>9}")
    for name, (model64, data) in models().items():
        exact64 = None
        for dtype_name, dtype in DTYPES.items():
            model = copy.deepcopy(model64).to(dtype)
            op = HessianOperator(model, "cross_entropy", data, batch_size=256, method="double_backward")
            reference = HessianOperator(copy.deepcopy(model).to(torch.float64), "cross_entropy", data, batch_size=256,
                                        method="double_backward")
            matrix = dense_hessian(reference)
            row = measure(op, reference, matrix, args.repeats)
            print(f"{name:24} {dtype_name:9} {row['hvp_ms']:8.2f} {row['hv_error']:9.1e} {row['eig_error']:9.1e} "
                  f"{row['trace_error']:9.1e} {row['trace_stderr']:9.1e} {row['w1']:9.1e}", flush=True)
            top = np.linalg.eigvalsh(matrix.numpy())[::-1][:5]
            if exact64 is None:
                exact64 = top
            else:
                shift = float(np.max(np.abs(top - exact64) / np.abs(exact64)))
                print(f"{'':24} {'weights':9} {'':8} {'':9} {shift:9.1e}   (float64 top-5 moved by rounding the "
                      f"weights to {dtype_name})", flush=True)


if __name__ == "__main__":
    main()
