"""Accuracy of the eigenpair solvers on the default job's trained digits MLP, against its dense Hessian.

What is measured (issue 3's eigen figures):

* Lanczos top-5 (float64 model): relative eigenvalue errors and the products used, with
  ``maxiter = 80`` and the default tolerance (1e-8);
* ghost eigenvalues: a 200-step Lanczos on the float32 model (float64 solver), all 200 Ritz values
  kept; for every converged Ritz value (residual ≤ 1e-3·‖H‖) the number of Ritz copies within
  1e-4·‖H‖ against the number of exact eigenvalues within 2e-4·‖H‖ — a ghost is a surplus copy;
* the smallest end (negative curvature): Lanczos ``which="smallest"``, its products and errors;
* PyHessian-parity power iteration (tol 1e-3, 100 iterations per pair): top-5 relative errors,
  products and residuals — what published PyHessian numbers carry.

The dense Hessian is built from the operator's own products (``hpcspec.curvature.dense.dense_hessian``, 3,466
products, about half a minute).

Run: ``PYTHONPATH=. python benchmarks/eigen_accuracy.py [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from hpcspec import MatrixOperator, lanczos
from hpcspec.commands.demo import digits_mlp_operator
from hpcspec.curvature.dense import dense_hessian
from hpcspec.solvers import power_iteration

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "eigen_accuracy.json"


def relative(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    return np.abs(found - exact) / np.abs(exact)


def ghosts(found: np.ndarray, residuals: np.ndarray, exact: np.ndarray) -> dict[str, int]:
    scale = np.abs(exact).max()
    converged = found[residuals <= 1e-3 * scale]
    width = 1e-4 * scale
    surplus = 0
    for value in converged:
        copies = int(np.sum(np.abs(converged - value) <= width))
        present = int(np.sum(np.abs(exact - value) <= 2 * width))
        surplus += max(0, copies - present)
    return {"converged_ritz_values": int(len(converged)), "ghost_copies": surplus}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    torch.set_num_threads(1)
    op = digits_mlp_operator()
    matrix = dense_hessian(op)
    exact = np.linalg.eigvalsh(matrix.numpy())
    top5 = exact[::-1][:5]
    record: dict[str, object] = {"num_params": op.size, "exact_top5": top5.tolist(),
                                 "exact_smallest": exact[:4].tolist()}

    result = lanczos(op, 5, maxiter=80)
    record["lanczos_top5"] = {"max_relative_error": float(relative(result.eigenvalues, top5).max()),
                              "num_matvecs": result.num_matvecs, "converged": result.converged}

    op32 = digits_mlp_operator(dtype=torch.float32)
    long = lanczos(op32, 200, maxiter=200, tol=0.0)
    record["float32_200_steps"] = ghosts(long.eigenvalues, long.residuals, exact)
    record["float32_200_steps"]["top10_max_relative_error"] = float(relative(long.eigenvalues[:10],
                                                                             exact[::-1][:10]).max())

    small = lanczos(MatrixOperator(matrix), 4, which="smallest", maxiter=600)
    record["lanczos_smallest4"] = {"max_relative_error": float(relative(small.eigenvalues, exact[:4]).max()),
                                   "num_matvecs": small.num_matvecs, "converged": small.converged}

    power = power_iteration(op, 5)
    magnitude = exact[np.argsort(-np.abs(exact))][:5]
    record["power_pyhessian_top5"] = {"relative_errors": relative(power.eigenvalues, magnitude).tolist(),
                                      "num_matvecs": power.num_matvecs, "residuals": power.residuals.tolist(),
                                      "converged": power.converged}

    print(f"digits MLP, {op.size:,} parameters; exact top-5 {np.array2string(top5, precision=6)}")
    lt = record["lanczos_top5"]
    print(f"Lanczos top-5 (float64):  max relative error {lt['max_relative_error']:.2e} "
          f"with {lt['num_matvecs']} products (maxiter 80), converged {lt['converged']}")
    gh = record["float32_200_steps"]
    print(f"Lanczos 200 steps (float32 model): {gh['converged_ritz_values']} converged Ritz values, "
          f"{gh['ghost_copies']} ghost copies; top-10 max relative error {gh['top10_max_relative_error']:.2e}")
    ls = record["lanczos_smallest4"]
    print(f"Lanczos smallest-4:       max relative error {ls['max_relative_error']:.2e} "
          f"with {ls['num_matvecs']} products")
    pw = record["power_pyhessian_top5"]
    print(f"power (PyHessian rule):   relative errors {', '.join(f'{e:.1e}' for e in pw['relative_errors'])} "
          f"with {pw['num_matvecs']} products; residuals {', '.join(f'{r:.1e}' for r in pw['residuals'])}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
