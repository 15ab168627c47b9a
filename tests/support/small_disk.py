"""A disk that fills up, for the tests: injected into hpcspec's HDF5 writer, or a real small tmpfs.

:func:`failing_writes` replaces the ``pwrite`` of :mod:`hpcspec.files.hdf5` so that files whose
name matches cannot grow past ``budget`` bytes and then fail with ``errno`` (ENOSPC, EDQUOT, EIO), as a disk
that fills up mid-file does: at any byte, the data or the metadata HDF5 flushes at close.
:func:`small_tmpfs` mounts a real tmpfs of a given size where this process may mount (root with
CAP_SYS_ADMIN) and returns None where it may not.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import os
import subprocess
from pathlib import Path
from typing import Callable, Iterator

from hpcspec.files import hdf5


def _name_of(fd: int) -> str:
    return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))


def failing_pwrite(matches: Callable[[str], bool], budget: int, code: int = errnos.ENOSPC) -> Callable:
    """A ``pwrite`` for which a file whose name ``matches`` cannot grow past ``budget`` bytes
    (rewriting what is already there costs nothing, as on a disk)."""

    def pwrite(fd: int, data, offset: int) -> int:
        if not matches(_name_of(fd)):
            return os.pwrite(fd, data, offset)
        room = max(budget - offset, 0)
        if room == 0 and len(data):
            raise OSError(code, os.strerror(code))
        return os.pwrite(fd, memoryview(data)[:room], offset)

    return pwrite


@contextlib.contextmanager
def failing_writes(matches: Callable[[str], bool], budget: int, code: int = errnos.ENOSPC) -> Iterator[None]:
    """Within the block, matching HDF5 files fail after ``budget`` bytes with ``code``."""
    real = hdf5._pwrite
    hdf5._pwrite = failing_pwrite(matches, budget, code)
    try:
        yield
    finally:
        hdf5._pwrite = real


def can_mount() -> bool:
    return os.geteuid() == 0 and Path("/proc/mounts").is_file()


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path | None]:
    """A tmpfs of ``size`` (``mount -o size=``) at ``where``; None inside the block if mounting fails."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True) if can_mount() else None
    if done is None or done.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount(where: Path, mode: str) -> bool:
    """``mount -o remount,MODE`` (ro or rw); False if the kernel refused (files open for writing)."""
    return subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], capture_output=True).returncode == 0
