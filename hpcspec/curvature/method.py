"""Which Hessian-vector product ``method="auto"`` uses: a fixed rule, not a timing.

A timed choice flipped between runs on a loaded machine (the products then differ in their last
bits from run to run) and its trial products were counted nowhere. The rule follows the measured
costs in docs/performance.md ("The HVP methods", ``benchmarks/hvp_cost.py``): double backward is
faster on the digits MLP in float32 and float64 and on ResNet-20 in float32, and it alone can keep
the first-order graphs between products; forward-over-reverse is faster only for the convolutional
ResNet-20 in float64 (4.59 against 6.36 gradients per product). In bfloat16 double backward is
faster too (a ResNet-20 of width 4 on 512 digits, one CPU thread: 83 against 186 ms per product;
a one-off measurement, not a benchmark). So ``auto`` is double backward,
except forward-over-reverse for a float64 model with convolutions — provided one trial product
shows the model supports forward mode (a custom ``autograd.Function`` may not). The same model,
dtype and settings give the same method on every run and every rank count.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

#: What ``auto`` uses unless :func:`rule` says otherwise (and when forward mode fails).
DEFAULT_HVP_METHOD = "double_backward"


def rule(model: nn.Module, dtype: torch.dtype) -> tuple[str, str]:
    """``(method, reason)`` the rule picks for ``model`` computing in ``dtype`` (before the trial)."""
    convolutional = any(isinstance(module, _ConvNd) for module in model.modules())
    if dtype == torch.float64 and convolutional:
        return "forward_over_reverse", "float64 with convolutions (faster than double backward there)"
    why = "no convolutions" if not convolutional else str(dtype).replace("torch.", "")
    return DEFAULT_HVP_METHOD, f"{why} (faster than forward-over-reverse there)"
