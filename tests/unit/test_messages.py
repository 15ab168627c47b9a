"""Error lines that say what is wrong in words a user can act on: a folder that cannot be made
because a symbolic link points nowhere, sizes in the unit that shows them, a resume refused
because the data differs (how, not a fingerprint)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcspec.checkpoint import describe_mismatch
from hpcspec.cli import main
from hpcspec.errors import EXIT_BAD_INPUT
from hpcspec.problem.data import byte_sizes

SMALL = {"model.hidden": [4], "data.spec": "synthetic", "data.samples": 40, "data.features": 3, "data.classes": 2,
         "tasks": ["eigen"], "eigen.top_k": 1, "density.plot": False}


def _run(output: Path, **changes) -> list[str]:
    args = ["run", "--output", str(output)]
    for key, value in {**SMALL, **changes}.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hpcspec: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- a symbolic link to a missing path ------------------------------------------------------------

@pytest.mark.parametrize("where", ["output", "output's parent", "checkpoint.dir", "report --output"])
def test_a_dangling_symlink_in_the_way_is_named_as_one(tmp_path, capsys, where):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    if where == "output":
        args = _run(link)
    elif where == "output's parent":
        args = _run(link / "out")
    elif where == "checkpoint.dir":
        args = _run(tmp_path / "out", **{"checkpoint.dir": str(link / "ck")})
    else:
        assert main(_run(tmp_path / "done")) == 0
        capsys.readouterr()
        args = ["report", str(tmp_path / "done" / "results.h5"), "--output", str(link)]
    assert main(args) == EXIT_BAD_INPUT
    line = _error(capsys)
    assert f"{str(link)!r} is a symbolic link to {str(tmp_path / 'gone')!r}, which does not exist" in line, line
    assert "File exists" not in line
    assert link.is_symlink() and not (tmp_path / "gone").exists()


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path, capsys):
    (tmp_path / "plain").write_text("mine")
    assert main(_run(tmp_path / "plain" / "out")) == EXIT_BAD_INPUT
    assert f"{str(tmp_path / 'plain')!r} is a file, not a folder" in _error(capsys)
    assert (tmp_path / "plain").read_text() == "mine"


# -- sizes in units that show them ----------------------------------------------------------------

@pytest.mark.parametrize("sizes, texts", [
    ((20_992, 10_240), ["20.5 KiB", "10 KiB"]),
    ((3.4e9, 4 * 2**30), ["3.17 GiB", "4 GiB"]),
    ((5 * 2**20 + 1, 2**40), ["5 MiB", "1 TiB"]),
    ((1025, 1024), ["1,025 bytes", "1,024 bytes"]),  # would both read "1 KiB"
    ((800, 10), ["800 bytes", "10 bytes"]),
])
def test_byte_sizes_pick_a_unit_that_shows_each_size(sizes, texts):
    assert byte_sizes(*sizes) == texts


def test_a_tiny_data_max_gb_says_how_much_in_units_that_show_it(tmp_path, capsys):
    data = tmp_path / "d.h5"
    with h5py.File(data, "w") as f:
        f.create_dataset("x", data=np.zeros((100, 3)))
        f.create_dataset("y", data=np.zeros(100, dtype=np.int64))
    assert main(_run(tmp_path / "out", **{"data.spec": str(data), "data.max_gb": 1e-6})) == EXIT_BAD_INPUT
    line = _error(capsys)
    assert "needs 3.12 KiB, more than the 1.05 KiB allowed" in line, line
    assert "0.0 GiB" not in line


# -- a resume refused because the data differs ----------------------------------------------------

def _identity(data: str) -> dict:
    return {"config": {"data.spec": "mod:loader"}, "model": "m" * 64, "data": data, "num_params": 10}


@pytest.mark.parametrize("saved, current, words", [
    ("480:20b/2r:00000000000000aa", "480:21b/3r:00000000000000bb",
     "per-rank loaders (sharded), whose batches depend on the rank count: the checkpoint was written on 2 ranks, "
     "this run has 3; resume on 2 ranks"),
    ("480:20b:00000000000000aa", "480:24b:00000000000000bb", "the data comes in 20 batches there, 24 here"),
    ("1200:00000000000000aa", "1300:00000000000000bb", "the data has 1,200 samples there, 1,300 here"),
    ("480:00000000000000aa", "480:00000000000000bb", "the data's values differ (same number of samples and batches)"),
    ("480:20b:00000000000000aa", "480:20b/2r:00000000000000bb", "one shared loader in one run and by per-rank"),
])
def test_a_data_mismatch_is_described_in_words(saved, current, words):
    line = describe_mismatch(_identity(saved), _identity(current))
    assert words in line and saved not in line and current not in line, line


def test_a_model_mismatch_says_the_weights_differ():
    current = {**_identity("480:00000000000000aa"), "model": "n" * 64}
    assert "the model's weights or buffers differ" in describe_mismatch(_identity("480:00000000000000aa"), current)


def test_no_mismatch_is_none():
    assert describe_mismatch(_identity("480:00000000000000aa"), _identity("480:00000000000000aa")) is None
