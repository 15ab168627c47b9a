"""The measurements behind ``benchmarks/scaling_model.py``, taken on this machine.

1. **Collectives** (mpi4py buffer methods on float64 vectors, what hpcspec's MPI communicator
   calls): ``Allreduce``, ``Reduce_scatter`` and ``Allgatherv`` of n = 2⁸ … 2²¹ numbers on 2–4
   ranks; per case the median over rounds of the slowest rank's mean time per call.
2. **Products** (on 1–3 ranks): the 266,890-parameter MLP 64-480-480-10 on digits (1,797 samples,
   float32 compute, graphs kept, 1 thread per rank), sharded vectors: the median time of one
   product as a solver sees it (allgather of the whole vector, H·v on this rank's shard, reduce-
   scatter of the partial products), and of the compute alone (the same shard's product without
   communication). On 1 rank also one gradient, for the HVP ÷ gradient ratio.

Run: ``PYTHONPATH=. python benchmarks/scaling_measure.py [--ranks 1,2,3,4] [--product-ranks 1,2,3]
[--json benchmarks/results/scaling_measured.json]``; it launches itself under ``mpirun`` once per
rank count (``--worker``) and merges what the ranks report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import mpirun  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "scaling_measured.json"
SIZES = [2 ** k for k in range(8, 22)]
HIDDEN = (480, 480)
#: Forward FLOPs of one sample of the MLP 64-480-480-10: 2 per multiply-add of its three layers.
MLP_FORWARD_FLOP = 2 * (64 * 480 + 480 * 480 + 480 * 10)


def _timed(call, calls: int, comm) -> float:
    """The slowest rank's mean seconds per call over ``calls`` calls (after a barrier)."""
    from mpi4py import MPI

    comm.Barrier()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    mine = (time.perf_counter() - started) / calls
    return comm.allreduce(mine, op=MPI.MAX)


def collectives(rounds: int = 5) -> list[dict]:
    """Median time per call of each collective and size on this world (worker side)."""
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    ranks, rank = comm.Get_size(), comm.Get_rank()
    found = []
    for n in SIZES:
        counts = [(r + 1) * n // ranks - r * n // ranks for r in range(ranks)]
        whole, part = np.ones(n), np.ones(counts[rank])
        calls = max(3, min(200, (1 << 22) // n))
        cases = {"allreduce": lambda: comm.Allreduce(MPI.IN_PLACE, whole, op=MPI.SUM),
                 "reduce_scatter": lambda: comm.Reduce_scatter(whole, part, recvcounts=counts, op=MPI.SUM),
                 "allgather": lambda: comm.Allgatherv(part, [whole, counts])}
        for name, call in cases.items():
            call()  # first-touch and algorithm set-up outside the timing
            seconds = statistics.median(_timed(call, calls, comm) for _ in range(rounds))
            found.append({"collective": name, "ranks": ranks, "n": n, "seconds": seconds})
    return found


def products(repeats: int = 7) -> dict:
    """Time per sharded product, per local product, and (1 rank) per gradient (worker side)."""
    import torch
    from mpi4py import MPI

    from hpcspec.config import ModelConfig
    from hpcspec.curvature.operator import HessianOperator
    from hpcspec.parallel.comm import MPICommunicator, SingleProcess
    from hpcspec.problem.data import load_shard
    from hpcspec.problem.models import build_model

    torch.set_num_threads(1)
    comm = MPICommunicator(MPI.COMM_WORLD)
    shard = load_shard("digits", comm.rank, comm.size)
    model = build_model("mlp", input_shape=(1, 8, 8), output_dim=10,
                        cfg_model=ModelConfig(hidden=HIDDEN, activation="relu"), seed=0).to(torch.float32)
    kwargs = dict(batch_size=256, method="double_backward", graph_budget_mb=1024)
    op = HessianOperator(model, "cross_entropy", shard, comm, shard_vectors=True, **kwargs)
    alone = HessianOperator(model, "cross_entropy", shard, SingleProcess(), **kwargs)
    space = op.space if op.space.sharded else None
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    local = v[space.lo:space.hi].clone() if space else v

    def product() -> None:
        if space is None:
            op.apply(v)
        else:
            space.apply(op, space.gather(local))

    def compute() -> None:
        alone.apply(v)

    cases = {"product": product, "compute": compute}
    if comm.size == 1:
        cases["gradient"] = lambda: alone.loss_and_gradient()
    for call in cases.values():
        call()  # graph build (kept graphs) and warm-up outside the timing
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, call in cases.items():  # interleaved: noise hits every case alike
            MPI.COMM_WORLD.Barrier()
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    slowest = {name: max(comm.allgather_object(statistics.median(t))) for name, t in times.items()}
    return {"ranks": comm.size, "params": op.size, "samples": shard.total, "forward_flop": MLP_FORWARD_FLOP,
            **{f"{name}_s": seconds for name, seconds in slowest.items()}}


def worker(output: Path, with_products: bool) -> None:
    from mpi4py import MPI

    record = {"collectives": collectives()}
    if with_products:
        record["products"] = products()
    if MPI.COMM_WORLD.Get_rank() == 0:
        output.write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2,3,4", help="rank counts for the collectives")
    parser.add_argument("--product-ranks", default="1,2,3", help="rank counts for the products")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--with-products", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.with_products)
        return
    merged: dict[str, list] = {"collectives": [], "products": []}
    product_ranks = {int(r) for r in args.product_ranks.split(",") if r}
    with tempfile.TemporaryDirectory() as scratch:
        for ranks in sorted({int(r) for r in args.ranks.split(",") if r} | product_ranks):
            out = Path(scratch) / f"{ranks}.json"
            flags = ["--with-products"] if ranks in product_ranks else []
            done, wall = mpirun(ranks, [__file__, "--worker", str(out), *flags], threads=1)
            if done.returncode != 0:
                raise SystemExit(f"measuring on {ranks} rank(s) failed:\n{done.stderr[-3000:]}")
            found = json.loads(out.read_text())
            merged["collectives"] += found["collectives"] if ranks > 1 else []
            merged["products"] += [found["products"]] if "products" in found else []
            print(f"{ranks} rank(s): {wall:.1f} s; {found.get('products', '')}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(merged, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
