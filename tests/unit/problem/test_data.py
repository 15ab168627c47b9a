"""Deterministic contiguous shards and the data sources."""

import h5py
import numpy as np
import pytest
import torch

from hpcspec import InputError, load_shard, shard_range


@pytest.mark.parametrize("total", [0, 1, 5, 10, 1797])
@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_shards_tile_the_data_set(total, size):
    ranges = [shard_range(total, rank, size) for rank in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    lengths = [stop - start for start, stop in ranges]
    assert max(lengths) - min(lengths) <= 1


def test_digits_is_standardised_and_sharded():
    shards = [load_shard("digits", rank, 3) for rank in range(3)]
    x = torch.cat([s.inputs for s in shards])
    assert x.shape == (1797, 1, 8, 8) and shards[0].total == 1797
    assert torch.allclose(x.mean(dim=0), torch.zeros(1, 8, 8, dtype=torch.float64), atol=1e-12)
    assert torch.equal(torch.cat([s.targets for s in shards]), load_shard("digits", 0, 1).targets)


def test_synthetic_does_not_depend_on_rank_count():
    whole = load_shard("synthetic", 0, 1, samples=50, seed=4)
    parts = [load_shard("synthetic", rank, 3, samples=50, seed=4) for rank in range(3)]
    assert torch.equal(torch.cat([p.inputs for p in parts]), whole.inputs)
    regression = load_shard("synthetic", 0, 1, samples=20, classes=0, outputs=3)
    assert regression.targets.shape == (20, 3) and regression.targets.dtype == torch.float64


def _h5(path, x, y=None):
    with h5py.File(path, "w") as f:
        f["x"] = x
        if y is not None:
            f["y"] = y
    return str(path)


def test_hdf5_each_rank_reads_its_slice(tmp_path):
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    path = _h5(tmp_path / "d.h5", x, np.arange(10))
    shard = load_shard(path, 1, 3)
    assert (shard.start, shard.stop, shard.total) == (3, 6, 10)
    assert np.array_equal(shard.inputs.numpy(), x[3:6]) and shard.targets.tolist() == [3, 4, 5]


@pytest.mark.parametrize("make, message", [
    (lambda p: _h5(p, np.zeros((10, 3)), np.zeros(7)), "'y' has shape"),
    (lambda p: _h5(p, np.zeros((10, 3))), "no dataset 'y'"),
    (lambda p: _h5(p, np.zeros(10), np.zeros(10)), "must be \\(samples, features"),
    (lambda p: _h5(p, np.array([[0.0], [np.nan]]), np.zeros(2)), "NaN or infinite values \\(first at sample 1\\)"),
    (lambda p: _h5(p, np.array([[b"a"], [b"b"]]), np.zeros(2)), "non-numeric"),
    (lambda p: (p.write_bytes(b"not hdf5"), str(p))[1], "not a readable HDF5 file"),
])
def test_bad_hdf5(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        load_shard(make(tmp_path / "bad.h5"), 0, 1)


def test_missing_and_unknown_sources(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_shard(str(tmp_path / "missing.h5"), 0, 1)
    with pytest.raises(InputError, match="unknown data 'digitz'"):
        load_shard("digitz", 0, 1)


def test_callable_sources(tmp_path, monkeypatch):
    (tmp_path / "userdata.py").write_text(
        "import torch\n"
        "class Squares(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 7\n"
        "    def __getitem__(self, i): return torch.tensor([float(i)]), torch.tensor(i * i)\n"
        "def dataset(): return Squares()\n"
        "def pair(): return torch.ones(5, 2), torch.zeros(5, dtype=torch.long)\n"
        "def mismatched(): return torch.ones(5, 2), torch.zeros(4)\n"
        "def wrong(): return 42\n")
    monkeypatch.chdir(tmp_path)
    shard = load_shard("userdata:dataset", 2, 3)
    assert shard.inputs.squeeze(1).tolist() == [4.0, 5.0, 6.0] and shard.targets.tolist() == [16, 25, 36]
    assert load_shard("userdata:pair", 0, 2).inputs.shape == (2, 2)
    with pytest.raises(InputError, match="x with 5 samples and y with 4"):
        load_shard("userdata:mismatched", 0, 1)
    with pytest.raises(InputError, match="must return a sized torch Dataset"):
        load_shard("userdata:wrong", 0, 1)
    with pytest.raises(InputError, match="no attribute 'missing'"):
        load_shard("userdata:missing", 0, 1)
    with pytest.raises(InputError, match="cannot import module 'nosuchmodule'"):
        load_shard("nosuchmodule:make", 0, 1)
    with pytest.raises(InputError, match="not of the form module:callable"):
        load_shard("user-data:make", 0, 1)
