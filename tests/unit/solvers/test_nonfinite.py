"""A product holding NaN or inf, at any product of any solver, stops it with one line naming the
product (an InputError on every rank), never numpy's LinAlgError from deep in the eigensolver."""

from __future__ import annotations

import math

import pytest
import torch

import hpcspec
from hpcspec.parallel.finite import NonFiniteProduct


class TurnsNonFinite(hpcspec.MatrixOperator):
    """A well-conditioned matrix whose products turn NaN (or inf) from product ``at`` on."""

    def __init__(self, at: int, value: float = math.nan, n: int = 40) -> None:
        gen = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        super().__init__((q * torch.linspace(-1, 3, n, dtype=torch.float64)) @ q.T)
        self.at, self.value = at, value

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        before = self.num_matvecs
        result = super().apply(vectors)
        if self.num_matvecs >= self.at:
            result = result.clone()
            result.reshape(self.size, -1)[self.size // 2, max(self.at - before - 1, 0)] = self.value
        return result


SOLVERS = {
    "block_lanczos": lambda op: hpcspec.block_lanczos(op, 3, tol=1e-10),
    "lanczos": lambda op: hpcspec.lanczos(op, 3, tol=1e-10),
    "power_iteration": lambda op: hpcspec.power_iteration(op, 2, tol=1e-6),
    "slq": lambda op: hpcspec.slq(op, probes=3, steps=12),
    **{f"trace {method}": (lambda op, m=method: hpcspec.trace(op, method=m, matvecs=30))
       for method in ("hutchinson", "hutchpp", "xtrace", "krylov")},
}


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("at", [1, 2, 7, 19])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_product_is_one_line_naming_it(name, at, value):
    op = TurnsNonFinite(at, value)
    with pytest.raises(hpcspec.InputError, match=r"products? (\d+)(–\d+ \(one block\))? (is|are) not finite") as raised:
        SOLVERS[name](op)
    message = str(raised.value)
    assert isinstance(raised.value, NonFiniteProduct) and "\n" not in message
    numbers = [int(n) for n in message.split("product", 1)[1].split(" is ")[0].split(" are ")[0].strip("s ").split(" (")[0].split("–")]
    assert numbers[0] <= at <= numbers[-1], message
    assert "check = false" not in message and "check=false" not in message


def model_and_data() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    return model, (torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_weights_in_the_library_name_the_parameter(value):
    model, data = model_and_data()
    with torch.no_grad():
        model[2].weight[0, 0] = value
    with pytest.raises(hpcspec.InputError, match=r"parameter '2.weight' holds 1 NaN or infinite value\(s\) of 8"):
        hpcspec.HessianOperator(model, "cross_entropy", data)


def test_weights_turned_nan_after_the_operator_was_built_name_the_first_product():
    model, data = model_and_data()
    op = hpcspec.HessianOperator(model, "cross_entropy", data, method="double_backward")
    with torch.no_grad():
        model[2].weight[0, 0] = math.nan
    with pytest.raises(NonFiniteProduct, match=r"Hessian-vector products 1–4 \(one block\) are not finite"):
        hpcspec.block_lanczos(op, 2, block_size=4)
    with pytest.raises(NonFiniteProduct, match=r"Hessian-vector product 5 is not finite"):
        hpcspec.lanczos(op, 2)
