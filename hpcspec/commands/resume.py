"""A run's checkpoint folder from one run to the next: refuse to start over an unfinished or a
finished run (unless ``--overwrite`` removes it first), find a finished run (``--resume`` is then a
no-op), continue from the newest verified checkpoint whose identity matches, restore its weights,
and mark a run complete once its results are on disk (the ``COMPLETE`` marker replaces the
checkpoints). The steps named "rank 0" are local steps: callers run them through
:func:`~hpcspec.parallel.agree.agreed`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointStore, Loaded, describe_mismatch
from ..config import Config, to_toml
from ..errors import InputError
from ..files.atomic import cause, file_digest, write_text_atomic
from ..files.outputs import check_checkpoint_folder, make_folder, remove_run
from ..parallel.agree import agreed, collective
from ..parallel.comm import Communicator, SingleProcess
from ..results.provenance import versions

#: Written in the checkpoint directory once a run's results are safely on disk.
COMPLETE = "COMPLETE"

log = logging.getLogger(__name__)


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """Every parameter of the model, also those outside ``model.params``: training before the
    analysis moved them too, and a resumed run must analyse the same weights."""
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in model.parameters()])


def restore_parameters(model: nn.Module, flat: Any) -> None:
    """Copy a checkpoint's flat weights (an array; a tensor in older checkpoints) into ``model``."""
    flat = torch.as_tensor(flat)
    params = list(model.parameters())
    if flat.numel() != sum(p.numel() for p in params):
        raise InputError(f"the checkpoint holds {flat.numel():,} parameter values but the model has "
                         f"{sum(p.numel() for p in params):,}: it was written by another version of hpcspec")
    pieces = torch.split(flat, [p.numel() for p in params])
    with torch.no_grad():
        for param, piece in zip(params, pieces):
            param.copy_(piece.view_as(param).to(param.dtype))


def stored_config(output: Path) -> str:
    """The config TOML of the run whose checkpoints (or COMPLETE marker) are in ``output/checkpoints``."""
    directory = output / "checkpoints"
    store = CheckpointStore(directory, SingleProcess())
    for _, path in store.candidates():
        try:
            return store.read_manifest(path)["meta"]["config_toml"]
        except (ValueError, KeyError):
            continue
    try:
        return json.loads((directory / COMPLETE).read_text())["config_toml"]
    except (OSError, ValueError, KeyError):
        raise InputError(f"{str(output)!r} holds no checkpoint to resume (no readable manifest in "
                         f"{str(directory)!r})") from None


def checkpoint_dir_ready(store: CheckpointStore, comm: Communicator, force: bool = False) -> None:
    """Rank 0: create the checkpoint directory now, so a bad path fails before any work, and refuse
    one holding what hpcspec did not write (``force``: ``--force-output``, for names it never uses)."""
    if comm.rank != 0:
        return
    check_checkpoint_folder(store.directory, force=force)
    make_folder(store.directory, "checkpoint directory")
    if not os.access(store.directory, os.W_OK | os.X_OK):
        raise InputError(f"checkpoint directory {str(store.directory)!r} is not writable")


def check_fresh_start(store: CheckpointStore, comm: Communicator) -> None:
    """Rank 0: refuse to start over a run that could be resumed (its progress would be pruned)."""
    if comm.rank != 0:
        return
    found = store.committed()
    if found and not (store.directory / COMPLETE).exists():
        raise InputError(f"{str(store.directory)!r} holds checkpoints of an unfinished run ({found[0][1].name}); "
                         "add --resume to continue it, or --overwrite to delete it and start over")


def remove_previous_run(output: Path, store: CheckpointStore, comm: Communicator) -> list[str]:
    """Rank 0, ``--overwrite``: remove every file of the run in ``output`` (only hpcspec's)."""
    return remove_run(output, store.directory) if comm.rank == 0 else []


def finished_already(store: CheckpointStore, identity: dict[str, Any], output: Path, resume: bool,
               comm: Communicator) -> bool:
    """Rank 0: whether the run in ``output`` already finished with this identity (``--resume``:
    nothing to do). A finished run with other settings, or any finished run without ``--resume``,
    is refused — it would be overwritten — naming the differing keys."""
    if comm.rank != 0:
        return False
    marker = store.directory / COMPLETE
    try:
        saved = json.loads(marker.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        saved = {}
    fix = "use another --output, or add --overwrite to replace it"
    problem = describe_mismatch(saved, identity) if saved else "its COMPLETE marker is unreadable"
    if problem is not None:
        raise InputError(f"{str(output)!r} holds a finished run with other settings ({problem}); {fix}")
    if not resume:
        raise InputError(f"{str(output)!r} holds a finished run of these settings (results.h5); add --resume to "
                         f"keep it (nothing to recompute), or {fix}")
    results = output / "results.h5"
    if results.is_file():
        recorded = saved.get("results_digest")
        try:
            found = file_digest(results)
        except OSError as exc:
            found = f"unreadable ({cause(exc)})"
        if recorded is None or found == recorded:  # (markers of earlier versions record none)
            return True
        log.warning("%s is not the file this run finished with (size:CRC-32 %s recorded, %s now): damaged or "
                    "changed since; computing the results again", results, recorded, found)
    marker.unlink()  # the results were deleted or damaged since: the same run computes them again
    return False


def resume_from(store: CheckpointStore, comm: Communicator, identity: dict[str, Any]) -> Loaded | None:
    """The newest verified checkpoint, checked against this run's identity (collective: the load is
    a collective step, whose failures every rank raises together; the identity check is local)."""
    loaded = collective(comm, store.load)
    if loaded is None:
        log.info("no checkpoint in %s: starting from the beginning", store.directory)
        return None
    agreed(comm, _check_identity, loaded, identity)
    log.info("resuming from checkpoint %s (written by %d rank%s)", loaded.path, loaded.world_size,
             "" if loaded.world_size == 1 else "s")
    here = {k: v for k, v in versions(comm).items() if k != "communicator"}
    changed = [f"{k} {v} there, {here.get(k)} here" for k, v in loaded.meta.get("versions", {}).items()
               if here.get(k) != v]
    if changed:
        log.warning("the checkpoint was written with other library versions (%s): the resumed run agrees with an "
                    "uninterrupted one to rounding, not bitwise", "; ".join(changed))
    return loaded


def _check_identity(loaded: Loaded, identity: dict[str, Any]) -> None:
    saved = loaded.meta.get("identity", {}).get("config", {}).get("model.stages", 1)
    stages = identity["config"].get("model.stages", 1)
    if saved != stages:  # named on its own: the generic message would list it among other keys
        raise InputError(f"checkpoint {str(loaded.path)!r} was written with the model split into {saved} pipeline "
                         f"stage(s), this run into {stages}: the stage split differs, and a checkpoint resumes only "
                         f"on its own split; resume with --set model.stages={saved} on any multiple of {saved} ranks "
                         "(the number of data shards may change)")
    problem = describe_mismatch(loaded.meta.get("identity", {}), identity)
    if problem is not None:
        raise InputError(f"checkpoint {str(loaded.path)!r} is of another run ({problem}); resume with the "
                         "settings it was written with, or use another output directory")


def mark_complete(store: CheckpointStore, comm: Communicator, identity: dict[str, Any], cfg: Config) -> None:
    """Rank 0, after the results are on disk: the COMPLETE marker, then drop the checkpoints."""
    if comm.rank != 0:
        return
    try:
        store.directory.mkdir(parents=True, exist_ok=True)
        results = Path(cfg.output) / "results.h5"
        digest = {"results_digest": file_digest(results)} if results.is_file() else {}
        write_text_atomic(store.directory / COMPLETE,
                          json.dumps({**identity, **digest, "config_toml": to_toml(cfg)}, sort_keys=True))
    except OSError as exc:
        raise InputError(f"cannot write {str(store.directory / COMPLETE)!r} ({exc.strerror})") from None
    store.clear_local()
