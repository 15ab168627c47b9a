"""Top-k eigenpairs: block Lanczos (the default solver) against single-vector Lanczos, side by side.

For each model and k, in one process and one thread, interleaved over ``--rounds`` rounds:

* ``lanczos``: single-vector Lanczos, full reorthogonalisation, no restarts (``eigen.method = lanczos``);
* ``block-b``: block Lanczos with thick restart, locking and the completeness check, block size b
  (``eigen.method = block``, default b = 1), default ``max_basis``;

each at the default tolerance of the operator's dtype (1e-8 in float64) or ``--tol``. Printed per solver: products,
data passes, wall time (median over rounds), restarts and check rounds, and the largest eigenvalue
difference to the first solver of the row (all find the same pairs on these models, whose top
eigenvalues are simple). Then the memory of a top-50 run with a bounded basis: the most vectors
held and their bytes on one rank (``peak_basis · P · 8``).

Models: the default job's trained digits MLP (3,466 parameters, float64; ``mlp-untrained``: the same
at its initialisation) and a CIFAR-style
ResNet-20 of width 16 on digits images (1797 × 1 × 8 × 8, float32 products, float64 solver).

Run: ``PYTHONPATH=. python benchmarks/block_lanczos.py [--models mlp resnet20] [--ks 5 20]
[--blocks 1 2 4 8] [--rounds 3] [--tol T] [--wide-check] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hpcspec.config import ModelConfig
from hpcspec.problem.data import load_shard
from hpcspec.commands.demo import digits_mlp_operator
from hpcspec.problem.models import build_model
from hpcspec.curvature.operator import HessianOperator
from hpcspec.solvers.block_lanczos import BlockLanczos
from hpcspec.solvers.lanczos import Lanczos
from hpcspec.choices import DEFAULT_TOL

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "block_lanczos.json"


def resnet20_operator() -> HessianOperator:
    shard = load_shard("digits", 0, 1)
    model = build_model("resnet20", input_shape=(1, 8, 8), output_dim=10, cfg_model=ModelConfig(width=16), seed=0)
    return HessianOperator(model.to(torch.float32), "cross_entropy", shard, batch_size=256, method="double_backward",
                           graph_budget_mb=1024.0)


OPERATORS: dict[str, Callable[[], HessianOperator]] = {"mlp": digits_mlp_operator, "resnet20": resnet20_operator,
                                                        "mlp-untrained": lambda: digits_mlp_operator(train_steps=0)}
DTYPES = {"mlp": "float64", "resnet20": "float32", "mlp-untrained": "float64"}


def solve(op: HessianOperator, k: int, solver: str, tol: float, wide_check: bool = False) -> dict:
    started = time.perf_counter()
    if solver == "lanczos":
        result = Lanczos(op, k, tol=tol).run()
    else:
        block = int(solver.split("-")[1])
        result = BlockLanczos(op, k, tol=tol, block_size=block, check_size=block if wide_check else 1).run()
    seconds = time.perf_counter() - started
    return {"products": result.num_matvecs, "passes": result.data_passes, "seconds": seconds,
            "restarts": result.restarts, "checks": result.checks, "converged": bool(result.converged),
            "complete": bool(result.complete), "values": result.eigenvalues.tolist(), "peak_basis": result.peak_basis}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(OPERATORS), choices=list(OPERATORS))
    parser.add_argument("--ks", nargs="+", type=int, default=[5, 20])
    parser.add_argument("--blocks", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-k", type=int, default=50)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--tol", type=float, default=0.0,
                        help="relative residual tolerance (0: the default of the model's dtype, 1e-8 in float64)")
    parser.add_argument("--wide-check", action="store_true",
                        help="check rounds with a block of b vectors instead of one (the design alternative)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    solvers = ["lanczos"] + [f"block-{b}" for b in args.blocks]
    record: dict = {}
    for name in args.models:
        op = OPERATORS[name]()
        tol = args.tol or DEFAULT_TOL[DTYPES[name]]
        print(f"\n{name}: {op.size:,} parameters, tol {tol:g}")
        print(f"  {'k':>3}  {'solver':>9}  {'products':>8}  {'passes':>6}  {'seconds':>8}  {'restarts':>8}  "
              f"{'checks':>6}  {'complete':>8}  {'max |Δλ|':>9}")
        for k in args.ks:
            runs: dict[str, list[dict]] = {solver: [] for solver in solvers}
            for _ in range(args.rounds):  # interleaved, so load on the machine hits every solver alike
                for solver in solvers:
                    runs[solver].append(solve(op, k, solver, tol, args.wide_check))
            reference = np.array(runs[solvers[0]][0]["values"])
            for solver in solvers:
                first = runs[solver][0]
                seconds = statistics.median(run["seconds"] for run in runs[solver])
                delta = float(np.max(np.abs(np.array(first["values"]) - reference)))
                print(f"  {k:>3}  {solver:>9}  {first['products']:>8}  {first['passes']:>6}  {seconds:>8.2f}  "
                      f"{first['restarts']:>8}  {first['checks']:>6}  {str(first['complete']):>8}  {delta:>9.1e}")
                record.setdefault(name, {}).setdefault(str(k), {})[solver] = {**first, "median_seconds": seconds}
        solver = BlockLanczos(op, args.memory_k, tol=tol)
        result = solver.run()
        bytes_ = result.peak_basis * op.size * 8
        print(f"  top-{args.memory_k}, default block ({solver.block_size}) and max_basis {solver.max_basis}: peak "
              f"{result.peak_basis} "
              f"vectors = {bytes_ / 2**20:.1f} MiB per rank (replicated; / R when sharded), {result.num_matvecs} products, "
              f"{result.data_passes} passes, {result.restarts} restarts, complete {result.complete}")
        record[name]["memory"] = {"k": args.memory_k, "max_basis": solver.max_basis, "peak_basis": result.peak_basis,
                                  "bytes": bytes_, "products": result.num_matvecs, "passes": result.data_passes}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
