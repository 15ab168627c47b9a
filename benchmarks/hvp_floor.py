"""How close an exact HVP sits to its FLOP floor, what the options cost, and Hutchinson's quadratic forms.

ResNet-20 (hpcspec's zoo model) on 256 seeded CIFAR-shaped images in batches of 64, one CPU thread,
``--repeats`` interleaved rounds after one warm-up, medians per call divided by the median of one
gradient over the same batches (``loss_and_gradient``). The floor (issue 17): a gradient is three
products per conv layer, an exact HVP six more with the primal kept (≈ 2 gradients), nine without.
Cases, all on the same vectors:

* ``kept, torch BN`` / ``recomputed, torch BN``: double backward as before (``op.affine_norms = False``);
* ``kept`` / ``recomputed``: today's path (eval BatchNorm as its affine map, :mod:`hpcspec.curvature.affine`);
* ``linearize``: ``torch.func.linearize`` of the batch gradient, built once per batch (build time
  printed apart), then one linearised JVP per product;
* ``block k, loop`` / ``block k, batched``: a (P, k) block through the kept graphs, k second backwards
  against one ``autograd.grad(..., is_grads_batched=True)``; per vector;
* ``quadratic, hvp·v`` / ``quadratic, jvp∘jvp``: one Hutchinson term vᵀHv, from the kept HVP and a
  dot, against nested forward mode d²/dt² L(θ + t v) (no backward pass).

``--lanczos-memory`` instead runs an 80-step Lanczos per case in a fresh process each and prints
its peak resident memory (``ru_maxrss``). Run (float32 unless ``--dtype``)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/hvp_floor.py [--repeats 5] [--dtype float32]
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/hvp_floor.py --lanczos-memory
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.func import functional_call, grad, jvp, linearize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hvp_cost import SEED, build  # noqa: E402  same models and data as the HVP cost benchmark

from hpcspec.curvature.operator import HessianOperator  # noqa: E402
from hpcspec.problem.losses import get_loss  # noqa: E402

SAMPLES, BATCH, BUDGET_MB, LANCZOS_STEPS = 256, 64, 16384, 80
MEMORY_CASES = {"kept": BUDGET_MB, "recomputed": 0}


def operator(model, x, y, budget: float, affine: bool = True) -> HessianOperator:
    op = HessianOperator(model, get_loss("cross_entropy"), (x, y), batch_size=BATCH, method="double_backward",
                         graph_budget_mb=budget)
    op.affine_norms = affine
    return op


def linearized(op: HessianOperator, x: torch.Tensor, y: torch.Tensor) -> tuple[list[Callable], float]:
    """One ``linearize(grad(batch loss))`` per batch (what a product then reuses) and the build time."""
    names, primals, loss = op.layout.names, tuple(p.detach() for p in op.parameters), op.loss
    started, functions = time.perf_counter(), []
    with op.modes():
        for begin in range(0, len(x), BATCH):
            inputs, targets = x[begin:begin + BATCH], y[begin:begin + BATCH]

            def batch_loss(*values, inputs=inputs, targets=targets):
                return loss.sum(functional_call(op.model, dict(zip(names, values)), (inputs,)), targets)
            functions.append(linearize(grad(batch_loss, argnums=tuple(range(len(primals)))), *primals)[1])
    return functions, time.perf_counter() - started


def measure(dtype: torch.dtype, repeats: int) -> dict:
    model, x, y, _ = build("resnet20", dtype, SAMPLES, BATCH)
    ops = {"kept, torch BN": operator(model, x, y, BUDGET_MB, affine=False), "kept": operator(model, x, y, BUDGET_MB),
           "recomputed, torch BN": operator(model, x, y, 0, affine=False), "recomputed": operator(model, x, y, 0)}
    kept = ops["kept"]
    gen = torch.Generator().manual_seed(SEED)
    v = torch.randn(kept.size, generator=gen, dtype=torch.float64)
    blocks = {k: torch.randn(kept.size, k, generator=gen, dtype=torch.float64) for k in (4, 8)}
    tangent = tuple(part.to(dtype) for part in kept.layout.split(v))
    functions, build_s = linearized(kept, x, y)
    names, primals = kept.layout.names, tuple(p.detach() for p in kept.parameters)

    def linearized_product() -> torch.Tensor:
        total = torch.zeros(kept.size, dtype=torch.float64)
        with kept.modes():
            for function in functions:
                kept._accumulate(total, function(*tangent))  # noqa: SLF001 (same float64 sums as apply)
        return total / kept.total_count

    def batched(block: torch.Tensor) -> torch.Tensor:
        k, total = block.shape[1], torch.zeros(block.shape[1], kept.size, dtype=torch.float64)
        parts = [block[a:b].T.reshape(k, *shape).to(dtype) for a, b, shape
                 in zip(kept.layout.offsets[:-1], kept.layout.offsets[1:], kept.layout.shapes)]
        with kept.modes():
            for grads, live in kept._cached_graphs():  # noqa: SLF001
                products = torch.autograd.grad([grads[i] for i in live], kept.parameters, [parts[i] for i in live],
                                               retain_graph=True, is_grads_batched=True, allow_unused=True)
                for j in range(k):
                    kept._accumulate(total[j], [p[j] if p is not None else None for p in products])  # noqa: SLF001
        return (total / kept.total_count).T

    def nested_forward() -> float:
        total = torch.zeros((), dtype=torch.float64)
        with kept.modes():
            for begin in range(0, len(x), BATCH):
                inputs, targets = x[begin:begin + BATCH], y[begin:begin + BATCH]

                def batch_loss(*values, inputs=inputs, targets=targets):
                    return kept.loss.sum(functional_call(model, dict(zip(names, values)), (inputs,)), targets)
                total += jvp(lambda *values: jvp(batch_loss, values, tangent)[1], primals, tangent)[1].double()
        return float(total) / kept.total_count

    cases: dict[str, Callable[[], object]] = {"gradient": kept.loss_and_gradient}
    cases.update({name: (lambda op=op: op.apply(v)) for name, op in ops.items()})
    cases["linearize"] = linearized_product
    for k, block in blocks.items():
        cases[f"block {k}, loop"] = lambda block=block: kept.apply(block)
        cases[f"block {k}, batched"] = lambda block=block: batched(block)
    cases["quadratic, hvp·v"] = lambda: float(v @ kept.apply(v))
    cases["quadratic, jvp∘jvp"] = nested_forward

    results = {name: call() for name, call in cases.items()}  # warm-up; the kept graphs are built here
    exact = results["kept"]
    agreement = {name: float((results[name] - exact).norm() / exact.norm())
                 for name in (*ops, "linearize")}
    agreement.update({f"block {k}": float((results[f"block {k}, batched"] - results[f"block {k}, loop"]).norm()
                                          / results[f"block {k}, loop"].norm()) for k in blocks})
    agreement["quadratic"] = abs(results["quadratic, jvp∘jvp"] - results["quadratic, hvp·v"]) / abs(
        results["quadratic, hvp·v"])
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, call in cases.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    per_vector = {name: int(name.split()[1].rstrip(",")) if name.startswith("block") else 1 for name in cases}
    gradients = {name: medians[name] / per_vector[name] / medians["gradient"] for name in cases}
    return {"parameters": kept.size, "graph_mib": {name: (op.graph_bytes or 0) / 2**20 for name, op in ops.items()},
            "linearize_build_s": build_s, "median_s": medians, "gradients_per_vector": gradients,
            "relative_difference": agreement, "times_s": times}


def lanczos_worker(case: str, affine: bool) -> None:
    from hpcspec.solvers.lanczos import Lanczos

    torch.set_num_threads(1)
    model, x, y, _ = build("resnet20", torch.float32, SAMPLES, BATCH)
    op = operator(model, x, y, MEMORY_CASES[case], affine)
    started = time.perf_counter()
    Lanczos(op, 5, tol=-1.0, maxiter=LANCZOS_STEPS).run()  # never converged: exactly 80 steps
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": time.perf_counter() - started, "graph_mib": (op.graph_bytes or 0) / 2**20}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--lanczos-memory", action="store_true", help="peak RSS of an 80-step Lanczos per case")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "AFFINE"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "hvp_floor.json")
    args = parser.parse_args()
    if args.worker:
        lanczos_worker(args.worker[0], args.worker[1] == "1")
        return 0
    torch.set_num_threads(1)
    if args.lanczos_memory:
        print(f"ResNet-20, {SAMPLES} samples, batch {BATCH}, float32, {LANCZOS_STEPS}-step Lanczos, one process per case")
        for case in MEMORY_CASES:
            for affine in (True,):  # the kept graphs have the same bytes with torch's BN (printed by the timing run)
                out = subprocess.run([sys.executable, __file__, "--worker", case, str(int(affine))],
                                     check=True, capture_output=True, text=True).stdout
                record = json.loads(out.strip().splitlines()[-1])
                label = case + ("" if affine else ", torch BN")
                print(f"  {label:<22} peak RSS {record['peak_mb']:7.0f} MB   graphs {record['graph_mib']:6.1f} MiB"
                      f"   {record['seconds']:6.1f} s")
        return 0
    result = measure(getattr(torch, args.dtype), args.repeats)
    print(f"ResNet-20 ({result['parameters']:,} parameters), {SAMPLES} samples, batch {BATCH}, {args.dtype}, "
          f"1 thread, medians of {args.repeats} interleaved rounds")
    print(f"  {'case':<24}{'median s':>10}{'gradients per vector':>22}{'rel. diff':>11}")
    for name, median in result["median_s"].items():
        key = name.rsplit(",", 1)[0] if name.endswith("batched") else name.split(", ")[0] if name.startswith(
            "quadratic") and "jvp" in name else name
        diff = result["relative_difference"].get(key)
        shown = f"{diff:11.1e}" if diff is not None and name != "kept" and not name.endswith("loop") else ""
        print(f"  {name:<24}{median:>10.3f}{result['gradients_per_vector'][name]:>22.2f}{shown}")
    print(f"  kept graphs: {result['graph_mib']['kept']:.0f} MiB (torch BN: {result['graph_mib']['kept, torch BN']:.0f});"
          f" linearize build {result['linearize_build_s']:.1f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"torch": torch.__version__, "dtype": args.dtype, **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
