"""The library refuses what the CLI refuses, as an InputError naming the problem: NaN or inf
anywhere in the data (any position, inputs or targets, tensor pairs or batches of any form), a
criterion returning anything but a floating-point scalar tensor, a float16 model."""

from __future__ import annotations

import math

import pytest
import torch

import hpcspec
from hpcspec.errors import InputError


def model(dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(dtype)


def data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=gen, dtype=torch.float64), torch.randn(n, 2, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("part", ["inputs", "targets"])
@pytest.mark.parametrize("row", [0, 13, 23])
def test_non_finite_data_is_named_before_any_product(value, part, row):
    x, y = data()
    (x if part == "inputs" else y)[row, 1] = value
    batch = row // 8
    with pytest.raises(InputError, match=rf"the data holds NaN or infinite values: {part} of batch {batch}"):
        hpcspec.HessianOperator(model(), "mse", (x, y), batch_size=8)
    with pytest.raises(InputError, match="NaN or infinite"):
        hpcspec.hessian(model(), torch.nn.MSELoss(), data=(x, y)).eigenvalues(top_n=1)
    loader = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)]
    with pytest.raises(InputError, match=rf"{part} of batch {batch}"):
        hpcspec.HessianOperator(model(), "mse", loader)


def test_non_finite_in_a_dict_batch_names_the_key():
    x, y = data()
    x[5, 0] = math.nan

    class Keyed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model()

        def forward(self, features, scale):
            return self.net(features * scale)

    batches = [{"features": x[:12], "scale": torch.ones(12, 1, dtype=torch.float64), "labels": y[:12]}]
    with pytest.raises(InputError, match=r"inputs\['features'\] of batch 0"):
        hpcspec.HessianOperator(Keyed(), "mse", batches)


def test_inputs_that_overflow_the_compute_dtype_are_named():
    x, y = data()
    x[3, 2] = 1e39  # finite in float64, inf once cast to the float32 model's dtype
    with pytest.raises(InputError, match="inputs of batch 0"):
        hpcspec.HessianOperator(model(torch.float32), "mse", (x, y))


@pytest.mark.parametrize("criterion, words", [
    (lambda out, target: 3, "returned a int, not a tensor"),
    (lambda out, target: float(((out - target) ** 2).mean()), "returned a float, not a tensor"),
    (lambda out, target: ((out - target) ** 2).mean(dim=1), r"returned a tensor of shape \(\d+,\), not a scalar"),
    (lambda out, target: ((out - target) ** 2), r"shape \(\d+, 2\), not a scalar"),
    (lambda out, target: (out > target).sum(), "returned a int64 tensor"),
])
def test_a_criterion_must_return_a_floating_scalar(criterion, words):
    op = hpcspec.HessianOperator(model(), criterion, data(), batch_size=8, method="double_backward")
    with pytest.raises(InputError, match=words):
        hpcspec.lanczos(op, 1)
    with pytest.raises(InputError, match=words):
        hpcspec.hessian(model(), criterion, data=data()).eigenvalues(top_n=1)


def test_a_float16_model_is_refused_as_the_cli_refuses_it():
    with pytest.raises(InputError, match="float16 parameters, which hpcspec refuses: float16's range"):
        hpcspec.HessianOperator(model(torch.float16), "mse", data())
    with pytest.raises(InputError, match="float16"):
        hpcspec.hessian(model(torch.float16), torch.nn.MSELoss(), data=data())
    hpcspec.HessianOperator(model(torch.bfloat16), "mse", data())  # bfloat16 is accepted by both
