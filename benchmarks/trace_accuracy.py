"""Accuracy and error-bar coverage of each trace estimator on the default job's trained digits MLP.

What is measured: the Hessian of the default job's network (``hpcspec.commands.demo.digits_mlp_operator``:
digits, MLP (32, 32) tanh, 3,466 parameters, 100 Adam steps) is built densely from the operator's
own products (``hpcspec.curvature.dense.dense_hessian``), so ``tr H`` is exact. Then, for every method of
``hpcspec.solvers.trace.TRACE_METHODS`` and every seed, ``trace(op, method=…, matvecs=…, seed=…)``
runs on ``MatrixOperator(H)`` (the same matrix; fast) or, with ``--operator hessian``, on the
Hessian operator itself (the test suite checks the two give the same estimate to ~1e-12). Per
method it reports over the seeds:

* the median, 90th percentile and root mean square of the relative error ``|est − tr H| / tr H``;
* coverage: the fraction of seeds with ``|est − tr H| ≤ 2·stderr`` (a ~95 % normal interval);
* the mean reported relative standard error (compare with the RMS error: calibration);
* the mean signed relative error (bias check) and the mean seconds per call.

The issue's targets at 100 products: median relative error ≤ 0.5 %, coverage ≥ 90 %. A 50-seed
median has a sampling spread of roughly ±0.08 % here, so use ``--seeds 400`` to compare methods.

Run: ``PYTHONPATH=. python benchmarks/trace_accuracy.py [--seeds 50] [--first-seed 0]
[--matvecs 100] [--methods krylov,hutchpp,xtrace,hutchinson] [--distribution rademacher]
[--operator matrix] [--threads 1] [--json PATH]`` (default JSON: benchmarks/results/trace_accuracy.json).
About 1 s per seed for all four methods on one thread, plus ~40 s to build the dense Hessian.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from hpcspec.commands.demo import digits_mlp_operator
from hpcspec.curvature.dense import dense_hessian
from hpcspec.solvers.matrix import MatrixOperator
from hpcspec.solvers.probes import DISTRIBUTIONS
from hpcspec.solvers.trace import COVERAGE_MULTIPLE, DEFAULT_TRACE_METHOD, TRACE_METHODS, trace

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "trace_accuracy.json"


def measure(op, exact: float, method: str, seeds: range, matvecs: int, distribution: str) -> dict:
    estimates, stderrs, seconds = [], [], []
    for seed in seeds:
        started = time.perf_counter()
        result = trace(op, method=method, matvecs=matvecs, seed=seed, distribution=distribution)
        seconds.append(time.perf_counter() - started)
        estimates.append(result.estimate)
        stderrs.append(result.stderr)
    est, se = np.array(estimates), np.array(stderrs)
    rel = np.abs(est - exact) / abs(exact)
    signed = (est - exact) / abs(exact)
    return {
        "method": method,
        "median_rel_error": float(np.median(rel)),
        "p90_rel_error": float(np.percentile(rel, 90)),
        "rms_rel_error": float(np.sqrt(np.mean(rel ** 2))),
        "coverage": float(np.mean(np.abs(est - exact) <= COVERAGE_MULTIPLE * se)),
        "mean_rel_stderr": float(np.mean(se) / abs(exact)),
        "mean_signed_rel_error": float(np.mean(signed)),
        "stderr_of_mean_signed": float(np.std(signed, ddof=1) / np.sqrt(len(signed))) if len(signed) > 1 else 0.0,
        "seconds_per_call": float(np.mean(seconds)),
        "estimates": est.tolist(),
        "stderrs": se.tolist(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--matvecs", type=int, default=100)
    parser.add_argument("--methods", default=",".join(TRACE_METHODS))
    parser.add_argument("--distribution", default="rademacher", choices=DISTRIBUTIONS)
    parser.add_argument("--operator", default="matrix", choices=("matrix", "hessian"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in TRACE_METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}: choose from {', '.join(TRACE_METHODS)}")
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    hessian_op = digits_mlp_operator()
    matrix = dense_hessian(hessian_op)
    exact = float(torch.trace(matrix))
    frobenius2 = float((matrix ** 2).sum())
    print(f"digits MLP: P = {hessian_op.size}, tr H = {exact:.6f}, ‖H‖_F² = {frobenius2:.6f} "
          f"(dense Hessian in {time.perf_counter() - started:.1f} s)")
    op = MatrixOperator(matrix) if args.operator == "matrix" else hessian_op
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(f"{args.seeds} seeds from {args.first_seed}, {args.matvecs} products, {args.distribution} probes, "
          f"{args.operator} operator; coverage = |err| ≤ {COVERAGE_MULTIPLE:g}·stderr")
    header = f"{'method':<11}{'median':>9}{'p90':>9}{'rms':>9}{'coverage':>10}{'mean se':>9}{'bias':>16}{'s/call':>8}"
    print(header)
    rows = []
    for method in methods:
        row = measure(op, exact, method, seeds, args.matvecs, args.distribution)
        rows.append(row)
        mark = "  (default)" if method == DEFAULT_TRACE_METHOD else ""
        print(f"{method:<11}{100 * row['median_rel_error']:8.3f}%{100 * row['p90_rel_error']:8.3f}%"
              f"{100 * row['rms_rel_error']:8.3f}%{100 * row['coverage']:9.1f}%{100 * row['mean_rel_stderr']:8.3f}%"
              f"{100 * row['mean_signed_rel_error']:+8.3f}±{100 * row['stderr_of_mean_signed']:.3f}%"
              f"{row['seconds_per_call']:8.3f}{mark}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "trace_accuracy",
        "exact_trace": exact, "frobenius_squared": frobenius2, "size": hessian_op.size,
        "seeds": [seeds.start, seeds.stop], "matvecs": args.matvecs, "distribution": args.distribution,
        "operator": args.operator, "threads": args.threads, "coverage_multiple": COVERAGE_MULTIPLE,
        "default_method": DEFAULT_TRACE_METHOD, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "results": rows,
    }
    args.json.write_text(json.dumps(payload, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
