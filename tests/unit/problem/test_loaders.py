"""Data callables returning batches (hpcspec.problem.loaders): blocks of whole batches per rank that
cover the data once, the operator on them equal to the dense Hessian of the mean over all samples,
and every bad return refused with one line."""

from __future__ import annotations

import importlib
import sys

import batch_data
import pytest
import torch
from helpers import dense_hessian

from hpcspec import HessianOperator
from hpcspec.errors import InputError
from hpcspec.parallel.comm import SingleProcess
from hpcspec.problem.data import load_shard
from hpcspec.problem.loaders import agree_batches
from hpcspec.problem.shards import BatchShard


@pytest.fixture(scope="module")
def mod(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batchmod")
    batch_data.write(folder)
    sys.path.insert(0, str(folder))
    module = importlib.import_module("batchmod")
    yield module
    sys.path.remove(str(folder))
    sys.modules.pop("batchmod", None)


@pytest.mark.parametrize("name, sizes", [("loader", [7] * 7 + [5]), ("pairs", [3, 17, 1, 12, 7, 14]),
                                         ("dicts", [3, 17, 1, 12, 7, 14])])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_ranks_take_contiguous_blocks_of_whole_batches_that_cover_the_data(mod, name, sizes, ranks):
    shards = [load_shard(f"batchmod:{name}", rank, ranks) for rank in range(ranks)]
    assert all(isinstance(s, BatchShard) and s.num_batches == len(sizes) and s.total == 54 for s in shards)
    assert [s.start for s in shards] == [r * len(sizes) // ranks for r in range(ranks)]
    assert [s.stop for s in shards[:-1]] == [s.start for s in shards[1:]] and shards[-1].stop == len(sizes)
    got = [len(targets) for s in shards for _, targets in s.batches]
    assert got == sizes and sum(s.samples for s in shards) == 54
    x, y = mod.tensors()
    assert torch.equal(torch.cat([targets for s in shards for _, targets in s.batches]), y)
    first = shards[0].batches[0][0]
    if name == "dicts":  # the target key is split off; the rest are the model's keyword arguments
        assert sorted(first) == ["features", "scale"]
    assert agree_batches(shards[0], SingleProcess(), "x") is shards[0]


@pytest.mark.parametrize("name, model", [("loader", "make_model"), ("pairs", "make_model"), ("dicts", "keyword_model")])
def test_operator_on_batches_is_the_dense_hessian_of_the_mean(mod, name, model):
    net = getattr(mod, model)()
    x, y = mod.tensors()
    dense = dense_hessian(mod.make_model(), "cross_entropy", x, y)  # same weights (seed 0), scale 1
    ranks = 3
    total = torch.zeros(dense.shape[0], 4, dtype=torch.float64)
    vectors = torch.randn(dense.shape[0], 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for rank in range(ranks):  # the three ranks' partial sums, added as the reduction would
        op = HessianOperator(net, "cross_entropy", load_shard(f"batchmod:{name}", rank, ranks), batch_size=1000)
        total += op.apply(vectors) * op.total_count
    total /= 54
    assert torch.linalg.matrix_norm(total - dense @ vectors) <= 1e-12 * torch.linalg.matrix_norm(dense @ vectors)


@pytest.mark.parametrize("name, ranks, message", [
    ("generator", 1, "one-pass iterator (generator)"),
    ("empty", 1, "gave no batches (an empty loader or list)"),
    ("two_batches", 3, "gives 2 batch(es) for 3 ranks: every rank needs at least one whole batch"),
    ("mismatched", 1, "batch 3 has input keys ['inputs', 'scale'] but batch 0 has ['features', 'scale']"),
    ("no_labels", 1, "batch 0: a dict batch needs its targets under 'labels'"),
    ("dropping", 1, "drop_last = True leaves out 6 sample(s)"),
])
def test_bad_returns_are_one_line_input_errors(mod, name, ranks, message):
    with pytest.raises(InputError) as error:
        load_shard(f"batchmod:{name}", 0, ranks)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_per_rank_loaders_need_data_sharded_and_the_runs_world(mod, monkeypatch):
    with pytest.raises(InputError, match="uses a DistributedSampler .* set data.sharded = true"):
        load_shard("batchmod:distributed", 0, 1)
    shard = load_shard("batchmod:distributed", 0, 1, sharded=True)
    assert shard.sharded and shard.num_batches == -1 and shard.samples == 54
    counted = agree_batches(shard, SingleProcess(), "batchmod:distributed")
    assert (counted.num_batches, counted.total) == (14, 54)
    with pytest.raises(InputError, match="num_replicas = 1, rank = 0, but this is rank 1 of 2"):
        load_shard("batchmod:distributed", 1, 2, sharded=True)
    monkeypatch.setattr(mod, "_world", lambda: (2, 0))
    with pytest.raises(InputError, match="repeats 1 sample"):
        load_shard("batchmod:padded", 0, 2, sharded=True)
    with pytest.raises(InputError, match="data.sharded = true needs a data callable returning this rank's batches"):
        load_shard("batchmod:tensors", 0, 1, sharded=True)
    with pytest.raises(InputError, match="data.normalize = 'channel' needs the whole data set"):
        load_shard("batchmod:loader", 0, 1, normalize="channel")


def test_data_shape_of_dict_batches_and_a_zoo_model_refused(mod):
    from hpcspec.commands.setup import DataShape, data_shape, job_model
    from hpcspec.config import load_config

    shape = data_shape(SingleProcess(), load_shard("batchmod:dicts", 0, 1), "cross_entropy")
    assert shape == DataShape(0, 3, ())  # no single input tensor; 3 classes from the labels
    assert data_shape(SingleProcess(), load_shard("batchmod:loader", 0, 1), "cross_entropy") == DataShape(4, 3, (4,))
    cfg = load_config(overrides={"model.spec": "mlp", "data.spec": "batchmod:dicts"})
    with pytest.raises(InputError, match="model 'mlp' takes one input tensor, but data 'batchmod:dicts' gives dict"):
        job_model(cfg, shape, torch.device("cpu"))
