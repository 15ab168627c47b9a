"""Where a Lanczos iteration's time goes: HVP, communication, reorthogonalisation, checkpoint, other.

Runs ``Lanczos`` (k = 5, exactly m steps: a negative tol never converges) on ResNet-20 (CIFAR
shapes, seeded synthetic data, float32 model, float64 solver) or the digits MLP, with the shard's graphs kept and the
vectors sharded as a default run has them, and times every step with exclusive accounting (a
region's time excludes the regions nested inside it):

* ``hvp``: this rank's products on its shard (``HessianOperator._local_products``); the first
  product, which also builds the kept graphs, is reported apart as ``graph build``;
* ``communication``: every collective (reduce-scatter of the product, allgather of the next
  vector, allreduces of inner products, decisions), waiting for the slowest rank included;
* ``reorthogonalisation``: the two Gram–Schmidt passes against the (sliced) basis, the norms;
* ``checkpoint``: commits through the real :class:`~hpcspec.checkpoint.Checkpointer` at the given
  cadence (default: hpcspec's, 300 s stretched to a 2 % budget);
* ``other``: the rest (Ritz values of T, bookkeeping).

Run (1 thread per rank)::

    PYTHONPATH=. python benchmarks/lanczos_breakdown.py --model resnet20 --steps 100
    mpirun -n 2 python benchmarks/lanczos_breakdown.py --model resnet20 --steps 100 --json out.json

Prints totals, shares of the run after the graph build, and per-iteration medians (rank 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hvp_cost import build  # noqa: E402  (the benchmark models)

from hpcspec.checkpoint import Checkpointer, CheckpointStore, StopFlag  # noqa: E402
from hpcspec.parallel.comm import world  # noqa: E402
from hpcspec.problem.losses import get_loss  # noqa: E402
from hpcspec.curvature.operator import HessianOperator  # noqa: E402
from hpcspec.solvers.lanczos import KrylovBasis  # noqa: E402
from hpcspec.solvers.lanczos import Lanczos  # noqa: E402

CATEGORIES = ("hvp", "communication", "reorthogonalisation", "checkpoint", "other")
COLLECTIVES = ("allreduce_sum_", "reduce_scatter_rows", "allgather_rows", "gather_rows", "bcast_object",
               "allgather_object")


class Profile:
    """Exclusive wall time per category: nested regions are subtracted from their parents."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # [start, nested seconds]

    def wrap(self, category: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([time.perf_counter(), 0.0])
            try:
                return function(*args, **kwargs)
            finally:
                start, nested = self._stack.pop()
                elapsed = time.perf_counter() - start
                self.seconds[category] += elapsed - nested
                if self._stack:
                    self._stack[-1][1] += elapsed

        return timed

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("resnet20", "mlp"), default="resnet20")
    parser.add_argument("--steps", type=int, default=100, help="Lanczos steps m")
    parser.add_argument("--samples", type=int, default=256, help="ResNet-20 samples (all ranks together)")
    parser.add_argument("--every-seconds", type=float, default=300.0, help="checkpoint cadence")
    parser.add_argument("--replicated", action="store_true", help="replicated instead of sharded vectors")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    comm = world("auto")
    model, x, y, batch = build(args.model, torch.float32, args.samples, 128)
    lo, hi = comm.rank * len(x) // comm.size, (comm.rank + 1) * len(x) // comm.size
    op = HessianOperator(model, get_loss("cross_entropy"), (x[lo:hi], y[lo:hi]), comm, batch_size=batch,
                         method="double_backward", graph_budget_mb=16384, shard_vectors=not args.replicated)
    profile = Profile()
    op._local_products = profile.wrap("hvp", op._local_products)  # type: ignore[method-assign]
    for name in COLLECTIVES:
        setattr(comm, name, profile.wrap("communication", getattr(comm, name)))
    KrylovBasis.orthogonalise_ = profile.wrap("reorthogonalisation", KrylovBasis.orthogonalise_)  # type: ignore[method-assign]
    space = op.space
    space.norms = profile.wrap("reorthogonalisation", space.norms)  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(comm.bcast_object(scratch))
        store = CheckpointStore(directory / "checkpoints", comm)
        checkpointer = Checkpointer(store, comm, op.size, every_iters=0, every_seconds=args.every_seconds,
                                    max_overhead=0.02, flag=StopFlag(), meta={})
        checkpointer.boundary = profile.wrap("checkpoint", checkpointer.boundary)  # type: ignore[method-assign]
        solver = Lanczos(op, 5, tol=-1.0, maxiter=args.steps, seed=0)  # never converged: exactly m steps
        step = profile.wrap("total", solver.step)
        per_step: list[dict[str, float]] = []
        while not solver.done:
            before = profile.snapshot()
            started = time.perf_counter()
            step()
            checkpointer.boundary(solver.state_dict)
            wall = time.perf_counter() - started
            after = profile.snapshot()
            row = {c: after.get(c, 0.0) - before.get(c, 0.0) for c in CATEGORIES if c != "other"}
            row["other"] = wall - sum(row.values())
            row["wall"] = wall
            per_step.append(row)
        comm.bcast_object(None)  # every rank done before the scratch folder goes
    build_step, steady = per_step[0], per_step[1:]
    totals = {c: sum(r[c] for r in steady) for c in (*CATEGORIES, "wall")}
    record = {"model": args.model, "ranks": comm.size, "parameters": op.size, "steps": len(per_step),
              "sharded": space.sharded, "samples_per_rank": hi - lo, "graph_build_seconds": build_step["wall"],
              "graph_bytes": op.graph_bytes, "checkpoints": len(checkpointer.commits),
              "totals": totals, "shares": {c: totals[c] / totals["wall"] for c in CATEGORIES},
              "median_ms": {c: 1e3 * statistics.median(r[c] for r in steady) for c in (*CATEGORIES, "wall")},
              "non_hvp_share": 1 - totals["hvp"] / totals["wall"]}
    records = comm.allgather_object(record)
    if comm.rank != 0:
        return
    print(f"Lanczos breakdown: {args.model}, P = {op.size:,}, {comm.size} rank(s), {len(per_step)} steps, "
          f"{'sharded' if space.sharded else 'replicated'} vectors, {hi - lo} samples on rank 0, "
          f"graph build {build_step['wall']:.2f} s, {len(checkpointer.commits)} checkpoint(s)")
    print(f"{'':22}{'total s':>10}{'share':>9}{'median ms/iter':>16}")
    for c in (*CATEGORIES, "wall"):
        share = record["shares"].get(c, 1.0)
        print(f"{c:22}{totals[c]:10.3f}{100 * share:8.2f}%{record['median_ms'][c]:16.2f}")
    per_rank = ", ".join(f"{100 * r['non_hvp_share']:.2f} %" for r in records)
    print(f"everything other than the HVP: {100 * record['non_hvp_share']:.2f} % of the iterations (rank 0); "
          f"per rank: {per_rank}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
