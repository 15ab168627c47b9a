"""Atomic writes: a file hpcspec writes is complete or absent, never half written.

Every file goes through :func:`atomic_path`: a temporary sibling named
``.hpcspec-tmp-<name>.<pid>.<random>`` is written, fsynced and renamed onto the final name, then
the folder is fsynced. Any failure of the write — ``OSError``, or the ``RuntimeError`` h5py raises
for "No space left on device" — removes that one temporary and becomes :class:`WriteFailed`, an
:class:`~hpcspec.errors.InputError` naming the path and the cause (exit 2, agreed on every rank).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import zlib
from pathlib import Path
from typing import Callable, Iterator

from ..errors import InputError

#: The prefix of every temporary file hpcspec writes (and the only files start-up cleanup removes).
TMP_PREFIX = ".hpcspec-tmp-"


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


def file_digest(path: Path) -> str:
    """``size:crc32`` of a file's bytes, read in 4 MiB chunks: what a finished run records of its
    results.h5, so that a file damaged or truncated since is told apart from the one it wrote."""
    crc, size = 0, 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return f"{size}:{crc:08x}"
