"""Cost of one exact Hessian-vector product in gradients, per HVP method of ``HessianOperator``.

What is measured: on one CPU thread, the median wall time of ``HessianOperator.apply(v)`` (one
exact H·v over the whole data set, batch by batch) for ``method="double_backward"`` and
``method="forward_over_reverse"``, divided by the median time of one gradient over the same data
and the same batches. Two gradient baselines are timed:

* ``loss_and_gradient`` -- ``HessianOperator.loss_and_gradient()``: forward + backward of the
  summed loss per batch, accumulated into one flat float64 vector (what the tool does);
* ``autograd.grad`` -- a plain loop of forward + ``torch.autograd.grad`` per batch, no flattening.

Their difference is the flattening overhead. ``pyhessian cached graph`` is PyHessian's product
with ``data=`` (one batch): the gradient taken once with ``create_graph=True`` and kept, then per
product ``autograd.grad(grads, params, grad_outputs=v, retain_graph=True)`` on lists of tensors (no
flat vector, no float64 accumulation), over every batch's kept graph. A third HVP case, ``double_backward, graph kept``,
keeps the shard's first-order graphs between products (``graph_budget_mb``), so each product is
one second backward; its products are checked to be bitwise those of recomputing. The methods are interleaved in every round so that
noise from other processes hits all of them alike. Once per model the two methods' products of the
same vector are compared (relative 2-norm difference).

Why: a Lanczos run costs one H·v per iteration, so "H·v in gradients" is what a spectrum costs
relative to an epoch of gradients, the figures behind ``hessian.method.rule`` (what ``hvp = "auto"`` picks).

Models: the digits MLP (1797 x 64, 10 classes, hidden (32, 32), tanh, batch 256) and a CIFAR
ResNet-20 (He et al. 2016, option-A shortcuts; the zoo's ``hpcspec.problem.models.resnet``) on seeded
synthetic 3x32x32 inputs with random labels.

Run: ``PYTHONPATH=. python benchmarks/hvp_cost.py [--models mlp,resnet20] [--repeats 7]
[--dtype float32] [--samples 256] [--batch-size 128] [--mlp-batch 256] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from hpcspec.problem.data import load_shard
from hpcspec.problem.losses import get_loss
from hpcspec.problem.models.mlp import MLP
from hpcspec.problem.models.resnet import ResNet
from hpcspec.curvature.operator import HVP_METHODS, HessianOperator

MODELS = ("mlp", "resnet20")
BASELINES = ("loss_and_gradient", "autograd.grad")
TOLERANCES = {torch.float32: 1e-5, torch.float64: 1e-10}
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "hvp_cost.json"
SEED = 0
KEPT = "double_backward, graph kept"
PEER = "pyhessian cached graph"
#: Budget for the kept-graph case: large enough for both models here (the figure printed is the need).
KEPT_BUDGET_MB = 16384


def build(name: str, dtype: torch.dtype, samples: int,
          batch_size: int, mlp_batch: int = 256) -> tuple[nn.Module, torch.Tensor, torch.Tensor, int]:
    """The model (seeded init, eval mode, ``dtype``), its inputs (``dtype``), labels and batch size."""
    torch.manual_seed(SEED)
    if name == "mlp":
        shard = load_shard("digits", 0, 1)
        model: nn.Module = MLP(64, 10, (32, 32), "tanh")
        x, y, batch = shard.inputs, shard.targets, mlp_batch
    else:
        model = ResNet(3, in_channels=3, num_classes=10)  # ResNet-20, width 16: hpcspec's zoo model
        generator = torch.Generator().manual_seed(SEED)
        x = torch.randn(samples, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (samples,), generator=generator)
        batch = batch_size
    return model.to(dtype).eval(), x.to(dtype), y, batch


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def pyhessian_style(model: nn.Module, loss, batches: list, params: list) -> Callable[[torch.Tensor], list]:
    """PyHessian's ``hessian(..., data=)`` product: per batch the gradient kept with its graph once,
    then each product a second backward with ``grad_outputs`` = the vector as per-parameter tensors."""
    count = sum(len(targets) for _, targets in batches)
    kept = [torch.autograd.grad(loss.sum(model(inputs), targets) / count, params, create_graph=True)
            for inputs, targets in batches]

    def product(vector: torch.Tensor) -> list:
        pieces = [piece.view_as(p).to(p.dtype) for piece, p in zip(vector.split([p.numel() for p in params]), params)]
        total = None
        for grads in kept:
            part = torch.autograd.grad(grads, params, grad_outputs=pieces, retain_graph=True)
            total = list(part) if total is None else [t + q for t, q in zip(total, part)]
        return total
    return product


def benchmark(name: str, dtype: torch.dtype, repeats: int, samples: int, batch_size: int,
              mlp_batch: int = 256) -> dict:
    """Warm up every case once, then ``repeats`` interleaved rounds; medians, ratios, agreement."""
    model, x, y, batch = build(name, dtype, samples, batch_size, mlp_batch)
    loss = get_loss("cross_entropy")
    ops = {method: HessianOperator(model, loss, (x, y), batch_size=batch, method=method, graph_budget_mb=0)
           for method in HVP_METHODS}
    # the shard's first-order graphs kept between products: each product is one second backward
    ops[KEPT] = HessianOperator(model, loss, (x, y), batch_size=batch, method="double_backward",
                                graph_budget_mb=KEPT_BUDGET_MB)
    reference = ops[HVP_METHODS[0]]
    params = reference.parameters
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
    vector = torch.randn(reference.size, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)

    def plain_gradient() -> None:
        for inputs, targets in batches:
            torch.autograd.grad(loss.sum(model(inputs), targets), params)

    cases: dict[str, Callable[[], object]] = {"loss_and_gradient": reference.loss_and_gradient,
                                              "autograd.grad": plain_gradient}
    cases.update({f"hvp {method}": (lambda op=op: op.apply(vector)) for method, op in ops.items()})
    peer = pyhessian_style(model, loss, batches, params)
    cases[f"hvp {PEER}"] = lambda: peer(vector)

    products: dict[str, torch.Tensor] = {}
    failed: dict[str, str] = {}
    for case, call in list(cases.items()):
        try:
            result = call()
        except Exception as exc:  # a method unsupported for this model is a result, not a crash
            failed[case] = f"{type(exc).__name__}: {exc}"
            del cases[case]
            continue
        if case == f"hvp {PEER}":
            peer_product = torch.cat([t.reshape(-1) for t in result]).to(torch.float64)
        elif case.startswith("hvp "):
            products[case.removeprefix("hvp ")] = result

    times: dict[str, list[float]] = {case: [] for case in cases}
    for _ in range(repeats):
        for case, call in cases.items():
            times[case].append(timed(call))
    medians = {case: statistics.median(values) for case, values in times.items()}

    agreement = None
    if all(method in products for method in HVP_METHODS):
        first, second = (products[method] for method in HVP_METHODS)
        difference = float(torch.linalg.vector_norm(first - second) / torch.linalg.vector_norm(first))
        agreement = {"relative_difference": difference, "tolerance": TOLERANCES[dtype],
                     "ok": difference <= TOLERANCES[dtype]}
    ratios = {baseline: {method: medians[f"hvp {method}"] / medians[baseline]
                         for method in [*ops, PEER] if f"hvp {method}" in medians}
              for baseline in BASELINES}
    if KEPT in products:
        agreement = agreement or {}
        if f"hvp {PEER}" in medians:
            agreement["pyhessian_relative_difference"] = float(torch.linalg.vector_norm(peer_product - products[KEPT])
                                                               / torch.linalg.vector_norm(products[KEPT]))
        agreement["kept_graph_bitwise_equal"] = bool(torch.equal(products[KEPT], products["double_backward"]))
        agreement["kept_graph_mib"] = (ops[KEPT].graph_bytes or 0) / 2**20
    return {"parameters": reference.size, "samples": len(x), "batch_size": batch, "batches": len(batches),
            "median_s": medians, "times_s": times, "ratio_hvp_over_gradient": ratios,
            "agreement": agreement, "failed": failed}


def print_table(name: str, result: dict) -> None:
    print(f"\n{name}: {result['parameters']:,} parameters, {result['samples']} samples, "
          f"batch {result['batch_size']} ({result['batches']} batches)")
    print(f"  {'case':<34}{'median ms':>11}{'/ loss_and_gradient':>21}{'/ autograd.grad':>17}")
    for case, median in result["median_s"].items():
        ratios = [median / result["median_s"][baseline] for baseline in BASELINES]
        print(f"  {case:<34}{1e3 * median:>11.2f}{ratios[0]:>21.2f}{ratios[1]:>17.2f}")
    for case, error in result["failed"].items():
        print(f"  {case:<34}FAILED: {error}")
    agreement = result["agreement"]
    if agreement is not None and "relative_difference" in agreement:
        verdict = "ok" if agreement["ok"] else "MISMATCH"
        print(f"  {' vs '.join(HVP_METHODS)}: relative difference {agreement['relative_difference']:.2e} "
              f"(tolerance {agreement['tolerance']:.0e}, {verdict})")
        if "kept_graph_bitwise_equal" in agreement:
            print(f"  graph kept: {agreement['kept_graph_mib']:.1f} MiB per shard, products bitwise equal to "
                  f"recomputing: {agreement['kept_graph_bitwise_equal']}")
        if "pyhessian_relative_difference" in agreement:
            print(f"  {PEER} vs graph kept: relative difference {agreement['pyhessian_relative_difference']:.2e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds after one warm-up (default 7)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="model compute dtype")
    parser.add_argument("--samples", type=int, default=256, help="ResNet-20 synthetic samples (default 256)")
    parser.add_argument("--batch-size", type=int, default=128, help="ResNet-20 batch size (default 128)")
    parser.add_argument("--mlp-batch", type=int, default=256,
                        help="digits MLP batch size (default 256; 1797: one batch, PyHessian's data= case)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output file (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}: use {', '.join(MODELS)}")
    if args.repeats < 1 or args.samples < 1 or args.batch_size < 1 or args.mlp_batch < 1:
        parser.error("--repeats, --samples and --batch-size must be >= 1")

    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, {args.dtype}, "
          f"{args.repeats} interleaved rounds after one warm-up; medians per call")
    results = {}
    for name in models:
        results[name] = benchmark(name, dtype, args.repeats, args.samples, args.batch_size, args.mlp_batch)
        print_table(name, results[name])

    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
              "threads": torch.get_num_threads(), "dtype": args.dtype, "repeats": args.repeats,
              "models": results}
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0 if all(r["agreement"] is None or (r["agreement"].get("ok", True)
                                                and r["agreement"].get("kept_graph_bitwise_equal", True))
                    for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
