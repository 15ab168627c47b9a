"""What the safety checks added against hostile inputs cost, measured side by side.

- the weights check (:func:`hpcspec.parallel.replicas.fingerprints`: a CRC-32 of every parameter
  and buffer, once per operator) against one Hessian-vector product of the same model;
- the per-product finiteness check (:func:`hpcspec.parallel.finite.check_product`: one
  ``isfinite`` pass over the partial product, plus one flag allreduce on several ranks) as a share
  of a product: products timed with the check and with it replaced by a no-op, interleaved.

    PYTHONPATH=. python benchmarks/input_checks.py [--widths 256,1024,2048] [--samples 2048] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import hpcspec.curvature.operator as operator_module
from hpcspec import HessianOperator
from hpcspec.parallel.replicas import fingerprints


def _median_seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="256,1024,2048")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{'params':>10} {'fingerprint s':>14} {'checked product s':>18} {'unchecked s':>12} "
          f"{'check share':>12}")
    for width in (int(w) for w in args.widths.split(",")):
        model = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                                    torch.nn.Tanh(), torch.nn.Linear(width, 10)).double()
        x, y = torch.randn(args.samples, 64, dtype=torch.float64), torch.randint(0, 10, (args.samples,))
        op = HessianOperator(model, "cross_entropy", (x, y), batch_size=512, method="double_backward")
        v = torch.randn(op.size, dtype=torch.float64)
        fingerprint = _median_seconds(lambda: fingerprints(model), args.repeats)
        real = operator_module.check_product
        checked, unchecked = [], []
        for _ in range(args.repeats):  # interleaved: the machine's drift hits both alike
            operator_module.check_product = real
            checked.append(_median_seconds(lambda: op.apply(v), 1))
            operator_module.check_product = lambda *a, **k: None
            unchecked.append(_median_seconds(lambda: op.apply(v), 1))
        operator_module.check_product = real
        with_check, without = statistics.median(checked), statistics.median(unchecked)
        print(f"{op.size:>10,} {fingerprint:>14.4f} {with_check:>18.4f} {without:>12.4f} "
              f"{with_check / without - 1:>+11.1%}")


if __name__ == "__main__":
    main()
