"""HDF5 writes on a disk that fills up: one ``OSError`` naming the file, at whatever byte the disk
runs out (the data, or the metadata HDF5 flushes at close), nothing left open in HDF5, and an
interpreter that exits cleanly afterwards (h5py's own driver left a dataset half-closed there and
the process died in HDF5's shutdown with a segmentation fault)."""

from __future__ import annotations

import errno
import sys
import textwrap

import h5py
import numpy as np
import pytest
import spawn
import torch
from helpers import REPO
from small_disk import failing_writes

from hpcspec.checkpoint import CheckpointStore
from hpcspec.files.atomic import TMP_PREFIX, WriteFailed
from hpcspec.files.hdf5 import KEPT_BYTES, FailSafeSink, create_hdf5
from hpcspec.parallel.agree import AgreedInputError
from hpcspec.parallel.comm import SingleProcess


def _write_sample(path) -> None:
    """A file shaped like a checkpoint: large vectors, small arrays, attributes, nested groups."""
    with create_hdf5(path) as f:
        f.attrs.update({"rank": 0, "lo": 0, "hi": 700, "size": 700})
        f.create_dataset("vectors/basis", data=np.arange(6 * 700, dtype=np.float64).reshape(6, 700))
        f.create_dataset("vectors/x", data=np.linspace(0, 1, 700))
        f.create_dataset("arrays/alpha", data=np.arange(17, dtype=np.float64))
        for index in range(12):  # many small objects: much metadata to flush at close
            f.create_dataset(f"arrays/small/{index}", data=np.full(3, index))


def _open_objects() -> int:
    """Files, datasets, groups and attributes HDF5 holds open (h5py keeps datatypes for itself)."""
    f = h5py.h5f
    return len(f.get_obj_ids(types=f.OBJ_FILE | f.OBJ_DATASET | f.OBJ_GROUP | f.OBJ_ATTR))


def _size_of_sample(tmp_path) -> int:
    path = tmp_path / "whole.h5"
    _write_sample(path)
    return path.stat().st_size


def test_a_write_that_fits_is_an_ordinary_hdf5_file(tmp_path):
    path = tmp_path / "f.h5"
    _write_sample(path)
    with h5py.File(path, "r") as f:
        assert np.array_equal(f["vectors/basis"][...], np.arange(6 * 700, dtype=np.float64).reshape(6, 700))
        assert f.attrs["size"] == 700 and f["arrays/small/11"][1] == 11
    assert _open_objects() == 0


def test_a_disk_full_at_any_byte_is_one_oserror_and_nothing_stays_open(tmp_path):
    whole = _size_of_sample(tmp_path)
    failures = 0
    for budget in [*range(0, whole, 256), whole - 1]:
        path = tmp_path / "f.h5"
        with failing_writes(lambda name: name == "f.h5", budget):
            with pytest.raises(OSError) as raised:
                _write_sample(path)
        assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path), budget
        assert raised.value.strerror == "No space left on device"
        assert _open_objects() == 0, f"HDF5 objects left open after a failure at byte {budget}"
        failures += 1
    assert failures > whole // 256
    with failing_writes(lambda name: name == "f.h5", whole):  # exactly enough room
        _write_sample(tmp_path / "f.h5")


@pytest.mark.parametrize("code", [errno.EDQUOT, errno.EIO, errno.EROFS])
def test_quota_and_io_errors_keep_their_errno(tmp_path, code):
    with failing_writes(lambda name: True, 3000, code), pytest.raises(OSError) as raised:
        _write_sample(tmp_path / "f.h5")
    assert raised.value.errno == code and raised.value.strerror == __import__("os").strerror(code)
    assert _open_objects() == 0


def test_a_missing_folder_fails_before_hdf5_opens_anything(tmp_path):
    with pytest.raises(FileNotFoundError):
        _write_sample(tmp_path / "absent" / "f.h5")
    assert _open_objects() == 0


def test_after_a_failure_reads_see_disk_and_small_writes_and_large_writes_are_dropped(tmp_path):
    with failing_writes(lambda name: True, 10):
        sink = FailSafeSink(tmp_path / "f")
        assert sink.write(b"0123456") == 7  # on disk
        assert sink.write(b"789abc") == 6  # fails after 3 bytes, kept
        sink.seek(100)
        sink.write(b"meta")
        sink.seek(1000)
        sink.write(bytes(KEPT_BYTES + 1))
    assert sink.error.errno == errno.ENOSPC
    sink.seek(0)
    assert sink.read(16) == b"0123456789abc\0\0\0"
    sink.seek(98)
    assert sink.read(8) == b"\0\0meta\0\0"
    assert sink.kept_bytes == 10 and sink.seek(0, 2) == 1001 + KEPT_BYTES
    sink.close()
    with pytest.raises(OSError, match="No space left on device"):
        sink.raise_error()


def test_the_interpreter_exits_cleanly_after_failures_at_every_byte(tmp_path):
    """The crash came at interpreter exit, so only a fresh interpreter shows it is gone."""
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(REPO / 'tests' / 'support')!r}, {str(REPO / 'tests' / 'unit' / 'files')!r}]
        from pathlib import Path
        from small_disk import failing_writes
        from test_hdf5_writes import _write_sample
        folder = Path({str(tmp_path)!r})
        for budget in range(0, 60000, 512):
            try:
                with failing_writes(lambda name: True, budget):
                    _write_sample(folder / "f.h5")
            except OSError:
                pass
        print("done")
    """)
    done = spawn.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
    assert done.stderr == "", done.stderr


def _state(size: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"basis": torch.randn(5, size, dtype=torch.float64, generator=gen), "alpha": np.arange(9.0), "step": seed}


def test_a_checkpoint_that_fills_the_disk_keeps_the_previous_one(tmp_path):
    store = CheckpointStore(tmp_path / "ck", SingleProcess())
    store.save(_state(400, 1), 400, {"run": "x"})
    whole = next((tmp_path / "ck" / "step-00000001").glob("rank-*.h5")).stat().st_size
    for budget in (0, 4096, whole // 2, whole - 600, whole - 1):  # the data, and the metadata at close
        with failing_writes(lambda name: name.startswith("rank-"), budget):
            with pytest.raises(AgreedInputError, match=r"cannot write checkpoint file .*rank-00000\.h5.*"
                                                       r"\(No space left on device\).*previous checkpoint is kept"):
                store.save(_state(400, 2), 400, {"run": "x"})
        assert _open_objects() == 0
        assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["LATEST", "step-00000001"], budget
    loaded = CheckpointStore(tmp_path / "ck", SingleProcess()).load()
    assert loaded.number == 1 and loaded.state["step"] == 1
    assert torch.equal(loaded.state["basis"], _state(400, 1)["basis"])
    assert store.save(_state(400, 3), 400, {"run": "x"}).number == 2  # room again: the next commit works


def test_results_that_fill_the_disk_are_one_write_failure_and_no_temporary(tmp_path):
    from hpcspec.files.atomic import atomic_path

    target = tmp_path / "results.h5"
    target.write_bytes(b"the previous results")
    for budget in (0, 2000, 20000):
        with failing_writes(lambda name: name.startswith(TMP_PREFIX), budget):
            with pytest.raises(WriteFailed, match=r"cannot write .*results\.h5.*No space left on device"):
                with atomic_path(target) as tmp:
                    _write_sample(tmp)
        assert target.read_bytes() == b"the previous results"
        assert [p.name for p in tmp_path.iterdir()] == ["results.h5"]
        assert _open_objects() == 0
