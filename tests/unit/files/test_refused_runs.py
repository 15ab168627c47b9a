"""A run refused before it starts leaves nothing behind: no new output folder with a lock and a run
marker in it, and an empty folder the user made stays as it was; a folder that holds anything
else (a finished run, a committed checkpoint, a user's file) keeps all of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import StopAfter

from hpcspec.checkpoint import StopRequested
from hpcspec.cli import main
from hpcspec.commands.run import run_job
from hpcspec.config import load_config
from hpcspec.errors import EXIT_BAD_INPUT, EXIT_OK
from hpcspec.parallel.comm import SingleProcess

SMALL = {"model.hidden": [4], "data.spec": "synthetic", "data.samples": 40, "data.features": 3, "data.classes": 2,
         "tasks": ["eigen"], "eigen.top_k": 1, "density.plot": False}

#: Refusals that come after the output folder is claimed: at the problem's size, at the data, at
#: the model, at the checkpoint folder.
REFUSALS = {
    "top-k above the parameter count": ({"eigen.top_k": 10_000}, [], "exceeds the number of parameters"),
    "a missing data file": ({"data.spec": "/nonexistent/data.h5"}, [], "nonexistent"),
    "a model module that does not exist": ({"model.spec": "no_such_module_xyz:make"}, [], "no_such_module_xyz"),
    "a checkpoint.dir below a file": ({"checkpoint.dir": "/dev/null/ck"}, [], "checkpoint directory"),
}


def _args(output: Path, extra: list[str], **changes) -> list[str]:
    args = ["run", "--output", str(output), *extra]
    for key, value in {**SMALL, **changes}.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def _refused(capsys, args: list[str], words: str) -> None:
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hpcspec: error:")]
    assert len(lines) == 1 and words in lines[0], err


@pytest.mark.parametrize("why", list(REFUSALS))
def test_a_refused_run_leaves_no_new_folder_behind(tmp_path, capsys, why):
    changes, extra, words = REFUSALS[why]
    out = tmp_path / "new" / "out"
    _refused(capsys, _args(out, extra, **changes), words)
    assert not out.exists()


@pytest.mark.parametrize("why", list(REFUSALS))
def test_a_refused_run_leaves_an_empty_folder_empty(tmp_path, capsys, why):
    changes, extra, words = REFUSALS[why]
    out = tmp_path / "mine"
    out.mkdir()
    _refused(capsys, _args(out, extra, **changes), words)
    assert out.is_dir() and list(out.iterdir()) == []


def test_a_refused_run_keeps_a_finished_run_and_a_users_file(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(out, [])) == EXIT_OK
    before = sorted(p.name for p in out.iterdir())
    _refused(capsys, _args(out, [], **{"eigen.top_k": 2}), "holds a finished run")
    assert sorted(p.name for p in out.iterdir()) == before
    forced = tmp_path / "forced"
    forced.mkdir()
    (forced / "notes.txt").write_text("mine")
    _refused(capsys, [*_args(forced, [], **{"eigen.top_k": 10_000}), "--force-output"], "exceeds the number")
    assert (forced / "notes.txt").read_text() == "mine"


def test_a_run_stopped_after_a_checkpoint_keeps_its_folder(tmp_path):
    cfg = load_config(overrides={**SMALL, "output": str(tmp_path / "out"), "checkpoint.every_iters": 1,
                                 "eigen.top_k": 3, "hessian.check": False})
    with pytest.raises(StopRequested):
        run_job(cfg, SingleProcess(), flag=StopAfter(2))
    assert list((tmp_path / "out" / "checkpoints").glob("step-*"))
    assert (tmp_path / "out" / ".hpcspec-run").is_file()


# -- a checkpoint folder holding what hpcspec did not write ---------------------------------------

def _make_users(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if name.startswith("step-"):
        (folder / name).mkdir()
        (folder / name / "my-data.bin").write_bytes(b"mine")
    elif name == "LATEST-link":
        (folder / "LATEST").symlink_to(folder / "elsewhere")
    else:
        (folder / name).write_text("the user's own\n")


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name", ["LATEST", "COMPLETE", "step-00000001", "step-00000003.tmp", "step-00000002.damaged",
                                  "LATEST-link"])
@pytest.mark.parametrize("where", ["checkpoint.dir", "the output's checkpoints/"])
def test_a_users_file_under_a_checkpoint_name_is_refused_even_when_forced(tmp_path, capsys, name, where):
    folder = tmp_path / "ck" if where == "checkpoint.dir" else tmp_path / "out" / "checkpoints"
    _make_users(folder, name)
    before = _snapshot(folder)
    changes = {"checkpoint.dir": str(folder)} if where == "checkpoint.dir" else {}
    for extra in ([], ["--force-output"], ["--overwrite"], ["--resume"]):
        _refused(capsys, _args(tmp_path / "out", extra, **changes), "not written by hpcspec")
        assert _snapshot(folder) == before, extra


def test_a_users_other_file_in_a_checkpoint_folder_is_refused_unless_forced_and_kept(tmp_path, capsys):
    folder = tmp_path / "ck"
    _make_users(folder, "notes.txt")
    _refused(capsys, _args(tmp_path / "out", [], **{"checkpoint.dir": str(folder)}), "--force-output")
    assert main([*_args(tmp_path / "out", [], **{"checkpoint.dir": str(folder), "checkpoint.every_iters": 1,
                                                 "eigen.top_k": 3}), "--force-output"]) == EXIT_OK
    assert (folder / "notes.txt").read_text() == "the user's own\n"
    assert sorted(p.name for p in folder.iterdir()) == ["COMPLETE", "notes.txt"]


# -- --overwrite deletes the previous run only once the new one can start ------------------------

OVERWRITE_REFUSALS = {**REFUSALS, "a loose tolerance": ({"eigen.tol": 0.5}, [], "certifies nothing"),
                      "NaN data": ({"data.spec": "nan.h5"}, [], "NaN or infinite")}


@pytest.mark.parametrize("why", [why for why in OVERWRITE_REFUSALS if why != "a checkpoint.dir below a file"])
@pytest.mark.parametrize("previous", ["finished", "stopped"])
def test_overwrite_keeps_the_previous_run_when_the_new_one_is_refused(tmp_path, capsys, monkeypatch, why, previous):
    import h5py
    import numpy as np
    monkeypatch.chdir(tmp_path)
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        x = np.ones((20, 3))
        x[7, 1] = np.nan
        f["x"], f["y"] = x, np.zeros(20, dtype=np.int64)
    out = tmp_path / "out"
    if previous == "finished":
        assert main(_args(out, [])) == EXIT_OK
    else:
        cfg = load_config(overrides={**SMALL, "output": str(out), "checkpoint.every_iters": 1, "eigen.top_k": 3,
                                     "hessian.check": False})
        with pytest.raises(StopRequested):
            run_job(cfg, SingleProcess(), flag=StopAfter(2))
    before = _snapshot(out)
    changes, extra, words = OVERWRITE_REFUSALS[why]
    _refused(capsys, _args(out, ["--overwrite", *extra], **changes), words)
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if ".hpcspec-lock" not in k} == \
        {k: v for k, v in before.items() if ".hpcspec-lock" not in k}
    assert main(_args(out, ["--overwrite"], **{"eigen.top_k": 2})) == EXIT_OK  # then it does replace it
    assert (out / "checkpoints" / "COMPLETE").is_file() and not list((out / "checkpoints").glob("step-*"))
