"""Checkpoints on disk: per-rank HDF5 files of vector slices, a rank-0 manifest, atomic commits.

Layout of a checkpoint directory (``<output>/checkpoints`` by default)::

    LATEST                 name of the newest committed checkpoint, replaced by atomic rename
    step-00000007/         a committed checkpoint
        rank-00000.h5      rank 0's slice [lo, hi) of every vector, and the small arrays
        rank-00001.h5      rank 1's slice of every vector
        manifest.json      files with sizes and SHA-256, world size, identity, scalars; self-checksummed
    step-00000008.tmp/     a checkpoint being written (deleted at the next start if a run died here)
        .hpcspec-owned     in every step folder, written first: the mark that hpcspec made it
    step-00000006.damaged/ a checkpoint that failed verification (kept for inspection, never read)

Commit protocol (docs/architecture.md, "Checkpoints"): every rank writes and fsyncs its file in ``step-N.tmp/``; the ranks
agree that every write succeeded (one gather of sizes and checksums); rank 0 writes and fsyncs
the manifest, renames the directory to ``step-N``, fsyncs the parent, and replaces ``LATEST``;
then it prunes committed checkpoints beyond the newest ``keep``. The previous good checkpoint is
never touched before the new one is committed, so a kill at any moment leaves at least one.

Loading verifies before it trusts: the manifest's own checksum, then every file's size and
SHA-256 (each rank checks a share of the files).

Only what hpcspec made is ever deleted here (:mod:`hpcspec.files.outputs`): step folders holding the
``.hpcspec-owned`` marker, ``.hpcspec-tmp-*`` temporaries and the exact names of older versions'
temporaries (``LATEST.tmp``); a user's ``notes.tmp/`` in the same folder stays. A damaged checkpoint is renamed ``*.damaged``
and the next older one is tried. Vectors are re-assembled from the slices by offset, so a
checkpoint written by R ranks loads on any number of ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch

from ..files.atomic import WriteFailed, cause, fsync_dir, fsync_file, write_text_atomic
from ..files.hdf5 import create_hdf5
from ..files.outputs import mark_owned, owned_step, remove_step, remove_temporaries
from ..parallel.agree import AgreedInputError, agreed
from ..parallel.comm import Communicator
from ..parallel.vectors import LocalSlice, slice_bounds
from ..solvers.base import SCALARS, State, check_state

FORMAT = 1
MANIFEST = "manifest.json"
LATEST = "LATEST"
_STEP = re.compile(r"^step-(\d{8})$")
#: Test hook: seconds each rank r waits (r × this) before writing its file, and rank 0 waits
#: before the directory rename and before replacing LATEST, so a test can kill the job there.
TEST_PAUSE_ENV = "HPCSPEC_TEST_CHECKPOINT_PAUSE"
LOCKING = {"auto": None, "true": True, "false": False, "best-effort": "best-effort"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Commit:
    """A committed checkpoint: its directory, sequence number, total bytes and write time."""

    path: Path
    number: int
    nbytes: int
    seconds: float


@dataclass(frozen=True)
class Loaded:
    """A verified checkpoint read back: the state, the manifest's ``meta`` and where it came from."""

    state: State
    meta: dict[str, Any]
    path: Path
    number: int
    world_size: int
    size: int


#: Module names the tests patch to inject a failed write (a full disk) at a chosen moment.
_fsync_dir = fsync_dir
_fsync_file = fsync_file


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _pause(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


class CheckpointStore:
    """Commits and loads checkpoints in one directory (every method is collective).

    Args:
        directory: the checkpoint directory (created on first commit); shared by all ranks.
        comm: the ranks; rank 0 writes the manifest and makes every decision.
        keep: committed checkpoints kept (≥ 1; the default 2 survives a damaged newest one).
        locking: HDF5 file locking when reading, one of :data:`LOCKING` (``false`` for Lustre/NFS
            without locks); files are written through :func:`~hpcspec.files.hdf5.create_hdf5`.
    """

    def __init__(self, directory: Path, comm: Communicator, *, keep: int = 2, locking: str = "auto") -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        if locking not in LOCKING:
            raise ValueError(f"locking must be one of {', '.join(LOCKING)}, got {locking!r}")
        self.directory = Path(directory)
        self.comm = comm
        self.keep = keep
        self._locking = LOCKING[locking]
        self._pause = float(os.environ.get(TEST_PAUSE_ENV, "0") or 0)
        self.next_number = 1
        #: Every rank's slice of the long vectors when they are not ``slice_bounds(P, r, R)``
        #: (a pipelined run's stage slices, :func:`hpcspec.parallel.vectors.stage_bounds`).
        self.bounds: list[tuple[int, int]] | None = None

    def slice_of(self, size: int) -> tuple[int, int]:
        """This rank's slice ``[lo, hi)`` of a long vector of length ``size``: what it writes and reads."""
        if self.bounds is not None and self.bounds[-1][1] == size:
            return self.bounds[self.comm.rank]
        return slice_bounds(size, self.comm.rank, self.comm.size)

    # -- files --------------------------------------------------------------------------------

    def _h5(self, path: Path, mode: str) -> h5py.File:
        if self._locking is None:
            return h5py.File(path, mode)
        return h5py.File(path, mode, locking=self._locking)

    def committed(self) -> list[tuple[int, Path]]:
        """Committed checkpoint directories, newest first (local listing; no verification)."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _STEP.match(p.name)) and p.is_dir()]
        return sorted(found, reverse=True)

    def remove_stale(self) -> list[str]:
        """Delete the temporaries a killed hpcspec left behind — owned ``step-N.tmp/`` folders and
        ``.hpcspec-tmp-*`` files, nothing else (rank 0 decides; collective). Returns their names."""
        removed = agreed(self.comm, self._remove_temporaries)  # a failure on rank 0 is every rank's
        return self.comm.bcast_object(removed)

    def _remove_temporaries(self) -> list[str]:
        return remove_temporaries(self.directory, checkpoints=True) if self.comm.rank == 0 else []

    # -- commit -------------------------------------------------------------------------------

    def save(self, state: State, size: int, meta: dict[str, Any]) -> Commit:
        """Commit ``state`` (vectors of length ``size`` split by rank) as the next checkpoint.

        Raises :class:`InputError` on every rank if any rank could not write (the previous
        checkpoint stays as it was).
        """
        check_state(state, size)  # a value the store cannot hold is a programming error: fail before writing
        started = time.perf_counter()
        comm = self.comm
        number = comm.bcast_object(self._free_number() if comm.rank == 0 else None)
        name = f"step-{number:08d}"
        tmp = self.directory / f"{name}.tmp"
        lo, hi = self.slice_of(size)
        for key, value in state.items():
            if isinstance(value, LocalSlice) and (value.lo, value.hi) != (lo, hi):
                raise ValueError(f"state entry {key!r} holds [{value.lo}, {value.hi}), not rank {comm.rank}'s "
                                 f"slice [{lo}, {hi})")
        filename = f"rank-{comm.rank:05d}.h5"
        entry: dict[str, Any] | None = None
        error = None
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            mark_owned(tmp)  # before any data: a half-written step folder is still recognisably ours
            _pause(self._pause * comm.rank)
            with create_hdf5(tmp / filename) as f:
                f.attrs.update({"rank": comm.rank, "lo": lo, "hi": hi, "size": size})
                for key, value in state.items():
                    if isinstance(value, LocalSlice):
                        f.create_dataset(f"vectors/{key}", data=value.values.contiguous().numpy())
                    elif isinstance(value, torch.Tensor):
                        f.create_dataset(f"vectors/{key}", data=value[..., lo:hi].contiguous().numpy())
                    elif isinstance(value, np.ndarray) and comm.rank == 0:
                        f.create_dataset(f"arrays/{key}", data=value)
            _fsync_file(tmp / filename)
            entry = {"name": filename, "rank": comm.rank, "lo": lo, "hi": hi,
                     "bytes": (tmp / filename).stat().st_size, "sha256": _sha256(tmp / filename)}
        except (OSError, RuntimeError) as exc:  # h5py reports a full disk as RuntimeError
            error = f"cannot write checkpoint file {str(tmp / filename)!r} ({cause(exc)})"
        gathered = comm.allgather_object((entry, error))
        errors = [(rank, text) for rank, (_, text) in enumerate(gathered) if text]
        if errors:
            if comm.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            rank, text = errors[0]
            raise AgreedInputError(f"{text} on rank {rank}; the previous checkpoint is kept")
        commit_error = None
        if comm.rank == 0:
            try:
                self._commit(tmp, name, [e for e, _ in gathered], state, size, meta, number)
            except (OSError, RuntimeError) as exc:
                commit_error = f"cannot commit checkpoint {str(tmp)!r} ({cause(exc)})"
                shutil.rmtree(tmp, ignore_errors=True)  # the temporary just made; committed ones stay
        commit_error = comm.bcast_object(commit_error)
        if commit_error:
            raise AgreedInputError(commit_error + "; the previous checkpoint is kept")
        self.next_number = number + 1
        nbytes = sum(e["bytes"] for e, _ in gathered)
        return Commit(self.directory / name, number, nbytes, time.perf_counter() - started)

    def _free_number(self) -> int:
        """Rank 0: the next step number whose folder names are unused (a user's ``step-N.tmp/``
        is never written into, renamed or pruned)."""
        number = self.next_number
        while any((self.directory / f"step-{number:08d}{suffix}").exists() for suffix in ("", ".tmp")):
            number += 1
        return number

    def _commit(self, tmp: Path, name: str, files: Sequence[dict[str, Any]], state: State, size: int,
                meta: dict[str, Any], number: int) -> None:
        """Rank 0: manifest, fsync, rename, LATEST, prune."""
        vectors = {k: list(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
        sharded = sorted(k for k, v in state.items() if isinstance(v, LocalSlice))
        vectors.update({k: [*state[k].values.shape[:-1], size] for k in sharded})
        arrays = {k: [v.dtype.str, list(v.shape)] for k, v in state.items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in state.items() if isinstance(v, SCALARS)}
        body = {"format": FORMAT, "number": number, "world_size": self.comm.size, "size": size,
                "files": list(files), "vectors": vectors, "sharded": sharded, "arrays": arrays, "scalars": scalars, "meta": meta,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        manifest = {**body, "checksum": hashlib.sha256(_canonical(body).encode()).hexdigest()}
        with open(tmp / MANIFEST, "w") as handle:
            json.dump(manifest, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(tmp)
        _pause(self._pause)
        final = self.directory / name
        os.rename(tmp, final)
        _fsync_dir(self.directory)
        _pause(self._pause)
        try:
            write_text_atomic(self.directory / LATEST, name + "\n")
        except WriteFailed as exc:  # the step is committed; loading finds it without LATEST
            raise OSError(str(exc)) from None
        _fsync_dir(self.directory)
        for _, old in self.committed()[self.keep:]:
            if owned_step(old):
                remove_step(old)

    def clear_local(self) -> None:
        """Delete every committed checkpoint and LATEST (rank 0 only, no collective): for after the
        results are safely written."""
        if not self.directory.is_dir():
            return
        (self.directory / LATEST).unlink(missing_ok=True)
        for _, path in self.committed():
            if owned_step(path):
                remove_step(path)

    # -- load ---------------------------------------------------------------------------------

    def candidates(self) -> list[tuple[int, Path]]:
        """Committed checkpoints in the order to try: LATEST's, then the others newest first."""
        found = self.committed()
        try:
            latest = (self.directory / LATEST).read_text().strip()
        except OSError:
            latest = ""
        first = [c for c in found if c[1].name == latest]
        return first + [c for c in found if c[1].name != latest]

    def read_manifest(self, path: Path) -> dict[str, Any]:
        """The manifest of ``path``, or ValueError naming what is wrong with it."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise ValueError("manifest.json is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"manifest.json is unreadable ({exc})") from None
        if not isinstance(manifest, dict) or "checksum" not in manifest:
            raise ValueError("manifest.json has no checksum")
        body = {k: v for k, v in manifest.items() if k != "checksum"}
        if hashlib.sha256(_canonical(body).encode()).hexdigest() != manifest["checksum"]:
            raise ValueError("manifest.json does not match its checksum")
        if manifest.get("format") != FORMAT:
            raise ValueError(f"manifest format {manifest.get('format')!r} is not {FORMAT}")
        return manifest

    def _verify_files(self, path: Path, files: list[dict[str, Any]]) -> str | None:
        """Check this rank's share of the files (size, then SHA-256); the first problem, or None."""
        for index in range(self.comm.rank, len(files), self.comm.size):
            entry = files[index]
            file = path / entry["name"]
            try:
                if file.stat().st_size != entry["bytes"]:
                    return f"{entry['name']} has {file.stat().st_size} bytes, the manifest says {entry['bytes']}"
            except FileNotFoundError:
                return f"{entry['name']} is missing"
            if _sha256(file) != entry["sha256"]:
                return f"{entry['name']} does not match its checksum"
        return None

    def load(self) -> Loaded | None:
        """The newest checkpoint that verifies, or None if there is none (collective).

        Damaged checkpoints met on the way are renamed ``*.damaged`` with a warning. Whether the
        checkpoint belongs to this run is the caller's question (the manifest's ``meta``).
        """
        comm = self.comm
        candidates = comm.bcast_object(self.candidates() if comm.rank == 0 else None)
        self.next_number = max([n for n, _ in candidates], default=0) + 1
        for number, path in candidates:
            manifest, problem = None, None
            if comm.rank == 0:
                try:
                    manifest = self.read_manifest(path)
                except ValueError as exc:
                    problem = str(exc)
            manifest, problem = comm.bcast_object((manifest, problem))
            if problem is None:
                problems = [p for p in comm.allgather_object(self._verify_files(path, manifest["files"])) if p]
                problem = problems[0] if problems else None
            if problem is not None:
                if comm.rank == 0:
                    log.warning("checkpoint %s is damaged (%s); trying an older one", path, problem)
                    try:
                        os.rename(path, path.with_name(path.name + ".damaged"))
                    except OSError:
                        pass
                comm.bcast_object(None)
                continue
            state = self._read_state(path, manifest)
            return Loaded(state=state, meta=manifest["meta"], path=path, number=number,
                          world_size=manifest["world_size"], size=manifest["size"])
        return None

    def _read_state(self, path: Path, manifest: dict[str, Any]) -> State:
        """Arrays and scalars, and the vectors: whole when they were saved whole, and this rank's
        :class:`LocalSlice` (for today's rank count) when they were saved sharded. Each rank opens
        only the files it needs: rank 0's (for the arrays) and those overlapping its slices."""
        state: State = dict(manifest["scalars"])
        size = manifest["size"]
        sharded = set(manifest.get("sharded", []))
        mine = self.slice_of(size)
        wanted = {key: (0, size) if key not in sharded else mine for key in manifest["vectors"]}
        for key, shape in manifest["vectors"].items():
            lo, hi = wanted[key]
            state[key] = torch.empty([*shape[:-1], hi - lo], dtype=torch.float64)
        for entry in manifest["files"]:
            lo, hi = entry["lo"], entry["hi"]
            overlapping = [key for key, (a, b) in wanted.items() if max(lo, a) < min(hi, b)]
            if not overlapping and entry["rank"] != 0:
                continue
            with self._h5(path / entry["name"], "r") as f:
                for key in overlapping:
                    a, b = wanted[key]
                    begin, end = max(lo, a), min(hi, b)
                    state[key][..., begin - a:end - a] = torch.from_numpy(f[f"vectors/{key}"][..., begin - lo:end - lo])
                if entry["rank"] == 0:
                    for key in manifest["arrays"]:
                        state[key] = f[f"arrays/{key}"][...]
        for key in sharded:
            state[key] = LocalSlice(state[key], *mine, size)
        return state
