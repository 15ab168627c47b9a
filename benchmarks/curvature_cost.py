"""Seconds per product of each curvature matrix on the digits MLP, interleaved, one thread.

    PYTHONPATH=. python benchmarks/curvature_cost.py [--rounds 7]

Prints the median over rounds for the Hessian (double backward with kept first-order graphs, the
default for this model; forward over reverse) and the generalised Gauss-Newton matrix.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

from hpcspec import GaussNewtonOperator, HessianOperator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    digits = load_digits()
    x, y = torch.tensor(digits.data / 16.0, dtype=torch.float64), torch.tensor(digits.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10)).double()
    ops = {"hessian, double backward (graphs kept)": HessianOperator(model, "cross_entropy", (x, y),
                                                                     method="double_backward"),
           "hessian, forward over reverse": HessianOperator(model, "cross_entropy", (x, y),
                                                            method="forward_over_reverse"),
           "gauss-newton": GaussNewtonOperator(model, "cross_entropy", (x, y))}
    vector = torch.randn(ops["gauss-newton"].size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    seconds: dict[str, list[float]] = {name: [] for name in ops}
    for op in ops.values():
        op.apply(vector)  # warm-up (and the kept graphs' build)
    for _ in range(args.rounds):
        for name, op in ops.items():
            started = time.perf_counter()
            op.apply(vector)
            seconds[name].append(time.perf_counter() - started)
    print(f"digits MLP, {ops['gauss-newton'].size:,} parameters, 1797 samples, float64, one thread")
    for name, values in seconds.items():
        print(f"  {name:<40} {1000 * statistics.median(values):7.1f} ms per product (median of {args.rounds})")


if __name__ == "__main__":
    main()
