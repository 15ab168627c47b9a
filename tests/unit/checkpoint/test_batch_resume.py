"""Batch data (a data callable returning a DataLoader) through checkpoint and resume, and the record
of ``hessian.hvp = auto``'s choice: results.h5, summary.json, the console line and the checkpoint,
which a resume reuses instead of deciding again."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import batch_data
import h5py
import numpy as np
import pytest
from fakes import StopAfter

import hpcspec.curvature.operator as operator_module
from hpcspec.checkpoint import StopRequested
from hpcspec.commands.run import run_job
from hpcspec.config import load_config
from hpcspec.parallel.agree import AgreedInputError
from hpcspec.parallel.comm import SingleProcess

#: A float64 convolutional model on a DataLoader of 23 images in batches of 5: auto picks
#: forward-over-reverse after one trial product (hpcspec.curvature.method).
SETTINGS = {"model.spec": "batchmod:conv_model", "data.spec": "batchmod:images", "tasks": ["eigen", "trace"],
            "eigen.top_k": 2, "eigen.tol": 1e-10, "eigen.block_size": 2, "eigen.max_basis": 12,
            "trace.matvecs": 12, "hessian.check": False, "train.steps": 3}


@pytest.fixture(scope="module", autouse=True)
def batchmod(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batchmod")
    batch_data.write(folder)
    sys.path.insert(0, str(folder))
    yield
    sys.path.remove(str(folder))
    sys.modules.pop("batchmod", None)


def _cfg(output: Path, **extra):
    return load_config(overrides={**SETTINGS, "output": str(output), "checkpoint.every_iters": 1, **extra})


def _numbers(output: Path) -> dict[str, np.ndarray]:
    with h5py.File(output / "results.h5") as f:
        return {name: f[name][...] for name in ("eigen/values", "eigen/vectors", "trace/samples")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    output = tmp_path_factory.mktemp("reference")
    run_job(_cfg(output, **{"checkpoint.every_iters": 0}), SingleProcess())
    return output


def test_auto_choice_is_recorded_in_results_summary_and_console_line(reference, capsys):
    with h5py.File(reference / "results.h5") as f:
        assert f.attrs["hvp_method"] == "forward_over_reverse"
        assert "convolutions" in f.attrs["hvp_reason"]
        # the training operator decided (one trial); the analysis operator reused its choice
        assert f.attrs["hvp_trial_products"] == 1
        assert f.attrs["num_samples"] == 23
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["hvp_method"] == "forward_over_reverse" and summary["hvp_trial_products"] == 1
    assert "convolutions" in summary["hvp_reason"]
    from hpcspec.results.hdf5 import load_run
    from hpcspec.results.text import console_summary

    stored = load_run(reference / "results.h5")
    first = console_summary(stored.results, stored.layout, stored.info).splitlines()[0]
    assert first.endswith(f"forward_over_reverse (auto: {summary['hvp_reason']}; 1 trial product)")


def test_a_named_method_records_no_trial(tmp_path):
    run_job(_cfg(tmp_path, **{"hessian.hvp": "double_backward", "checkpoint.every_iters": 0}), SingleProcess())
    with h5py.File(tmp_path / "results.h5") as f:
        assert (f.attrs["hvp_method"], f.attrs["hvp_reason"], f.attrs["hvp_trial_products"]) == ("double_backward",
                                                                                               "named", 0)


def test_stopped_batch_run_resumes_bitwise_with_the_recorded_method(tmp_path, reference, monkeypatch, caplog):
    with pytest.raises(StopRequested) as stopped:
        run_job(_cfg(tmp_path), SingleProcess(), flag=StopAfter(7))
    meta = json.loads((stopped.value.commit.path / "manifest.json").read_text())["meta"]
    assert meta["hvp_method"] == "forward_over_reverse" and meta["hvp_trial_products"] == 1
    # a resume must not decide again: a rule that now says double backward is not consulted
    monkeypatch.setattr(operator_module, "rule", lambda model, dtype: ("double_backward", "changed rule"))
    caplog.set_level("INFO")
    caplog.clear()  # the stopped run's own "hvp auto:" line, when an earlier test left INFO on
    run_job(_cfg(tmp_path), SingleProcess(), resume=True)
    assert not [r for r in caplog.records if r.getMessage().startswith("hvp auto:")]
    expected, found = _numbers(reference), _numbers(tmp_path)
    for name in expected:
        assert np.array_equal(expected[name], found[name]), name
    with h5py.File(tmp_path / "results.h5") as f:
        assert (f.attrs["hvp_method"], f.attrs["hvp_trial_products"]) == ("forward_over_reverse", 1)
        assert "convolutions" in f.attrs["hvp_reason"]


def test_resume_refuses_the_same_samples_in_other_batches(tmp_path, monkeypatch):
    other = {"data.spec": "batchmod:loader_env", "model.spec": "batchmod:make_model"}
    with pytest.raises(StopRequested):
        run_job(_cfg(tmp_path, **other), SingleProcess(), flag=StopAfter(3))
    monkeypatch.setenv("BATCHMOD_BATCH", "5")  # the same config and samples, batched otherwise
    with pytest.raises(AgreedInputError, match=r"the data comes in \d+ batches there, \d+ here"):
        run_job(_cfg(tmp_path, **other), SingleProcess(), resume=True)
