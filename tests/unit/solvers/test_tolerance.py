"""A tolerance too loose to certify an eigenvalue is refused by every public eigen solver, as
``eigen.tol`` is on the command line; the labels never claim more than was checked."""

from __future__ import annotations

import math

import pytest
import torch

import hpcspec
from hpcspec.choices import MAX_TOL
from hpcspec.errors import InputError
from hpcspec.solvers.block_check import guarantee

LOOSE = [1e300, math.inf, 0.5, 0.1, MAX_TOL * 1.0001, -1e-12, math.nan]
SOLVERS = {
    "block_lanczos": lambda op, tol: hpcspec.block_lanczos(op, 2, tol=tol),
    "lanczos": lambda op, tol: hpcspec.lanczos(op, 2, tol=tol),
    "power_iteration": lambda op, tol: hpcspec.power_iteration(op, 1, tol=tol),
}


def diagonal(n: int = 30) -> hpcspec.MatrixOperator:
    return hpcspec.MatrixOperator(torch.diag(torch.linspace(1.0, 2.0, n, dtype=torch.float64)))


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("tol", LOOSE)
def test_a_loose_tolerance_is_refused_as_both_input_and_value_error(name, tol):
    with pytest.raises(InputError, match=r"outside \[0, 0.02\]") as raised:
        SOLVERS[name](diagonal(), tol)
    assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value)


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("tol", [MAX_TOL, 1e-3, 1e-12])
def test_tolerances_that_certify_are_accepted_and_give_the_top_eigenvalue(name, tol):
    result = SOLVERS[name](diagonal(), tol)
    if name == "power_iteration":  # PyHessian's relative-change rule bounds no error: accepted, for parity
        return
    # every reported value lies within tol · max|λ| of the true top one (a Ritz-residual bound)
    assert abs(float(result.eigenvalues[0]) - 2.0) <= max(tol, 1e-10) * 2.0 + 1e-6


def test_an_unfinished_check_never_reads_as_not_run_or_complete():
    assert "NOT checked" in guarantee(4, 0, complete=False)
    unfinished = guarantee(4, 55, complete=False)
    assert "NOT established" in unfinished and "55 check" in unfinished and "NOT checked" not in unfinished
    assert "NOT" not in guarantee(4, 2, complete=True)


@pytest.mark.parametrize("tol", [1e300, 0.5, MAX_TOL * 1.0001, -1e-12])
def test_the_config_refuses_what_the_library_refuses(tol):
    from dataclasses import replace

    from hpcspec.config import Config, ConfigError, validate
    cfg = Config()
    with pytest.raises(ConfigError, match=r"eigen.tol = .* is outside \[0, 0.02\]: .* certifies nothing"):
        validate(replace(cfg, eigen=replace(cfg.eigen, tol=tol)))
    validate(replace(cfg, eigen=replace(cfg.eigen, tol=MAX_TOL)))
