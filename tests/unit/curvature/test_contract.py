"""The curvature contract: a new matrix supplies one batch product and gets everything else; the
solvers read an operator's attributes without probing; InputError is a ValueError."""

import numpy as np
import pytest
import torch

from helpers import classification_data, dense_hessian, mlp
from hpcspec import HessianOperator, InputError, MatrixOperator, block_lanczos, lanczos
from hpcspec.curvature.base import BatchCurvature, BatchProducts, CurvatureOperator
from hpcspec.parallel.comm import SingleProcess
from hpcspec.parallel.vectors import make_space
from hpcspec.problem.batches import call_model
from hpcspec.problem.losses import get_loss
from hpcspec.problem.params import ParamLayout
from hpcspec.solvers.operator import ForeignOperator, LinearOperator, as_operator


class OuterProductOfGradients(BatchCurvature):
    """Σ_b g_b g_bᵀ / C over batches b (g_b: the batch's summed-loss gradient): a matrix defined in
    a dozen lines, to show what the contract leaves to a subclass."""

    def __init__(self, model, loss, data, batch_size):
        layout = ParamLayout.of(model)
        comm = SingleProcess()
        super().__init__(layout.size, comm, make_space(comm, layout.size, False))
        self.model, self.layout, self.loss, self.output_fn = model, layout, get_loss(loss), lambda out: out
        named = dict(model.named_parameters())
        self._params = [named[name] for name in layout.names]
        self._take_data(data, batch_size, "labels")

    def _batch_products(self, inputs, targets, tangents) -> BatchProducts:
        loss = self.loss.sum(call_model(self.model, inputs), targets)
        grads = torch.autograd.grad(loss, self._params)
        g = torch.cat([part.reshape(-1) for part in grads])
        return [self.layout.split(g * torch.dot(g, torch.cat([t.reshape(-1) for t in tangent])))
                for tangent in tangents]


def _batch_gradients(model, x, y, batch_size):
    rows = []
    for lo in range(0, len(y), batch_size):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[lo:lo + batch_size]), y[lo:lo + batch_size], reduction="sum").backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
    return torch.stack(rows)


def test_a_new_matrix_supplies_one_batch_product():
    model, (x, y) = mlp(), classification_data()
    op = OuterProductOfGradients(model, "cross_entropy", (x, y), batch_size=10)
    g = _batch_gradients(model, x, y, 10)
    dense = g.T @ g / len(y)
    vectors = torch.randn(op.size, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(op.apply(vectors), dense @ vectors, rtol=1e-12, atol=1e-14)
    rows = op.apply_sharded(vectors, [(0, op.size)])  # the contract's reduce-scatter path
    assert torch.equal(rows, op.apply(vectors))
    assert op.num_matvecs == 9 and op.total_count == len(y) and op.checks_products
    loss, gradient = op.loss_and_gradient()  # the contract's mean loss and gradient
    with torch.no_grad():
        expected = float(torch.nn.functional.cross_entropy(model(x), y))
    assert loss == pytest.approx(expected, rel=1e-13)
    assert torch.allclose(gradient, g.sum(dim=0) / len(y), rtol=1e-12, atol=1e-15)
    top = lanczos(op, 2, tol=1e-10)  # every solver runs on it unchanged
    assert np.allclose(top.eigenvalues, np.linalg.eigvalsh(dense.numpy())[::-1][:2], rtol=1e-9)


def test_the_hessian_is_a_curvature_operator_of_the_contract():
    model, (x, y) = mlp(), classification_data()
    op = HessianOperator(model, "cross_entropy", (x, y), batch_size=10)
    assert isinstance(op, CurvatureOperator) and isinstance(op, LinearOperator)
    vectors = torch.randn(op.size, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    dense = dense_hessian(model, "cross_entropy", x, y)
    assert torch.allclose(op.apply(vectors), dense @ vectors, rtol=1e-10, atol=1e-13)


class Duck:
    """A user's operator: only size, comm and apply."""

    def __init__(self, matrix):
        self.matrix, self.size, self.comm = matrix, matrix.shape[0], SingleProcess()

    def apply(self, vectors):
        return self.matrix @ vectors


def test_a_users_operator_is_wrapped_once_with_the_contracts_defaults():
    q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    matrix = (q * torch.linspace(-1, 5, 30, dtype=torch.float64)) @ q.T
    wrapped = as_operator(Duck(matrix))
    assert isinstance(wrapped, ForeignOperator) and not wrapped.checks_products
    assert wrapped.compute_dtype is None and wrapped.device.type == "cpu" and wrapped.space.sharded is False
    matrix_op = MatrixOperator(matrix)
    assert as_operator(matrix_op) is matrix_op
    found = block_lanczos(Duck(matrix), 3, tol=1e-10)
    assert np.allclose(found.eigenvalues, [5.0, 5 - 6 / 29, 5 - 12 / 29], rtol=1e-9)


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)
    with pytest.raises(ValueError, match="batch_size"):
        HessianOperator(mlp(), "cross_entropy", classification_data(), batch_size=0)
