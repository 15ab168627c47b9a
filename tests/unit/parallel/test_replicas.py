"""Fingerprints tell any changed bit of any parameter or buffer, of any dtype and layout; the words
name the first tensor that differs (the collective use is in tests/mpi/test_replicas_mpi.py)."""

from __future__ import annotations

import pytest
import torch

from hpcspec.parallel.comm import SingleProcess
from hpcspec.parallel.replicas import check_replicated, first_difference, fingerprints


def model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 2)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_every_bit_of_every_tensor_counts(dtype):
    reference = fingerprints(model(dtype))
    assert first_difference(fingerprints(model(dtype)), reference) is None
    for kind, name, *_ in reference:
        changed = model(dtype)
        tensor = dict(changed.named_parameters() if kind == "parameter" else changed.named_buffers())[name]
        with torch.no_grad():
            flat = tensor.view(-1)
            bits = flat[-1:].view(torch.uint8 if tensor.element_size() == 1 else torch.int16 if
                                  tensor.element_size() == 2 else torch.int32 if tensor.element_size() == 4 else
                                  torch.int64)
            bits ^= 1  # the lowest bit of the last entry
        problem = first_difference(fingerprints(changed), reference)
        assert problem is not None and f"{kind} {name!r} is not rank 0's" in problem, (name, problem)


def test_a_transposed_view_is_fingerprinted_by_its_values():
    a, b = model(torch.float64), model(torch.float64)
    with torch.no_grad():
        b[0].weight.data = b[0].weight.data.t().contiguous().t()  # same values, other strides
    assert first_difference(fingerprints(b), fingerprints(a)) is None


def test_shapes_and_structure_are_named():
    wide = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 2)).double()
    problem = first_difference(fingerprints(wide), fingerprints(model(torch.float64)))
    assert "parameter '0.weight' is float64 [6, 3] here and float64 [5, 3] on rank 0" in problem
    shorter = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5)).double()
    assert "differs between ranks" in first_difference(fingerprints(shorter), fingerprints(model(torch.float64)))


def test_one_rank_checks_nothing():
    check_replicated(model(torch.float64), SingleProcess())
