"""What hpcspec writes and deletes: atomic writes, owned names, the output folder's lock.

Every file hpcspec writes goes through :func:`atomic_path`: a temporary sibling named
``.hpcspec-tmp-<name>.<pid>.<random>`` is written, fsynced and renamed onto the final name, then
the folder is fsynced. Any failure of the write — ``OSError``, or the ``RuntimeError`` h5py raises
for "No space left on device" — removes that one temporary and becomes :class:`WriteFailed`, an
:class:`~hpcspec.errors.InputError` naming the path and the cause (exit 2, agreed on every rank).

Ownership: hpcspec deletes only what carries a mark it alone uses —

- files whose name starts with :data:`TMP_PREFIX` (its temporaries);
- checkpoint folders ``step-NNNNNNNN[.tmp]`` holding the :data:`OWNED` marker file (written into
  every step folder before anything else);
- in an output folder, the files of :data:`RUN_FILES` (only with ``--overwrite``).

An *hpcspec run folder* is a folder that is absent, empty, holds the :data:`RUN_MARKER` file
(written when hpcspec first claims it), or holds nothing but names hpcspec writes
(:func:`foreign_entries` is empty: a folder written by a version before the marker). Any other
folder (``/``, a home directory, a folder with a user's files) is refused unless
``force_output`` (``--force-output``) is set.

One run per folder: rank 0 takes :class:`FolderLock` on ``<output>/.hpcspec-lock`` before any
other write — ``fcntl.flock`` where the file system has it, else (NFS/Lustre without locks:
``ENOLCK``, ``EOPNOTSUPP``) an ``O_CREAT | O_EXCL`` lock file holding the same record. The
record is the holder's host, pid and start time; a fallback lock whose pid no longer exists on
this host is stale and is broken (renamed aside), one held from another host is reported and
must be removed by hand if that host's run is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import InputError

#: The prefix of every temporary file hpcspec writes (and the only files start-up cleanup removes).
TMP_PREFIX = ".hpcspec-tmp-"
#: A marker file inside every checkpoint step folder hpcspec creates.
OWNED = ".hpcspec-owned"
#: A marker file in every output folder hpcspec has claimed.
RUN_MARKER = ".hpcspec-run"
#: The lock file of an output folder.
LOCK_FILE = ".hpcspec-lock"
#: Names of the temporaries earlier versions wrote in a checkpoint folder (exact names only).
LEGACY_CHECKPOINT_TEMPORARIES = ("LATEST.tmp", "COMPLETE.tmp")
#: What ``run`` (and ``--per-block``, ``track``) writes in its output folder: ``--overwrite`` removes
#: these (the folders only through :func:`remove_run`'s ownership rules).
RUN_FILES = ("results.h5", "summary.json", "density.png", "landscape_1d.png", "landscape_2d.png",
             "track.h5", "blocks.h5", "blocks.png", "track_*.png")
#: Sub-folders of a run: the checkpoints and the sweeps' sub-runs.
RUN_FOLDERS = ("checkpoints", "steps", "blocks")
#: What ``train`` writes in its output folder (it counts as hpcspec's, but ``--overwrite`` keeps it).
TRAIN_FILES = ("step_*.pt", "train.toml", "train_state.pt", "train_log.json")
_STEP_FOLDER = re.compile(r"^step-\d{8}(\.tmp)?$")
#: Temporaries of earlier versions: ``.results.h5.tmp-1234`` and ``.density.png.1234.tmp``.
_LEGACY_TMP = re.compile(r"^\.(?P<name>.+?)(\.tmp-\d+|\.\d+\.tmp)$")
#: errno values meaning "this file system has no flock": fall back to an exclusive lock file.
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

log = logging.getLogger(__name__)


class WriteFailed(InputError):
    """A file could not be written (full disk, quota, permissions); the message names path and cause."""


def cause(exc: BaseException) -> str:
    """The short reason of an I/O failure: ``strerror`` for an OSError, the text otherwise."""
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).strip()


def temporary_for(path: Path) -> Path:
    """A fresh temporary sibling of ``path`` in the pattern only hpcspec uses."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(3)}")


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a written file to stable storage."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; on success fsynced and renamed onto ``path``.

    The caller writes (and closes) the temporary inside the block. Any OSError or RuntimeError
    there or in the rename removes the temporary and raises :class:`WriteFailed`; the previous
    ``path``, if any, is untouched. Other exceptions pass through, the temporary removed too.
    """
    path = Path(path)
    tmp = temporary_for(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as exc:
        raise WriteFailed(f"cannot write {str(path)!r} ({cause(exc)})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """A small text file (a pointer, a marker, JSON), written atomically."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


# -- ownership ---------------------------------------------------------------------------------

def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def is_hpcspec_name(name: str) -> bool:
    """Whether an output-folder entry has a name hpcspec writes there."""
    return (name.startswith(".hpcspec-") or _matches(name, RUN_FILES + RUN_FOLDERS + TRAIN_FILES)
            or _legacy_temporary(name))


def _legacy_temporary(name: str) -> bool:
    """``.results.h5.tmp-1234``-style temporaries of earlier versions, for names hpcspec writes."""
    match = _LEGACY_TMP.match(name)
    return match is not None and _matches(match.group("name"), RUN_FILES + TRAIN_FILES)


def foreign_entries(folder: Path) -> list[str]:
    """Entries of ``folder`` that are not hpcspec's (empty when it is an hpcspec run folder)."""
    if not folder.is_dir():
        return []
    names = sorted(os.listdir(folder))
    if RUN_MARKER in names:
        return []
    return [name for name in names if not is_hpcspec_name(name)]


def mark_owned(folder: Path) -> None:
    """Write the :data:`OWNED` marker into a step folder hpcspec just created."""
    with open(folder / OWNED, "a"):
        pass


def owned_step(path: Path) -> bool:
    """A checkpoint step folder hpcspec made: the name pattern and the marker (or, for a
    temporary killed before its marker, empty)."""
    if not (_STEP_FOLDER.match(path.name) and path.is_dir() and not path.is_symlink()):
        return False
    return (path / OWNED).is_file() or (path.name.endswith(".tmp") and not any(path.iterdir()))


def remove_temporaries(folder: Path, *, checkpoints: bool = False) -> list[str]:
    """Delete what a killed hpcspec left in ``folder``: its temporaries, and in a checkpoint
    folder its unfinished ``step-N.tmp`` folders. Nothing else is touched. Returns the names."""
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        name = path.name
        if path.is_symlink() or name in (LOCK_FILE, RUN_MARKER):
            continue
        if path.is_file() and (name.startswith(TMP_PREFIX) or _legacy_temporary(name)
                               or (checkpoints and name in LEGACY_CHECKPOINT_TEMPORARIES)):
            path.unlink(missing_ok=True)
            removed.append(name)
        elif checkpoints and name.endswith(".tmp") and owned_step(path):
            shutil.rmtree(path)
            removed.append(name)
    return removed


def remove_run(folder: Path, checkpoint_dir: Path) -> list[str]:
    """``--overwrite``: delete every file the run in ``folder`` wrote — :data:`RUN_FILES`, the
    owned checkpoints and pointers in ``checkpoint_dir``, and the sweeps' sub-run folders that are
    themselves hpcspec run folders. A user's files, and ``train``'s, stay. Returns what went."""
    removed: list[str] = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file() and not path.is_symlink() and _matches(path.name, RUN_FILES):
            path.unlink()
            removed.append(path.name)
    removed += [f"{checkpoint_dir.name}/{name}" for name in remove_checkpoints(checkpoint_dir)]
    for sweep in ("steps", "blocks"):
        parent = folder / sweep
        if not parent.is_dir() or parent.is_symlink():
            continue
        for sub in sorted(parent.iterdir()):
            if sub.is_dir() and not sub.is_symlink() and (sub / RUN_MARKER).is_file():
                removed += [f"{sweep}/{sub.name}/{name}" for name in remove_run(sub, sub / "checkpoints")]
                _remove_markers(sub)
        _rmdir_if_empty(parent)
    return removed


def remove_checkpoints(directory: Path) -> list[str]:
    """Every owned step folder, temporary and pointer (``LATEST``, ``COMPLETE``) in a checkpoint folder;
    the folder itself too when nothing else is left in it."""
    removed = remove_temporaries(directory, checkpoints=True)
    if not directory.is_dir():
        return removed
    for path in sorted(directory.iterdir()):
        if path.name in ("LATEST", "COMPLETE") and path.is_file():
            path.unlink()
            removed.append(path.name)
        elif owned_step(path) or (path.name.endswith(".damaged") and (path / OWNED).is_file()):
            shutil.rmtree(path)
            removed.append(path.name)
    _rmdir_if_empty(directory)
    return removed


def _remove_markers(folder: Path) -> None:
    """A sub-run folder emptied by :func:`remove_run`: drop its marker and lock, then the folder if empty."""
    for name in (RUN_MARKER, LOCK_FILE):
        (folder / name).unlink(missing_ok=True)
    _rmdir_if_empty(folder)


def _rmdir_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def claim(folder: Path, *, force: bool = False, command: str = "run") -> None:
    """Rank 0: make ``folder`` this run's — create it, refuse a folder that is not an hpcspec run
    (unless ``force``), take its lock, write the run marker, and remove what a killed run left.

    Raises :class:`InputError` with the reason (another run holds it, it holds a user's files,
    it cannot be created or written).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output directory {str(folder)!r} ({cause(exc)})") from None
    if not folder.is_dir():
        raise InputError(f"output {str(folder)!r} exists and is not a directory")
    foreign = foreign_entries(folder)
    if foreign and not force:
        shown = ", ".join(repr(name) for name in foreign[:3]) + (" …" if len(foreign) > 3 else "")
        raise InputError(f"output folder {str(folder)!r} holds files that are not an hpcspec run ({shown}); "
                         "choose a new or empty folder, or add --force-output to write there anyway")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"output directory {str(folder)!r} is not writable")
    acquire(folder)
    try:
        if not (folder / RUN_MARKER).is_file():
            record = {"hpcspec": "run folder", "command": command, "created": _now()}
            write_text_atomic(folder / RUN_MARKER, json.dumps(record, sort_keys=True) + "\n")
        stale = remove_temporaries(folder)
    except WriteFailed as exc:
        release(folder)
        raise InputError(f"output directory {str(folder)!r} is not writable ({exc})") from None
    except BaseException:
        release(folder)
        raise
    if stale:
        log.warning("removed %d unfinished write(s) left by a killed run in %s: %s", len(stale), folder,
                    ", ".join(stale))


# -- the lock -----------------------------------------------------------------------------------

def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _record() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _now()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_record(path: Path) -> dict[str, object]:
    try:
        record = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _in_use(folder: Path, record: dict[str, object]) -> InputError:
    holder = f"{record.get('host', '?')}:{record.get('pid', '?')}"
    return InputError(f"output folder {str(folder)!r} is in use by {holder} since {record.get('started', '?')}; "
                      f"wait for that run to end or choose another --output (lock: {str(folder / LOCK_FILE)!r})")


@dataclass
class FolderLock:
    """An advisory lock on one output folder, held by this process (see the module docstring)."""

    folder: Path
    fd: int | None = None
    exclusive_file: bool = False
    count: int = 1

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def acquire(self) -> None:
        """Take the lock or raise :class:`InputError` "in use by host:pid since …"."""
        import fcntl

        try:
            fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            fd, created = os.open(self.path, os.O_RDWR), False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _in_use(self.folder, _read_record(self.path)) from None
            if exc.errno in NO_FLOCK:
                if created:  # the empty file just made would read as someone else's lock
                    self.path.unlink(missing_ok=True)
                self._acquire_exclusive_file()
                return
            raise InputError(f"cannot lock output folder {str(self.folder)!r} ({cause(exc)})") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_record()).encode(), 0)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise InputError(f"cannot write the lock {str(self.path)!r} ({cause(exc)})") from None
        self.fd = fd

    def _acquire_exclusive_file(self) -> None:
        """NFS/Lustre without flock: the lock is the lock file's existence (``O_CREAT | O_EXCL``)."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                record = _read_record(self.path)
                if not record:  # an empty file left by the flock variant, or a holder still writing it
                    if time.time() - self.path.stat().st_mtime < 5:
                        raise _in_use(self.folder, record) from None
                elif record.get("host") != socket.gethostname() or _pid_alive(int(record.get("pid", 0))):
                    raise _in_use(self.folder, record) from None
                log.warning("breaking the stale lock of %s:%s (since %s) on %s", record.get("host", "?"),
                            record.get("pid", "?"), record.get("started", "?"), self.folder)
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.path, temporary_for(self.path))  # aside, then removed
                    for old in self.folder.glob(TMP_PREFIX + LOCK_FILE + ".*"):
                        old.unlink(missing_ok=True)
                continue
            try:
                os.write(fd, json.dumps(_record()).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self.exclusive_file = True
            return
        raise _in_use(self.folder, _read_record(self.path))

    def release(self) -> None:
        """Give the lock back: clear the record and unlock (flock), or remove our lock file."""
        import fcntl

        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        elif self.exclusive_file:
            record = _read_record(self.path)
            if record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.exclusive_file = False


#: The folders this process holds, by resolved path (a sweep holds its folder and a sub-run's).
_HELD: dict[str, FolderLock] = {}


def acquire(folder: Path) -> None:
    """Take ``folder``'s lock for this process (re-entrant: counted)."""
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key].count += 1
        return
    lock = FolderLock(Path(key))
    lock.acquire()
    _HELD[key] = lock


def release(folder: Path | str) -> None:
    """Give back one :func:`acquire` of ``folder`` (no-op if this process does not hold it)."""
    key = str(Path(folder).resolve())
    lock = _HELD.get(key)
    if lock is None:
        return
    lock.count -= 1
    if lock.count <= 0:
        del _HELD[key]
        lock.release()


@contextlib.contextmanager
def released_after(folder: Path | str) -> Iterator[None]:
    """Release ``folder``'s lock when the block ends, however it ends (for a job's whole body)."""
    try:
        yield
    finally:
        release(folder)
