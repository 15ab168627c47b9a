"""CIFAR batch files, whole-data-set normalisation and the image data paths, against numpy."""

import os
import pickle
import sys

import h5py
import numpy as np
import pytest
import torch

from fakes import make_fake_cifar
from helpers import REPO
import spawn
from hpcspec import InputError, load_shard
from hpcspec.config import load_config
from hpcspec.problem.data import channel_stats
from hpcspec.errors import ConfigError


def _raw(folder, names, label_key=b"labels"):
    """The files' images (n, 3, 32, 32) and labels, read with plain pickle (trusted test files)."""
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        images.append(batch[b"data"].reshape(-1, 3, 32, 32))
        labels += batch[label_key]
    return np.concatenate(images).astype(np.float64), np.array(labels)


TRAIN10 = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    return make_fake_cifar(tmp_path_factory.mktemp("c10"), classes=10, samples_per_batch=8, seed=1)


def test_cifar10_train_is_standardised_per_channel(cifar10):
    shard = load_shard(f"cifar10:{cifar10}", 0, 1)
    raw, labels = _raw(cifar10, TRAIN10)
    assert shard.inputs.shape == (40, 3, 32, 32) and shard.inputs.dtype == torch.float32
    assert shard.total == 40 and shard.classes == 10 and shard.targets.tolist() == labels.tolist()
    mean, std = raw.mean(axis=(0, 2, 3)), raw.std(axis=(0, 2, 3))
    expected = (raw - mean[None, :, None, None]) / std[None, :, None, None]
    assert np.allclose(shard.inputs.numpy(), expected, rtol=0, atol=1e-5)
    x = shard.inputs.double().numpy()
    assert np.allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-6) and np.allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-6)
    assert not np.allclose(std, std[0])  # the fake's channels differ, so per-channel statistics matter


def test_cifar10_test_split_uses_training_statistics(cifar10):
    shard = load_shard(f"cifar10:{cifar10}", 0, 1, split="test")
    raw_train, _ = _raw(cifar10, TRAIN10)
    raw, labels = _raw(cifar10, ["test_batch"])
    mean, std = raw_train.mean(axis=(0, 2, 3)), raw_train.std(axis=(0, 2, 3))
    assert shard.inputs.shape == (8, 3, 32, 32) and shard.targets.tolist() == labels.tolist()
    assert np.allclose(shard.inputs.numpy(), (raw - mean[None, :, None, None]) / std[None, :, None, None], atol=1e-5)
    plain = load_shard(f"cifar10:{cifar10}", 0, 1, split="test", normalize="none")
    assert np.allclose(plain.inputs.numpy() * 255, raw, atol=1e-4)  # none: pixels / 255, as ToTensor


@pytest.mark.parametrize("granule", [1, 4])
def test_cifar_shards_concatenate_to_the_whole(cifar10, granule):
    whole = load_shard(f"cifar10:{cifar10}", 0, 1)
    parts = [load_shard(f"cifar10:{cifar10}", rank, 3, granule=granule) for rank in range(3)]
    assert [(p.start, p.stop) for p in parts][0][0] == 0 and parts[-1].stop == 40
    assert torch.equal(torch.cat([p.inputs for p in parts]), whole.inputs)  # same statistics on every rank
    assert torch.equal(torch.cat([p.targets for p in parts]), whole.targets)


def test_cifar100_and_archive_folder(tmp_path):
    folder = make_fake_cifar(tmp_path / "cifar-100-python", classes=100, samples_per_batch=4, seed=2)
    shard = load_shard(f"cifar100:{tmp_path}", 0, 1)  # the folder the archive was unpacked in
    raw, labels = _raw(folder, ["train"], b"fine_labels")
    assert shard.inputs.shape == (20, 3, 32, 32) and shard.classes == 100
    assert shard.targets.tolist() == labels.tolist()
    assert load_shard(f"cifar100:{folder}", 1, 2, split="test").inputs.shape == (2, 3, 32, 32)


def _write(path, obj):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


class _Hostile:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "data_batch_3").unlink(), "data_batch_3' does not exist"),
    (lambda f: _write(f / "data_batch_2", {b"data": np.zeros((8, 100), np.uint8), b"labels": [0] * 8}),
     r"data_batch_2': b'data' must be a \(n, 3072\) uint8 array"),
    (lambda f: _write(f / "data_batch_2", {b"data": np.zeros((8, 3072), np.uint8), b"labels": [0] * 7}),
     "8 images but b'labels' has shape"),
    (lambda f: _write(f / "data_batch_2", {b"data": np.zeros((8, 3072), np.uint8), b"labels": [10] * 8}),
     r"labels must lie in \[0, 10\)"),
    (lambda f: _write(f / "data_batch_2", {b"images": 1}), "has no b'data' and b'labels' entries"),
    (lambda f: (f / "data_batch_2").write_bytes(b"\x80\x02}q\x00garbage"), "data_batch_2' cannot be read"),
    (lambda f: _write(f / "data_batch_2", {b"data": _Hostile(), b"labels": []}), "refusing to load global"),
])
def test_bad_cifar_folders(tmp_path, monkeypatch, damage, message):
    monkeypatch.chdir(tmp_path)
    folder = make_fake_cifar(tmp_path / "c", per_batch=8)
    damage(folder)
    with pytest.raises(InputError, match=message):
        load_shard(f"cifar10:{folder}", 0, 1)
    assert not (tmp_path / "PWNED").exists()  # the hostile pickle ran nothing


def test_missing_folder_and_bad_split(tmp_path, cifar10):
    with pytest.raises(InputError, match="CIFAR folder '.*nowhere' does not exist"):
        load_shard(f"cifar10:{tmp_path / 'nowhere'}", 0, 1)
    with pytest.raises(InputError, match="data.split = 'test' applies to cifar10:DIR"):
        load_shard("digits", 0, 1, split="test")
    for key, value, message in [("data.split", "val", "data.split = 'val' is not one of train, test"),
                                ("data.normalize", "pixel", "data.normalize = 'pixel' is not one of"),
                                ("data.vocab", 0, "data.vocab must be > 0"),
                                ("model.width", 0, "model.width must be > 0"),
                                ("model.heads", -1, "model.heads must be > 0")]:
        with pytest.raises(ConfigError, match=message):
            load_config(overrides={key: value})


def test_digits_are_images_with_the_same_values():
    from sklearn.datasets import load_digits

    data = load_digits().data
    expected = (data - data.mean(axis=0)) / np.where(data.std(axis=0) > 0, data.std(axis=0), 1)
    shard = load_shard("digits", 0, 1)
    assert shard.inputs.shape == (1797, 1, 8, 8)
    assert np.array_equal(shard.inputs.reshape(1797, 64).numpy(), expected)
    assert np.array_equal(load_shard("digits", 0, 1, normalize="none").inputs.reshape(1797, 64).numpy(), data)
    whole = load_shard("digits", 0, 1, normalize="channel").inputs.numpy()
    assert abs(whole.mean()) < 1e-12 and abs(whole.std() - 1) < 1e-12


def test_hdf5_channel_statistics_in_pieces(tmp_path):
    gen = np.random.default_rng(0)
    scale, shift = np.array([1.0, 5.0, 0.1])[:, None, None], np.array([2.0, -3.0, 7.0])[:, None, None]
    x = (gen.normal(size=(23, 3, 4, 5)) * scale + shift).astype(np.float32)
    with h5py.File(tmp_path / "img.h5", "w") as f:
        f["x"], f["y"] = x, np.arange(23) % 4
    mean, std = x.mean(axis=(0, 2, 3), dtype=np.float64), x.std(axis=(0, 2, 3), dtype=np.float64)
    with h5py.File(tmp_path / "img.h5", "r") as f:
        for chunk in (1, 7 * 60 * 8, 10**9):  # one sample, seven samples, everything per piece
            got_mean, got_std = channel_stats(f["x"], chunk_bytes=chunk)
            assert np.allclose(got_mean, mean, rtol=1e-13) and np.allclose(got_std, std, rtol=1e-13)
    path = str(tmp_path / "img.h5")
    whole = load_shard(path, 0, 1, normalize="channel")
    parts = [load_shard(path, rank, 3, normalize="channel") for rank in range(3)]
    assert torch.equal(torch.cat([p.inputs for p in parts]), whole.inputs)
    assert np.allclose(whole.inputs.double().numpy().mean(axis=(0, 2, 3)), 0, atol=1e-6)
    assert np.array_equal(load_shard(path, 0, 1).inputs.numpy(), x)  # auto: as stored


def test_resnet_on_cifar_from_the_command_line(tmp_path, cifar10):
    env = spawn.one_thread_env(PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "hpcspec", "run", "--model", "resnet20", "--data", f"cifar10:{cifar10}",
               "--top-k", "1", "--output", str(tmp_path / "out"), "--batch-size", "20", "--set", "model.width=2",
               "--set", "eigen.maxiter=5", "--threads", "1"]
    done = spawn.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "out" / "results.h5", "r") as f:
        assert f["eigen"]["values"].shape == (1,) and np.isfinite(f["eigen"]["values"][()]).all()
