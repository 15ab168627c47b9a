"""Cost per vector of a block HVP: k = 1, 2, 4, 8 vectors per data pass, in gradients.

``HessianOperator.apply`` on a (P, k) block does one forward and first backward per batch and
then k second backwards (double backward), so the forward and the gradient are shared by the k
vectors; with the first-order graphs kept (``graph_budget_mb``) only the k second backwards remain.
This prints, per model and k, the median time of one block product divided by k and by the time
of one gradient over the same data (``loss_and_gradient``), one CPU thread, interleaved rounds.

    PYTHONPATH=. python benchmarks/batched_hvp.py [--models mlp,resnet20] [--repeats 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from hpcspec.problem.losses import get_loss
from hpcspec.curvature.operator import HessianOperator

from hvp_cost import SEED, build  # same models, data and batch sizes as the single-vector benchmark

BLOCKS = (1, 2, 4, 8)
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "batched_hvp.json"


def measure(name: str, repeats: int) -> dict:
    model, x, y, batch = build(name, torch.float32, 256, 128)
    loss = get_loss("cross_entropy")
    ops = {"recomputed": HessianOperator(model, loss, (x, y), batch_size=batch, method="double_backward",
                                         graph_budget_mb=0),
           "graph kept": HessianOperator(model, loss, (x, y), batch_size=batch, method="double_backward",
                                         graph_budget_mb=16384)}
    gen = torch.Generator().manual_seed(SEED)
    size = ops["recomputed"].size
    blocks = {k: torch.randn(size, k, generator=gen, dtype=torch.float64) for k in BLOCKS}
    cases = {"gradient": ops["recomputed"].loss_and_gradient}
    for label, op in ops.items():
        for k, block in blocks.items():
            cases[f"{label}, k={k}"] = lambda op=op, block=block: op.apply(block)
    for call in cases.values():  # warm-up (and the kept graphs are built here)
        call()
    times: dict[str, list[float]] = {case: [] for case in cases}
    for _ in range(repeats):
        for case, call in cases.items():
            started = time.perf_counter()
            call()
            times[case].append(time.perf_counter() - started)
    gradient = statistics.median(times["gradient"])
    per_vector = {case: statistics.median(values) / int(case.rsplit("=", 1)[1]) / gradient
                  for case, values in times.items() if case != "gradient"}
    return {"parameters": size, "gradient_s": gradient, "per_vector_in_gradients": per_vector}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,resnet20")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name in args.models.split(","):
        results[name] = result = measure(name, args.repeats)
        print(f"\n{name}: {result['parameters']:,} parameters, gradient {1e3 * result['gradient_s']:.1f} ms; "
              "HVP time per vector in gradients")
        print(f"  {'k':>3}" + "".join(f"{label:>14}" for label in ("recomputed", "graph kept")))
        for k in BLOCKS:
            row = [result["per_vector_in_gradients"][f"{label}, k={k}"] for label in ("recomputed", "graph kept")]
            print(f"  {k:>3}" + "".join(f"{value:>14.2f}" for value in row))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"torch": torch.__version__, "repeats": args.repeats, "models": results}, indent=1))


if __name__ == "__main__":
    main()
