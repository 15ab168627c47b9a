"""A Hugging Face GPT-2 and torchvision's ResNet-18 through the CLI's ``module:callable``
(``tests/support/zoo_models.py``): top-k and trace on 2 ranks equal 1 rank, and the top
eigenvalues equal the exact Hessian's. Skipped where transformers or torchvision is absent or
does not import (``pip install 'hpcspec[models]'``)."""

import shutil

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import zoo_models
from helpers import mpirun, relative_error, top_eigenvalues
from hpcspec.cli import main

CASES = {
    # model, data, params, extra flags, which import must work
    "gpt2": ("make_gpt2", "make_lm_data", zoo_models.GPT2_PARAMS, ["--trace-matvecs", "40"],
             ("transformers", "GPT2LMHeadModel")),
    "resnet18": ("make_resnet18", "make_image_data", zoo_models.RESNET_PARAMS,
                 ["--hvp", "double_backward", "--trace-matvecs", "40"], ("torchvision.models", "resnet18")),
}


def _exact(name: str) -> torch.Tensor:
    model_fn, data_fn, params, _, _ = CASES[name]
    model = zoo_models.select(getattr(zoo_models, model_fn)(), params)
    x, y = getattr(zoo_models, data_fn)()
    if name == "gpt2":  # tokens and next tokens: the plain cross-entropy of the logits
        return zoo_models.exact_hessian(model, lambda: nn.functional.cross_entropy(
            model(input_ids=x).logits.reshape(-1, zoo_models.VOCAB), y.reshape(-1)))
    return zoo_models.image_hessian(model, x, y)


def _results(path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {"values": f["eigen/values"][:], "trace": np.array([f["trace"].attrs["estimate"]]),
                "stderr": np.array([f["trace"].attrs["stderr"]]), "ranks": np.array([f.attrs["world_size"]])}


@pytest.mark.mpi
@pytest.mark.parametrize("name", list(CASES))
def test_module_callable_two_ranks_equal_one_and_dense(tmp_path, monkeypatch, name):
    model_fn, data_fn, params, extra, needed = CASES[name]
    zoo_models.import_or_skip(*needed)
    shutil.copy(zoo_models.__file__, tmp_path / "zoo_models.py")
    monkeypatch.chdir(tmp_path)
    args = ["run", "--model", f"zoo_models:{model_fn}", "--data", f"zoo_models:{data_fn}", "--top-k", "3", "--trace",
            "--batch-size", "3", "--set", f"model.params='{params}'", "--set", "density.plot=false", *extra]
    assert main([*args, "--output", "one"]) == 0  # one rank, in this process
    done = mpirun(2, ["-m", "hpcspec", *args, "--output", "two"], tmp_path, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, two = _results(tmp_path / "one" / "results.h5"), _results(tmp_path / "two" / "results.h5")
    assert one["ranks"][0] == 1 and two["ranks"][0] == 2
    assert relative_error(two["values"], one["values"]) <= 1e-10
    assert relative_error(two["trace"], one["trace"]) <= 1e-10
    matrix = _exact(name)
    assert relative_error(one["values"], top_eigenvalues(matrix, 3)) <= 1e-9
    exact_trace = float(matrix.trace())
    assert abs(one["trace"][0] - exact_trace) <= max(4 * one["stderr"][0], 1e-9 * abs(exact_trace))
