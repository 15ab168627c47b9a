"""The Python steps of ``benchmarks/gpu_check.sh`` (one device, no internet).

``hv``: H·v of the default job's digits MLP (3,466 parameters, untrained, float64) on the device
against the CPU float64 product of the same operator and vector: the max relative difference
max|Hv_dev − Hv_cpu| / max|Hv_cpu| (float64 on both sides, so it should sit near 1e-15).

``ratio``: HVP ÷ gradient of ResNet-20 (the zoo's, width 16, on seeded 3×32×32 inputs, one
batch of ``--batch``) on the device with the shard's first-order graph kept, in float32, bfloat16
and float64: the median over ``--repeats`` of one product against one gradient. bfloat16 converts
the model and data itself (the CLI may not offer it yet) and is skipped with a message if it fails.

    PYTHONPATH=. python benchmarks/gpu_check.py hv|ratio [--device cuda] [--batch 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def device_of(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                        "cpu" if name == "auto" else name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hv(device: torch.device) -> None:
    from hpcspec.config import ModelConfig
    from hpcspec.curvature.operator import HessianOperator
    from hpcspec.problem.data import load_shard
    from hpcspec.problem.models import build_model

    shard = load_shard("digits", 0, 1)
    model = build_model("mlp", input_shape=(1, 8, 8), output_dim=10,
                        cfg_model=ModelConfig(hidden=(32, 32), activation="tanh"), seed=0).to(torch.float64)
    reference = HessianOperator(model, "cross_entropy", shard, batch_size=256, method="double_backward")
    v = torch.randn(reference.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = reference.apply(v)
    moved = HessianOperator(model.to(device), "cross_entropy", shard, batch_size=256, method="double_backward")
    got = moved.apply(v).cpu()
    rel = float((got - want).abs().max() / want.abs().max())
    print(f"H·v {device} vs cpu, float64, digits MLP ({reference.size:,} parameters): "
          f"max relative difference {rel:.3e}")


def ratio(device: torch.device, batch: int, repeats: int) -> None:
    from hpcspec.curvature.operator import HessianOperator
    from hpcspec.problem.models.resnet import ResNet

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        name = str(dtype).removeprefix("torch.")
        try:
            torch.manual_seed(0)
            model = ResNet(3, in_channels=3, num_classes=10).to(device, dtype).eval()
            op = HessianOperator(model, "cross_entropy", (x.to(dtype), y), batch_size=batch,
                                 method="double_backward", graph_budget_mb=16384)
            v = torch.randn(op.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            op.apply(v), op.loss_and_gradient()  # graph build and warm-up
            hvp, grad = [], []
            for _ in range(repeats):
                for times, call in ((hvp, lambda: op.apply(v)), (grad, op.loss_and_gradient)):
                    sync(device)
                    started = time.perf_counter()
                    call()
                    sync(device)
                    times.append(time.perf_counter() - started)
            h, g = statistics.median(hvp), statistics.median(grad)
            print(f"HVP / gradient, ResNet-20, batch {batch}, {name}, kept graph, {device}: {h / g:.2f} "
                  f"(HVP {1e3 * h:.1f} ms, gradient {1e3 * g:.1f} ms, median of {repeats})")
        except Exception as exc:  # bfloat16 may not be supported by every layer or device
            print(f"HVP / gradient, ResNet-20, batch {batch}, {name}, {device}: skipped ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:200] if str(exc) else ''})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("hv", "ratio"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = device_of(args.device)
    if args.step == "hv":
        hv(device)
    else:
        ratio(device, args.batch, args.repeats)


if __name__ == "__main__":
    main()
