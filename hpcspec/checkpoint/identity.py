"""What a checkpoint must match to be resumed: the configuration, the model and the data set.

A resumed run must compute the same Hessian with the same estimators, or "resume" silently mixes
two problems. So every manifest records the config (minus the keys that may change between a
run and its resumption), a hash of the model's initial parameters and buffers, and a hash of the
data set. The data hash is independent of the number of ranks — each sample's CRC is weighted by
its global index and the per-rank sums are added — so a job may resume on a different rank count.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from typing import Any

import torch
from torch import nn

from ..config import Config, may_change_keys, valid_keys
from ..parallel.comm import Communicator
from ..problem.shards import AnyShard, BatchShard

#: Config keys a resumed run may change: where and how fast it runs, not what it computes (each
#: key declares it: ``may_change`` in :mod:`hpcspec.config.schema`).
MAY_CHANGE = may_change_keys()
_MODULUS = (1 << 61) - 1


def config_identity(cfg: Config) -> dict[str, Any]:
    """The config keys that decide the numbers, as JSON values."""
    values: dict[str, Any] = {}
    for key in valid_keys():
        if key in MAY_CHANGE:
            continue
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        values[key] = node
    return json.loads(json.dumps(values))


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes and bytes), in module order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def data_fingerprint(shard: AnyShard, comm: Communicator) -> str:
    """A hash of the whole data set, the same whatever the number of ranks (collective).

    Batch data (:class:`~hpcspec.problem.shards.BatchShard`): each batch's CRC weighted by its index
    over all batches, so the batching counts too; every rank already holds every batch's CRC when
    the ranks share one loader. Per-rank loaders (``sharded``) hash each rank's batches in rank order:
    their batches depend on the rank count, so a resume must use the same one.
    """
    if isinstance(shard, BatchShard):
        local = sum((index + 1) * crc for index, crc in enumerate(shard.crcs)) % _MODULUS
        if not shard.sharded:  # every rank holds every batch's CRC: no collective needed (every rank skips it)
            return f"{shard.total}:{shard.num_batches}b:{local:016x}"
        parts = comm.allgather_object(local)
        combined = sum((rank + 1) * part for rank, part in enumerate(parts)) % _MODULUS
        return f"{shard.total}:{shard.num_batches}b/{comm.size}r:{combined:016x}"
    total = 0
    for offset in range(len(shard)):
        sample = (shard.inputs[offset].contiguous().numpy().tobytes()
                  + shard.targets[offset].contiguous().numpy().tobytes())
        total = (total + (shard.start + offset + 1) * zlib.crc32(sample)) % _MODULUS
    parts = comm.allgather_object(total)
    return f"{shard.total}:{sum(parts) % _MODULUS:016x}"


def describe_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """What differs between a checkpoint's identity and this run's, in one line; None if nothing."""
    differences = []
    saved_config, current_config = saved.get("config", {}), current["config"]
    for key in sorted(set(saved_config) | set(current_config)):
        if saved_config.get(key) != current_config.get(key):
            differences.append(f"{key}: {saved_config.get(key)!r} there, {current_config.get(key)!r} here")
    if not differences:
        if saved.get("model") != current["model"]:
            differences.append("the model's weights or buffers differ from the checkpointed run's "
                               f"(fingerprint {str(saved.get('model'))[:12]} there, {current['model'][:12]} here)")
        if saved.get("data") != current["data"]:
            differences.append(_data_difference(str(saved.get("data")), current["data"]))
    if saved.get("num_params") != current["num_params"]:
        differences.append(f"{saved.get('num_params')} parameters there, {current['num_params']} here")
    return "; ".join(differences[:4]) + (" …" if len(differences) > 4 else "") if differences else None


_DATA_PRINT = re.compile(r"^(?P<samples>\d+):(?:(?P<batches>\d+)b(?:/(?P<ranks>\d+)r)?:)?(?P<hash>[0-9a-f]+)$")


def _data_difference(saved: str, current: str) -> str:
    """How two :func:`data_fingerprint` values differ, in words."""
    there, here = _DATA_PRINT.match(saved), _DATA_PRINT.match(current)
    if there is None or here is None:
        return f"the data differs (fingerprint {saved[:12]} there, {current[:12]} here)"
    if there["ranks"] != here["ranks"] and there["ranks"] and here["ranks"]:
        return (f"the data comes from per-rank loaders (sharded), whose batches depend on the rank count: the "
                f"checkpoint was written on {there['ranks']} ranks, this run has {here['ranks']}; resume on "
                f"{there['ranks']} ranks")
    if there["ranks"] != here["ranks"]:
        return "the data was read by one shared loader in one run and by per-rank loaders (sharded) in the other"
    if there["samples"] != here["samples"]:
        return f"the data has {int(there['samples']):,} samples there, {int(here['samples']):,} here"
    if there["batches"] != here["batches"]:
        return f"the data comes in {there['batches']} batches there, {here['batches']} here"
    return "the data's values differ (same number of samples and batches)"
