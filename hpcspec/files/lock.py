"""One run per output folder: the folder lock.

Rank 0 takes :class:`FolderLock` on ``<output>/.hpcspec-lock`` before any other write —
``fcntl.flock`` where the file system has it, else (NFS/Lustre without locks: ``ENOLCK``,
``EOPNOTSUPP``) an ``O_CREAT | O_EXCL`` lock file holding the same record. The record is the
holder's host, pid and start time; a fallback lock whose pid no longer exists on this host is stale
and is broken (renamed aside), one held from another host is reported and must be removed by hand
if that host's run is gone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .atomic import TMP_PREFIX, cause, temporary_for

#: The lock file of an output folder.
LOCK_FILE = ".hpcspec-lock"
#: errno values meaning "this file system has no flock": fall back to an exclusive lock file.
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

log = logging.getLogger(__name__)


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _record() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": timestamp()}


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


def is_held(folder: Path | str) -> bool:
    """Whether this process holds ``folder``'s lock."""
    return str(Path(folder).resolve()) in _HELD
