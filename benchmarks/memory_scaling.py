"""Memory per rank of a Lanczos run as the number of steps m and of ranks R grow.

For each (R, m, vectors) the driver starts ``mpirun -n R`` on this script in worker mode. Each rank
builds the operator (MLP 64-480-480-10 on digits, 266,890 parameters, float64, graphs kept), runs
Lanczos for exactly m steps (a negative tol never converges), and reports the bytes of its Krylov basis buffer and its
peak resident memory (``ru_maxrss``) before the solver started and at the end. Sharded vectors
should make the basis — and so the growth of the peak with m — fall as 1/R; replicated vectors
are run alongside for contrast. R = 4 oversubscribes a 2-core machine (memory, not time, is
measured).

    python benchmarks/memory_scaling.py [--ranks 1,2,4] [--steps 100,200,400] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import mpirun  # noqa: E402

MIB = 2**20


def worker(steps: int, sharded: bool, out: Path) -> None:
    import torch

    from hpcspec.parallel.comm import world
    from hpcspec.problem.data import load_shard
    from hpcspec.problem.losses import get_loss
    from hpcspec.problem.models.mlp import MLP
    from hpcspec.curvature.operator import HessianOperator
    from hpcspec.solvers.lanczos import Lanczos

    torch.set_num_threads(1)
    comm = world("mpi")
    torch.manual_seed(0)
    model = MLP(64, 10, (480, 480), "relu").double().eval()
    shard = load_shard("digits", comm.rank, comm.size)
    op = HessianOperator(model, get_loss("cross_entropy"), shard, comm, method="double_backward",
                         graph_budget_mb=1024, shard_vectors=sharded)
    op.apply(torch.zeros(op.size, dtype=torch.float64))  # graphs built: the baseline includes them
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    solver = Lanczos(op, 5, tol=-1.0, maxiter=steps)  # never converged: exactly m steps
    solver.run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record = {"rank": comm.rank, "basis_bytes": solver.basis.allocated.numel() * 8, "basis_rows": solver.basis.count,
              "local_size": op.space.local_size, "peak_before": before, "peak": peak, "size": op.size}
    records = comm.allgather_object(record)
    if comm.rank == 0:
        out.write_text(json.dumps(records))


def launch(ranks: int, steps: int, sharded: bool, scratch: Path) -> list[dict]:
    out = scratch / f"{ranks}-{steps}-{sharded}.json"
    done, _ = mpirun(ranks, [__file__, "--worker", "--steps", str(steps), "--out", str(out),
                             *(["--sharded"] if sharded else [])], threads=1)
    if done.returncode != 0:
        raise SystemExit(f"worker failed ({ranks} ranks, m = {steps}):\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--steps", default="100,200,400")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sharded", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(int(args.steps), args.sharded, args.out)
        return
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for ranks in (int(r) for r in args.ranks.split(",")):
            for steps in (int(m) for m in args.steps.split(",")):
                for sharded in (True, False):
                    records = launch(ranks, steps, sharded, Path(scratch))
                    basis = max(r["basis_bytes"] for r in records)
                    growth = max(r["peak"] - r["peak_before"] for r in records)
                    peak = max(r["peak"] for r in records)
                    rows.append({"ranks": ranks, "steps": steps, "sharded": sharded, "basis_mib": basis / MIB,
                                 "peak_growth_mib": growth / MIB, "peak_mib": peak / MIB, "per_rank": records})
                    print(f"R = {ranks}, m = {steps:4d}, {'sharded   ' if sharded else 'replicated'}: basis "
                          f"{basis / MIB:8.1f} MiB per rank, peak RSS grew {growth / MIB:8.1f} MiB during "
                          f"Lanczos, peak {peak / MIB:8.1f} MiB (largest rank)", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
