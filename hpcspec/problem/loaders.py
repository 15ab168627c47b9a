"""A ``module:callable``'s batches as a rank's data: a DataLoader, a list of ``(x, y)`` pairs, or
dict batches (``{"input_ids": …, "labels": …}``), materialised once into a :class:`BatchShard`.

How the batches are split over R ranks:

- **One loader for all ranks** (the default, ``data.sharded = false``): every rank builds the same
  loader and iterates it once; rank r keeps the contiguous block of whole batches
  ``[r·B//R, (r+1)·B//R)`` of the B batches (:func:`~hpcspec.problem.data.shard_range` over batches).
  A batch is never split, so every batch is the same on any rank count (what ``bn_mode = "train"``
  and ``reduction = "ordered"`` need), and the Hessian is that of the mean over all samples of all
  batches. Every rank must see the same batches in the same order: a shuffling loader needs a
  seeded generator, and the ranks check a CRC of every batch (:func:`agree_batches`). B must be at
  least R (every rank one batch).
- **A loader per rank** (``data.sharded = true``): the callable returns this rank's loader, e.g. with
  a ``DistributedSampler(dataset, num_replicas=R, rank=r, shuffle=False)``, and the rank keeps all
  its batches. The shards must be disjoint and together cover the data set once: the sampler's
  ``num_replicas`` and ``rank`` must be the run's, no padding (torch's ``DistributedSampler`` repeats
  samples to make the data set divisible by R unless ``drop_last``, which drops them instead: both
  are refused, so use a data set whose size R divides), ``drop_last = False`` on the loader, and
  shuffling off or with a fixed seed. Which samples share a batch then depends on R.

The count each mean divides by is taken from the targets batch by batch (:mod:`hpcspec.problem.losses`),
so uneven batches weigh exactly. A generator (one pass only) and a loader with no batches are refused,
as are batches whose keys differ, non-finite values, and ``drop_last = True`` when it leaves samples out.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..parallel.agree import AgreedInputError
from ..parallel.comm import Communicator
from .batches import split_batch
from .shards import AnyShard, BatchShard


def is_batch_data(made: Any) -> bool:
    """True for what a data callable returns as batches rather than as one ``(x, y)`` pair or a
    Dataset: a DataLoader or other iterable of batches, or a list/tuple of pairs or dicts."""
    if isinstance(made, (torch.Tensor, np.ndarray, str, bytes, Mapping, torch.utils.data.Dataset)):
        return False
    if isinstance(made, (tuple, list)):
        return all(isinstance(item, (Mapping, tuple, list)) for item in made)  # an empty list too: refused later
    return isinstance(made, Iterable)


def batch_shard(made: Any, spec: str, rank: int, size: int, *, sharded: bool = False,
                target_key: str = "labels", normalize: str = "auto") -> BatchShard:
    """This rank's batches of ``made`` (local: no collective; see the module docstring)."""
    if normalize == "channel":
        raise InputError(f"data.normalize = 'channel' needs the whole data set at once; data {spec!r} gives "
                         "batches: normalise inside the loader, or use data.normalize = 'none'")
    if iter(made) is made:
        raise InputError(f"data {spec!r} returned a one-pass iterator ({type(made).__name__}): every product is "
                         "a pass over the data; return a DataLoader or a list of batches")
    _check_loader(made, spec, rank, size, sharded)
    try:
        expected: int | None = len(made)
    except TypeError:
        expected = None
    if not sharded and expected is not None and 0 < expected < size:
        raise _too_few(spec, expected, size)
    block = (0, 2**62) if sharded or expected is None else _block(expected, rank, size)
    kept: list[tuple[Any, torch.Tensor]] = []
    crcs: list[int] = []
    sizes: list[int] = []
    keys: tuple[str, ...] | None = None
    for index, batch in enumerate(made):
        try:
            inputs, targets = split_batch(batch, target_key)
        except InputError as exc:
            raise InputError(f"data {spec!r}, batch {index}: {exc}") from None
        found = _keys(inputs)
        if keys is None:
            keys = found
        elif found != keys:
            raise InputError(f"data {spec!r}: batch {index} has input keys {list(found)} but batch 0 has "
                             f"{list(keys)}: every batch needs the same keys")
        count = _check_batch(inputs, targets, spec, index)
        crcs.append(batch_crc(inputs, targets))
        sizes.append(count)
        if block[0] <= index < block[1]:
            kept.append((inputs, targets))
    if not crcs:
        raise InputError(f"data {spec!r} gave no batches{f' on rank {rank}' if sharded else ''} (an empty "
                         "loader or list): it must hold at least one batch")
    if expected is not None and expected != len(crcs):
        raise InputError(f"data {spec!r}: len() says {expected} batches but iterating gave {len(crcs)}")
    if sharded:
        return BatchShard(tuple(kept), 0, len(kept), -1, sum(sizes), -1, tuple(crcs), sharded=True)
    if len(crcs) < size:
        raise _too_few(spec, len(crcs), size)
    start, stop = _block(len(crcs), rank, size)
    kept = kept if expected is not None else kept[start:stop]
    return BatchShard(tuple(kept), start, stop, len(crcs), sum(sizes[start:stop]), sum(sizes), tuple(crcs))


def _block(num_batches: int, rank: int, size: int) -> tuple[int, int]:
    """Batches ``[r·B//R, (r+1)·B//R)``: contiguous, counts differing by at most one."""
    return rank * num_batches // size, (rank + 1) * num_batches // size


def _too_few(spec: str, num_batches: int, size: int) -> InputError:
    return InputError(f"data {spec!r} gives {num_batches} batch(es) for {size} ranks: every rank needs at least "
                      "one whole batch; use smaller batches or fewer ranks")


def _check_loader(made: Any, spec: str, rank: int, size: int, sharded: bool) -> None:
    """Refuse DataLoader settings that would leave samples out or count some twice."""
    if not isinstance(made, torch.utils.data.DataLoader):
        return
    sampler = made.sampler
    if isinstance(sampler, torch.utils.data.DistributedSampler):
        if not sharded:
            raise InputError(f"data {spec!r} uses a DistributedSampler (each rank its own part): set "
                             "data.sharded = true, or return one loader over the whole data set")
        if (sampler.num_replicas, sampler.rank) != (size, rank):
            raise InputError(f"data {spec!r}: the DistributedSampler has num_replicas = {sampler.num_replicas}, "
                             f"rank = {sampler.rank}, but this is rank {rank} of {size}: pass the run's")
        samples = len(sampler.dataset)  # type: ignore[arg-type]
        if sampler.total_size != samples:
            what = (f"drops {samples - sampler.total_size} sample(s)" if sampler.drop_last
                    else f"repeats {sampler.total_size - samples} sample(s), counted twice in the mean")
            raise InputError(f"data {spec!r}: to share {samples} samples among {size} ranks the DistributedSampler "
                             f"{what}: use a data set whose size {size} divides")
    try:
        left = len(sampler) % made.batch_size if made.drop_last and made.batch_size else 0  # type: ignore[arg-type]
    except TypeError:  # an IterableDataset: no length to check
        left = 0
    if left:
        raise InputError(f"data {spec!r}: the DataLoader's drop_last = True leaves out {left} sample(s): "
                         "use drop_last = False (a short last batch is weighted exactly)")


def _keys(inputs: Any) -> tuple[str, ...]:
    """The keyword names of dict inputs (``()`` for a tensor or positional inputs)."""
    return tuple(sorted(map(str, inputs))) if isinstance(inputs, Mapping) else ()


def _tensors(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, Mapping):
        return [t for key in sorted(inputs, key=str) for t in _tensors(inputs[key])]
    if isinstance(inputs, (tuple, list)):
        return [t for value in inputs for t in _tensors(value)]
    return [inputs] if isinstance(inputs, torch.Tensor) else []


def _check_batch(inputs: Any, targets: torch.Tensor, spec: str, index: int) -> int:
    """The batch's sample count (the targets' first dimension), after refusing non-finite values."""
    for part in (*_tensors(inputs), targets):
        if part.dtype.is_floating_point and not bool(torch.isfinite(part).all()):
            raise InputError(f"data {spec!r}: batch {index} holds NaN or infinite values")
    count = int(targets.shape[0]) if targets.ndim else 1
    if count == 0:
        raise InputError(f"data {spec!r}: batch {index} holds no samples")
    return count


def batch_crc(inputs: Any, targets: torch.Tensor) -> int:
    """CRC-32 of a batch: keys, dtypes, shapes and bytes of every tensor (non-tensors by repr)."""
    crc = zlib.crc32(repr(_keys(inputs)).encode())
    values = sorted(inputs.items(), key=lambda item: str(item[0])) if isinstance(inputs, Mapping) else [("", inputs)]
    for key, value in [*values, ("targets", targets)]:
        for part in _tensors(value) or [value]:
            if isinstance(part, torch.Tensor):
                data = part.detach().cpu().contiguous()
                crc = zlib.crc32(f"{key}:{data.dtype}:{tuple(data.shape)};".encode(), crc)
                crc = zlib.crc32(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"", crc)
            else:  # a keyword argument that is not a tensor (a flag, a string)
                crc = zlib.crc32(f"{key}={part!r};".encode(), crc)
    return crc


def agree_batches(shard: AnyShard, comm: Communicator, spec: str) -> AnyShard:
    """Check over ranks that batch data is consistent, and count it (collective; a :class:`Shard`
    passes through after the same one gather, so every rank takes the same path).

    One loader for all ranks: every rank must have seen the same batches (their CRCs). A loader per
    rank: the input keys must agree, the ranks must not all hold the same batches (a loader over
    the whole data set declared ``data.sharded``), and ``num_batches``/``total`` are summed. Fails
    symmetrically (decided on gathered values) with :class:`AgreedInputError`.
    """
    local = None
    if isinstance(shard, BatchShard):
        keys = _keys(shard.batches[0][0]) if shard.batches else ()
        local = (len(shard.crcs), zlib.crc32(np.asarray(shard.crcs, dtype=np.uint32).tobytes()), shard.samples, keys)
    found = comm.allgather_object(local)
    if not isinstance(shard, BatchShard):
        return shard
    if not shard.sharded:
        if len({(entry[0], entry[1], entry[3]) for entry in found}) > 1:  # the samples held differ, of course
            counts = ", ".join(f"rank {r}: {entry[0]}" for r, entry in enumerate(found))
            raise AgreedInputError(f"data {spec!r} gave different batches on different ranks (batches {counts}): a "
                                   "shuffling DataLoader needs a seeded generator (generator=torch.Generator()."
                                   "manual_seed(0)), and a loader that is already per rank needs data.sharded = true")
        return shard
    if len({entry[3] for entry in found}) > 1:
        raise AgreedInputError(f"data {spec!r}: the ranks' batches have different input keys "
                               f"({', '.join(f'rank {r}: {list(e[3])}' for r, e in enumerate(found))})")
    if comm.size > 1 and len({entry[:2] for entry in found}) == 1:
        raise AgreedInputError(f"data {spec!r}: data.sharded = true but every rank's loader gave the same batches: "
                               "return this rank's part (e.g. a DistributedSampler with the run's num_replicas "
                               "and rank), or set data.sharded = false")
    return dataclasses.replace(shard, num_batches=sum(e[0] for e in found), total=sum(e[2] for e in found))
