"""Checkpoint overhead: share of run time spent committing checkpoints, and bytes per checkpoint.

Runs the same full job (top-k + trace + density) under ``mpirun -n RANKS`` with checkpoints off
and with checkpoints at a given time cadence, alternating the two so machine noise hits both, and
reads from each results.h5 the run time and the checkpoint figures hpcspec records
(``checkpoints``, ``checkpoint_seconds``, ``checkpoint_bytes`` = the largest checkpoint).

Default model: an MLP 64-480-480-10 on scikit-learn's digits, 266,890 parameters (≈ 270k).

    python benchmarks/checkpoint_overhead.py                        # cadence 300 s (the default)
    python benchmarks/checkpoint_overhead.py --every-seconds 20     # 15× more often than the default
    python benchmarks/checkpoint_overhead.py --repeats 3 --json out.json
    python benchmarks/checkpoint_overhead.py --extra "--probes 16 --steps 100" --skip-off   # a ~7 min job

Prints a table and, with ``--json``, saves every run's figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import MLP_JOB as JOB, mpirun  # noqa: E402


def run(ranks: int, output: Path, extra: list[str]) -> dict[str, float]:
    done, wall = mpirun(ranks, ["-m", "hpcspec", "run", "--output", str(output), *JOB, *extra])
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with h5py.File(output / "results.h5") as f:
        attrs = dict(f.attrs)
        matvecs = int(f["eigen"].attrs.get("num_matvecs", 0)) + int(f["trace"].attrs["num_matvecs"])
        matvecs += int(f["density"].attrs.get("num_matvecs", 0))
    return {"seconds": float(attrs["seconds"]), "wall": wall, "checkpoints": int(attrs["checkpoints"]),
            "checkpoint_seconds": float(attrs["checkpoint_seconds"]),
            "checkpoint_bytes": int(attrs["checkpoint_bytes"]), "num_params": int(attrs["num_params"]),
            "matvecs": matvecs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--every-seconds", type=float, default=300.0, help="checkpoint cadence (default: hpcspec's)")
    parser.add_argument("--max-overhead", type=float, default=0.02, help="checkpoint.max_overhead (default 0.02)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="save every run's figures here")
    parser.add_argument("--extra", default="", help="more run flags, e.g. \"--probes 16 --steps 100\" for a longer job")
    parser.add_argument("--skip-off", action="store_true", help="only the run with checkpoints (the share needs no other)")
    args = parser.parse_args()
    cadence = ["--set", f"checkpoint.every_seconds={args.every_seconds}",
               "--set", f"checkpoint.max_overhead={args.max_overhead}"]
    off = ["--set", "checkpoint.every_seconds=0"]
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, extra in (("off", off), ("on", cadence)):
                if name == "off" and args.skip_off:
                    continue
                figures = run(args.ranks, Path(tmp) / f"{name}-{repeat}", extra + args.extra.split())
                runs[name].append(figures)
                print(f"{name:>3} #{repeat}: {figures['seconds']:.1f} s, {figures['checkpoints']} checkpoints "
                      f"taking {figures['checkpoint_seconds']:.2f} s, largest {figures['checkpoint_bytes'] / 1e6:.1f} MB",
                      flush=True)
    on, off_runs = runs["on"], runs["off"]
    share = statistics.median(r["checkpoint_seconds"] / r["seconds"] for r in on)
    off_median = statistics.median(r["seconds"] for r in off_runs) if off_runs else float("nan")
    slowdown = statistics.median(r["seconds"] for r in on) / off_median
    per_commit = [r["checkpoint_seconds"] / r["checkpoints"] for r in on if r["checkpoints"]]
    print(f"\nmodel: {on[0]['num_params']:,} parameters, {on[0]['matvecs']} products, {args.ranks} ranks; "
          f"cadence every {args.every_seconds:g} s (max_overhead {args.max_overhead:g})")
    print(f"run time, median: checkpoints off {off_median:.1f} s, "
          f"on {statistics.median(r['seconds'] for r in on):.1f} s (ratio {slowdown:.3f})")
    print(f"checkpoints per run: {[r['checkpoints'] for r in on]}; time in checkpoints: median share "
          f"{100 * share:.2f} % of the run; per checkpoint {statistics.median(per_commit) if per_commit else 0:.2f} s; "
          f"largest checkpoint {max(r['checkpoint_bytes'] for r in on) / 1e6:.1f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
