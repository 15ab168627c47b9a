"""Parallel efficiency of a full run (top-k + trace + density) on 1 rank vs R ranks, 1 thread each.

Runs the same job under ``mpirun -n 1`` and ``mpirun -n R`` (default R = 2, the cores of the
development machine), alternating them ``--repeats`` times so noise hits both alike, and reads
from each results.h5 the time of the estimators (eigen + trace + density, the part that scales)
and of the whole run (start-up, data, checks included). Efficiency = T₁ / (R · T_R), medians.

Default job: MLP 64-480-480-10 on scikit-learn's digits (266,890 parameters), 50 training steps,
top-5 + trace + density, float64, double backward with kept graphs, sharded vectors.

    python benchmarks/parallel_efficiency.py [--ranks 2] [--repeats 3] [--json PATH] [--extra "..."]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import MLP_JOB, mpirun  # noqa: E402

JOB = [*MLP_JOB, "--set", "threads=1"]


def run(ranks: int, output: Path, extra: list[str]) -> dict[str, float]:
    """One job; its estimator and total seconds as hpcspec recorded them, and the launcher's wall time."""
    done, wall = mpirun(ranks, ["-m", "hpcspec", "run", *JOB, *extra, "--output", str(output)], threads=1)
    if done.returncode != 0:
        raise SystemExit(f"job failed on {ranks} rank(s):\n{done.stderr[-3000:]}")
    with h5py.File(output / "results.h5") as f:
        solve = sum(float(f[group].attrs["seconds"]) for group in ("eigen", "trace", "density") if group in f)
        return {"solve": solve, "total": float(f.attrs["seconds"]), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra", default="", help="more run flags, e.g. \"--probes 8 --steps 100\"")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    extra = shlex.split(args.extra)
    runs: dict[int, list[dict[str, float]]] = {1: [], args.ranks: []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for ranks in (1, args.ranks):
                runs[ranks].append(run(ranks, Path(scratch) / f"r{ranks}-{repeat}", extra))
                print(f"repeat {repeat}, {ranks} rank(s): {runs[ranks][-1]}", flush=True)
    medians = {ranks: {key: statistics.median(r[key] for r in found) for key in found[0]} for ranks, found in runs.items()}
    record = {"ranks": args.ranks, "repeats": args.repeats, "extra": args.extra, "runs": runs, "medians": medians,
              "efficiency": {key: medians[1][key] / (args.ranks * medians[args.ranks][key]) for key in medians[1]}}
    print(f"\n{'':10}{'1 rank s':>10}{f'{args.ranks} ranks s':>12}{'speed-up':>10}{'efficiency':>12}")
    for key in ("solve", "total", "wall"):
        one, many = medians[1][key], medians[args.ranks][key]
        print(f"{key:10}{one:10.2f}{many:12.2f}{one / many:10.2f}{100 * record['efficiency'][key]:11.1f}%")
    print("solve = eigen + trace + density as recorded in results.h5; total = hpcspec's whole run; "
          "wall = mpirun start to exit")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
