"""A user module of data callables returning batches (``batchmod:...``), shared by the unit tests
of :mod:`hpcspec.problem.loaders` and the ``mpirun`` tests: the same 54 samples as tensors, as a
DataLoader with uneven batches, as a list of (x, y) pairs, as dict batches, as per-rank loaders
(a DistributedSampler), and the bad returns."""

from __future__ import annotations

from pathlib import Path

BATCH_MODULE = '''
import os

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

N = 54  # divisible by 1, 2 and 3 ranks: a DistributedSampler needs no padding


def _world():
    from mpi4py import MPI
    return MPI.COMM_WORLD.size, MPI.COMM_WORLD.rank


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()


class KeywordModel(torch.nn.Module):
    """Takes dict batches' keyword tensors, as a Hugging Face model does."""

    def __init__(self):
        super().__init__()
        self.inner = make_model()

    def forward(self, features, scale):
        return self.inner(features * scale)


def keyword_model():
    return KeywordModel()


def conv_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Tanh(), torch.nn.Flatten(),
                               torch.nn.Linear(8, 3)).double()


def tensors():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 4, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (N,), generator=gen)


def loader():  # uneven batches: 7 × 7 and a last one of 5
    return DataLoader(TensorDataset(*tensors()), batch_size=7)


def loader_env():  # the same samples in batches of $BATCHMOD_BATCH (7)
    return DataLoader(TensorDataset(*tensors()), batch_size=int(os.environ.get("BATCHMOD_BATCH", "7")))


CUTS = [0, 3, 20, 21, 33, 40, 54]


def pairs():  # batches of 3, 17, 1, 12, 7 and 14 samples
    x, y = tensors()
    return [(x[a:b], y[a:b]) for a, b in zip(CUTS, CUTS[1:])]


def dicts():
    return [{"features": x, "scale": torch.full((len(x), 1), 1.0, dtype=torch.float64), "labels": y}
            for x, y in pairs()]


def distributed():  # each rank its own loader over its share (data.sharded = true)
    size, rank = _world()
    data = TensorDataset(*tensors())
    return DataLoader(data, batch_size=4, sampler=DistributedSampler(data, num_replicas=size, rank=rank,
                                                                     shuffle=False))


def images():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(23, 1, 4, 4, generator=gen, dtype=torch.float64)
    return DataLoader(TensorDataset(x, torch.randint(0, 3, (23,), generator=gen)), batch_size=5)


def generator():
    return (pair for pair in pairs())


def empty():
    return DataLoader(TensorDataset(*(t[:0] for t in tensors())), batch_size=7)


def two_batches():
    return pairs()[:2]


def mismatched():
    batches = dicts()
    batches[3] = {"inputs": batches[3]["features"], "scale": batches[3]["scale"], "labels": batches[3]["labels"]}
    return batches


def no_labels():
    return [{"features": x, "targets": y} for x, y in pairs()]


def dropping():
    return DataLoader(TensorDataset(*tensors()), batch_size=8, drop_last=True)


def padded():  # 53 samples shared by a DistributedSampler among 2 or 3 ranks: padded with repeats
    size, rank = _world()
    x, y = tensors()
    data = TensorDataset(x[:53], y[:53])
    return DataLoader(data, batch_size=4, sampler=DistributedSampler(data, num_replicas=size, rank=rank,
                                                                     shuffle=False))


def shuffled_per_rank():  # a shuffling loader seeded differently on each rank
    seed = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    return DataLoader(TensorDataset(*tensors()), batch_size=7, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))
'''

SHARDED = ["--set", "data.sharded=true"]
#: (name, data callable, model callable, extra flags)
GOOD = [("tensors", "tensors", "make_model", []), ("loader", "loader", "make_model", []),
        ("pairs", "pairs", "make_model", []), ("dicts", "dicts", "keyword_model", []),
        ("distributed", "distributed", "make_model", SHARDED)]
#: (name, data callable, extra flags, least ranks, text the one error line must hold)
BAD = [("generator", "generator", [], 1, "one-pass iterator"),
       ("empty", "empty", [], 1, "gave no batches"),
       ("mismatched keys", "mismatched", [], 1, "every batch needs the same keys"),
       ("fewer batches than ranks", "two_batches", [], 3, "gives 2 batch(es) for 3 ranks"),
       ("shuffled differently per rank", "shuffled_per_rank", [], 2, "gave different batches on different ranks"),
       ("padded DistributedSampler", "padded", SHARDED, 2, "counted twice in the mean"),
       ("one loader declared sharded", "loader", SHARDED, 2, "every rank's loader gave the same batches")]



def write(folder: Path) -> None:
    """``folder/batchmod.py``: import it as ``batchmod`` with ``folder`` on the path (or as cwd)."""
    (folder / "batchmod.py").write_text(BATCH_MODULE)
