"""A finished run whose results.h5 was damaged since (truncated, emptied, a byte changed, replaced)
is not "already finished" on --resume: the checksum recorded in its COMPLETE marker tells, and
the results are computed again, equal to the first ones; an intact file is kept as it is."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

import bad_inputs
from hpcspec.cli import main

ARGV = ["run", "--model", "usermod:make_model", "--data", "usermod:make_data", "--loss", "mse", "--top-k", "2",
        "--tol", "1e-12", "--trace", "--trace-matvecs", "12", "--output", "out"]


def truncate_half(path):
    os.truncate(path, path.stat().st_size // 2)


def empty(path):
    os.truncate(path, 0)


def flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def replace_with_text(path):
    path.write_text("not an HDF5 file\n")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    bad_inputs.prepare(folder)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        import sys
        sys.path.insert(0, str(folder))
        assert main(ARGV) == 0
    finally:
        os.chdir(cwd)
    with h5py.File(folder / "out" / "results.h5") as f:
        values = f["eigen/values"][()]
    return folder, values


def copy_run(source, target):
    import shutil
    shutil.copytree(source / "out", target / "out")
    for name in ("usermod.py",):
        shutil.copy(source / name, target / name)


@pytest.mark.parametrize("damage", [truncate_half, empty, flip_middle_byte, flip_last_byte, replace_with_text])
def test_a_damaged_results_file_is_computed_again_on_resume(finished, damage, tmp_path, monkeypatch, capsys):
    source, values = finished
    copy_run(source, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = json.loads((tmp_path / "out" / "checkpoints" / "COMPLETE").read_text())
    size, crc = marker["results_digest"].split(":")
    assert int(size) == (tmp_path / "out" / "results.h5").stat().st_size and len(crc) == 8
    damage(tmp_path / "out" / "results.h5")
    capsys.readouterr()
    assert main([*ARGV, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "is not the file this run finished with" in err and "computing the results again" in err
    with h5py.File(tmp_path / "out" / "results.h5") as f:
        np.testing.assert_array_equal(f["eigen/values"][()], values)
    assert main(["report", str(tmp_path / "out" / "results.h5"), "--output", str(tmp_path / "report")]) == 0


def test_an_intact_results_file_is_kept_as_it_is(finished, tmp_path, monkeypatch, capsys):
    source, _ = finished
    copy_run(source, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = (tmp_path / "out" / "results.h5").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*ARGV, "--resume"]) == 0
    assert "already finished" in capsys.readouterr().err
    assert (tmp_path / "out" / "results.h5").stat().st_mtime_ns == before
