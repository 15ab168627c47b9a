"""Checkpoint/restart in one process: commit, stop, resume bitwise, damaged checkpoints, identity checks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fakes import StopAfter

from hpcspec.checkpoint import Checkpointer, CheckpointStore, StopRequested
from hpcspec.cli import main
from hpcspec.commands.run import run_job
from hpcspec.config import load_config
from hpcspec.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_STOPPED
from hpcspec.parallel.agree import AgreedInputError
from hpcspec.parallel.comm import SingleProcess

#: A run of all three tasks, about 70 iterations in all, on a model small enough for a fast test.
SETTINGS = {"model.hidden": [6], "data.spec": "synthetic", "data.samples": 120, "data.features": 5,
            "data.classes": 3, "tasks": ["eigen", "trace", "density"], "eigen.top_k": 3, "eigen.tol": 1e-10,
            "eigen.block_size": 2, "eigen.max_basis": 10,
            "trace.matvecs": 24, "density.probes": 3, "density.steps": 15, "hessian.hvp": "double_backward",
            "hessian.check": False, "density.plot": False, "train.steps": 5}


def _cfg(output: Path, **extra):
    return load_config(overrides={**SETTINGS, "output": str(output), "checkpoint.every_iters": 1, **extra})


def _numbers(output: Path) -> dict[str, np.ndarray]:
    with h5py.File(output / "results.h5") as f:
        return {name: f[name][...] for name in ("eigen/values", "eigen/alpha", "eigen/beta", "eigen/vectors",
                                                "trace/samples", "lanczos/alpha", "lanczos/beta", "density/values")}


def _assert_bitwise(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for name in a:
        assert a[name].shape == b[name].shape, name
        assert np.array_equal(a[name], b[name]), f"{name} differs: max |Δ| {np.max(np.abs(a[name] - b[name]))}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    output = tmp_path_factory.mktemp("reference")
    run_job(_cfg(output, **{"checkpoint.every_iters": 0}), SingleProcess())
    assert not list((output / "checkpoints").glob("step-*"))
    return _numbers(output)


def _stopped_run(output: Path, boundaries: int) -> StopRequested:
    with pytest.raises(StopRequested) as stopped:
        run_job(_cfg(output), SingleProcess(), flag=StopAfter(boundaries))
    return stopped.value


@pytest.mark.parametrize("boundaries", [1, 17, 40, 61])
def test_stop_then_resume_is_bitwise_the_uninterrupted_run(tmp_path, reference, boundaries):
    stopped = _stopped_run(tmp_path, boundaries)
    assert stopped.commit.path.name == f"step-{boundaries:08d}"
    assert (tmp_path / "checkpoints" / "LATEST").read_text().strip() == stopped.commit.path.name
    assert len(list((tmp_path / "checkpoints").glob("step-*"))) == min(boundaries, 2)  # keep = 2
    assert not (tmp_path / "results.h5").exists()
    run_job(_cfg(tmp_path), SingleProcess(), resume=True)
    _assert_bitwise(reference, _numbers(tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["COMPLETE"]


def test_repeated_stops_then_resume_is_bitwise(tmp_path, reference):
    for boundaries in (9, 3, 25):  # counted from each resumption
        with pytest.raises(StopRequested):
            run_job(_cfg(tmp_path), SingleProcess(), resume=True, flag=StopAfter(boundaries))
    run_job(_cfg(tmp_path), SingleProcess(), resume=True)
    _assert_bitwise(reference, _numbers(tmp_path))
    with h5py.File(tmp_path / "results.h5") as f:
        assert f.attrs["resumed_from"].endswith("step-00000037")


def _flip_byte(path: Path, offset_fraction: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_fraction)] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated rank file": lambda step: os.truncate(step / "rank-00000.h5", (step / "rank-00000.h5").stat().st_size // 2),
    "flipped byte in rank file": lambda step: _flip_byte(step / "rank-00000.h5"),
    "missing rank file": lambda step: (step / "rank-00000.h5").unlink(),
    "missing manifest": lambda step: (step / "manifest.json").unlink(),
    "flipped byte in manifest": lambda step: _flip_byte(step / "manifest.json", 0.3),
    "empty manifest": lambda step: (step / "manifest.json").write_text(""),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, reference, damage, caplog):
    _stopped_run(tmp_path, 30)
    newest = tmp_path / "checkpoints" / "step-00000030"
    DAMAGE[damage](newest)
    run_job(_cfg(tmp_path), SingleProcess(), resume=True)
    _assert_bitwise(reference, _numbers(tmp_path))
    with h5py.File(tmp_path / "results.h5") as f:
        assert f.attrs["resumed_from"].endswith("step-00000029")
    assert (tmp_path / "checkpoints" / "step-00000030.damaged").is_dir()  # kept for inspection


def test_resume_under_other_library_versions_warns(tmp_path, reference, monkeypatch, capsys):
    _stopped_run(tmp_path, 10)
    from hpcspec.commands import resume
    from hpcspec.parallel.logs import setup_logging

    setup_logging(SingleProcess())  # a library user asks for the progress lines (the CLI does it in main)
    real = resume.versions
    monkeypatch.setattr(resume, "versions", lambda comm: {**real(comm), "torch": "0.0.1"})
    run_job(_cfg(tmp_path), SingleProcess(), resume=True)
    assert "other library versions (torch " in capsys.readouterr().err
    _assert_bitwise(reference, _numbers(tmp_path))  # the version strings differ, the libraries do not


def test_stale_temporary_and_bad_latest_pointer(tmp_path, reference):
    _stopped_run(tmp_path, 12)
    checkpoints = tmp_path / "checkpoints"
    half = checkpoints / "step-00000013.tmp"  # a write killed half-way
    shutil.copytree(checkpoints / "step-00000012", half)
    (half / "manifest.json").unlink()
    (checkpoints / "LATEST.tmp").write_text("step-00000013\n")
    (checkpoints / "LATEST").write_text("step-00000999\n")  # points nowhere: the newest committed is used
    run_job(_cfg(tmp_path), SingleProcess(), resume=True)
    assert not half.exists() and not (checkpoints / "LATEST.tmp").exists()
    _assert_bitwise(reference, _numbers(tmp_path))
    with h5py.File(tmp_path / "results.h5") as f:
        assert f.attrs["resumed_from"].endswith("step-00000012")


def test_every_checkpoint_damaged_starts_over_with_the_same_answer(tmp_path, reference):
    _stopped_run(tmp_path, 5)
    for step in (tmp_path / "checkpoints").glob("step-*"):
        _flip_byte(step / "rank-00000.h5")
    run_job(_cfg(tmp_path), SingleProcess(), resume=True)
    _assert_bitwise(reference, _numbers(tmp_path))


@pytest.mark.parametrize("change, message", [
    ({"eigen.top_k": 4}, "eigen.top_k: 3 there, 4 here"),
    ({"data.samples": 121}, "data.samples: 120 there, 121 here"),
    ({"model.hidden": [7]}, "model.hidden: [6] there, [7] here"),
    ({"seed": 1}, "seed: 0 there, 1 here"),
    ({"hessian.dtype": "bfloat16"}, "hessian.dtype: "),
])
def test_resume_refuses_another_config_or_data(tmp_path, change, message, capsys):
    _stopped_run(tmp_path, 8)
    args = ["run", "--output", str(tmp_path), "--resume"]
    for key, value in {**SETTINGS, "checkpoint.every_iters": 1, **change}.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hpcspec: error: checkpoint") and "is of another run" in err and message in err
    assert (tmp_path / "checkpoints" / "step-00000008").is_dir()  # nothing lost


def test_resume_refuses_other_weights(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    from hpcspec.config import ModelConfig
    from hpcspec.problem.models import build_model

    model = build_model("mlp", input_shape=(5,), output_dim=3, cfg_model=ModelConfig(hidden=(6,), activation="tanh"),
                        seed=0)
    torch.save(model.state_dict(), weights)
    with pytest.raises(StopRequested):
        run_job(_cfg(tmp_path / "out", **{"model.weights": str(weights)}), SingleProcess(), flag=StopAfter(4))
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-3
    torch.save(model.state_dict(), weights)
    with pytest.raises(AgreedInputError, match="the model.s weights or buffers differ"):
        run_job(_cfg(tmp_path / "out", **{"model.weights": str(weights)}), SingleProcess(), resume=True)


def test_fresh_run_refuses_to_overwrite_an_unfinished_one(tmp_path):
    _stopped_run(tmp_path, 6)
    with pytest.raises(AgreedInputError, match="holds checkpoints of an unfinished run .*add --resume"):
        run_job(_cfg(tmp_path), SingleProcess())
    assert (tmp_path / "checkpoints" / "step-00000006").is_dir()


def test_cli_exit_codes_and_resume_subcommand(tmp_path, reference, capsys, monkeypatch):
    args = ["run", "--output", str(tmp_path)]
    for key, value in {**SETTINGS, "checkpoint.every_iters": 1}.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    monkeypatch.setattr("hpcspec.cli.StopFlag", lambda: StopAfter(20))
    assert main(args) == EXIT_STOPPED
    assert "stopped on SIGUSR1 after committing checkpoint" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["resume", str(tmp_path), "--set", "threads=1"]) == EXIT_OK
    _assert_bitwise(reference, _numbers(tmp_path))
    before = (tmp_path / "results.h5").stat().st_mtime_ns
    assert main(args + ["--resume"]) == EXIT_OK  # already finished: nothing recomputed or rewritten
    assert (tmp_path / "results.h5").stat().st_mtime_ns == before
    assert "already finished" in capsys.readouterr().err
    assert main(["resume", str(tmp_path / "nowhere")]) == EXIT_BAD_INPUT
    assert "holds no checkpoint to resume" in capsys.readouterr().err


def test_bad_checkpoint_directory_fails_before_any_work(tmp_path):
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the checkpoint directory should be")
    cfg = _cfg(tmp_path / "out", **{"checkpoint.dir": str(blocker / "sub")})
    with pytest.raises(AgreedInputError, match="cannot create checkpoint directory .*blocked/sub"):
        run_job(cfg, SingleProcess())


def test_failed_checkpoint_write_is_a_clear_error_and_keeps_the_previous(tmp_path, monkeypatch):
    from hpcspec.checkpoint import store as store_module

    calls = []
    real = store_module._fsync_file

    def full_disk(path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(path)

    monkeypatch.setattr(store_module, "_fsync_file", full_disk)
    with pytest.raises(AgreedInputError, match="cannot write checkpoint file .*No space left on device.* previous "
                                               "checkpoint is kept"):
        run_job(_cfg(tmp_path), SingleProcess())
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["LATEST", "step-00000001", "step-00000002"]
    assert CheckpointStore(checkpoints, SingleProcess()).load().number == 2


@pytest.mark.parametrize("locking", ["auto", "false", "best-effort"])
def test_store_roundtrip_all_value_kinds_and_pruning(tmp_path, locking):
    store = CheckpointStore(tmp_path, SingleProcess(), keep=2, locking=locking)
    state = {"v": torch.randn(3, 2, 11, dtype=torch.float64), "a": np.arange(5, dtype=np.int64),
             "x": 0.1 + 0.2, "n": 7, "flag": True, "none": None, "name": "lanczos", "nan": float("nan")}
    for _ in range(4):
        commit = store.save(state, 11, {"note": "test"})
    assert [n for n, _ in store.committed()] == [4, 3]
    loaded = CheckpointStore(tmp_path, SingleProcess(), locking=locking).load()
    assert loaded.number == 4 and loaded.size == 11 and loaded.world_size == 1 and loaded.meta == {"note": "test"} and commit.nbytes > 0
    assert torch.equal(loaded.state["v"], state["v"]) and np.array_equal(loaded.state["a"], state["a"])
    assert loaded.state["x"] == state["x"] and loaded.state["n"] == 7 and loaded.state["flag"] is True
    assert loaded.state["none"] is None and loaded.state["name"] == "lanczos" and np.isnan(loaded.state["nan"])


@pytest.mark.parametrize("killed_after", [0, 1, 2])
def test_a_prune_killed_midway_leaves_a_folder_the_resume_accepts(tmp_path, monkeypatch, killed_after):
    """SIGKILL while an old step is pruned: whatever entries are gone, the folder left behind is
    still recognisably hpcspec's (marker removed last, or empty), so the resume loads the newest
    step and a later prune takes the rest; a plain recursive delete could leave files without the
    marker, and the resume then refused the folder as a user's."""
    from hpcspec.files import outputs
    store = CheckpointStore(tmp_path, SingleProcess(), keep=1)
    state = {"v": torch.randn(2, 5, dtype=torch.float64), "n": 3}
    store.save(state, 5, {})
    real_unlink, calls = Path.unlink, []

    def killed(self, missing_ok=False):
        if self.parent.name == "step-00000001":
            calls.append(self.name)
        if len(calls) > killed_after:
            raise KeyboardInterrupt  # the kill: nothing after it runs
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save(state, 5, {})  # commits step 2, then prunes step 1
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert calls[0] == "manifest.json" and outputs.OWNED not in calls[:killed_after]
    outputs.check_checkpoint_folder(tmp_path)  # no "not written by hpcspec"
    loaded = CheckpointStore(tmp_path, SingleProcess(), keep=1).load()
    assert loaded.number == 2 and torch.equal(loaded.state["v"], state["v"])
    store.save(state, 5, {})
    assert [n for n, _ in store.committed()] == [3]
    empty = tmp_path / "step-00000009"
    empty.mkdir()  # a removal killed between the marker and the folder
    outputs.check_checkpoint_folder(tmp_path)


def test_time_cadence_stretches_to_the_overhead_budget(tmp_path):
    now = [0.0]
    store = CheckpointStore(tmp_path, SingleProcess())
    checkpointer = Checkpointer(store, SingleProcess(), 4, every_seconds=10.0, max_overhead=0.5,
                                clock=lambda: now[0])
    state = lambda: {"v": torch.zeros(4, dtype=torch.float64)}  # noqa: E731
    for t in (5.0, 9.9):
        now[0] = t
        checkpointer.boundary(state)
    assert not checkpointer.commits
    now[0] = 10.0
    checkpointer.boundary(state)
    assert len(checkpointer.commits) == 1
    checkpointer._interval = max(10.0, 8.0 / 0.5)  # as if that write had taken 8 s
    now[0] = 10.0 + 15.0
    checkpointer.boundary(state)
    assert len(checkpointer.commits) == 1  # 16 s must pass, not 10
    now[0] = 10.0 + 16.0
    checkpointer.boundary(state)
    assert len(checkpointer.commits) == 2
