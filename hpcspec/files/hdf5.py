"""HDF5 files written so that a full disk, a quota or an I/O error is one ``OSError``, never a crash.

h5py's default driver hands a failed ``write(2)`` to HDF5. When that happens while HDF5 flushes
its metadata (closing a dataset or the file), HDF5 cannot close the object it was flushing: the
error surfaces from an object's deallocation as an ignored ``Traceback``, the identifier stays
open, and the process dies in HDF5's library shutdown at interpreter exit (a segmentation fault in
``H5D_close``), whatever the caller did with the error.

:func:`create_hdf5` therefore lets HDF5 write through :class:`FailSafeSink`, a file object that
never fails towards HDF5. The first OS error is recorded and every later write is accepted
without touching the disk (kept in memory only where HDF5 might read it back), so HDF5 finishes
and closes the file normally; then the recorded error is raised as an ``OSError`` naming the file.
The half-written file is the caller's to remove (it always writes a temporary).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

import h5py

#: After a failure, writes up to this many bytes are kept in memory: HDF5 may read back its
#: metadata and its sieve buffer (64 KiB); larger writes are raw data it never reads while writing.
KEPT_BYTES = 1 << 20

#: Module-level so a test can inject a failing disk (ENOSPC, EDQUOT, EIO) at a chosen byte.
_pwrite = os.pwrite
_pread = os.pread


class FailSafeSink:
    """A file object for h5py's ``fileobj`` driver whose writes never raise.

    The first ``OSError`` of a write, read or truncate is kept in :attr:`error`; from then on
    nothing more goes to disk, writes of at most :data:`KEPT_BYTES` are kept in memory, and reads
    see what reached the disk overlaid by the kept writes (zeros elsewhere), so HDF5 can close
    its objects.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.error: OSError | None = None
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        self._pos = 0
        self._size = 0
        self._kept: list[tuple[int, bytes]] = []

    # -- the file object h5py's driver calls --------------------------------------------------

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if self.error is None:
            try:
                done = 0
                while done < size:
                    written = _pwrite(self._fd, view[done:], self._pos + done)
                    if written <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    done += written
            except OSError as exc:
                self.error = exc
        if self.error is not None and size <= KEPT_BYTES:
            self._kept.append((self._pos, bytes(view)))
        self._pos += size
        self._size = max(self._size, self._pos)
        return size

    def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer).cast("B")
        size = len(view)
        try:  # what reached the disk before a failure is still there
            data = _pread(self._fd, size, self._pos)
        except OSError as exc:
            self.error, data = self.error or exc, b""
        view[:len(data)] = data
        view[len(data):] = bytes(size - len(data))
        for offset, kept in self._kept:  # in write order: a later write wins, as on disk
            lo, hi = max(offset, self._pos), min(offset + len(kept), self._pos + size)
            if lo < hi:
                view[lo - self._pos:hi - self._pos] = kept[lo - offset:hi - offset]
        self._pos += size
        return size

    def read(self, size: int = -1) -> bytes:
        buffer = bytearray(max(self._size - self._pos, 0) if size < 0 else size)
        self.readinto(buffer)
        return bytes(buffer)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as exc:
                self.error = exc
        self._size = size
        return size

    def flush(self) -> None:
        """Nothing is buffered here; durability is the caller's fsync after :func:`create_hdf5`."""

    # -- ours ---------------------------------------------------------------------------------

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError as exc:  # NFS may report a failed write-back only here
            self.error = self.error or exc

    @property
    def kept_bytes(self) -> int:
        """Bytes held in memory since the failure."""
        return sum(len(kept) for _, kept in self._kept)

    def raise_error(self) -> None:
        """The recorded failure as an ``OSError`` naming the file (errno and strerror kept)."""
        if self.error is not None:
            code = self.error.errno or errno.EIO
            raise OSError(code, self.error.strerror or os.strerror(code), str(self.path))


@contextlib.contextmanager
def create_hdf5(path: Path) -> Iterator[h5py.File]:
    """A new HDF5 file at ``path`` (truncated if it exists), open for writing inside the block.

    A failed write anywhere — the data, or the metadata flushed when the block ends — raises
    ``OSError`` after the block, with HDF5's file fully closed; nothing is left open for HDF5 to
    flush at exit. Failing to create the file (a read-only or missing folder) raises at once.
    """
    sink = FailSafeSink(path)
    try:
        with h5py.File(sink, "w") as handle:
            yield handle
    finally:
        sink.close()
    sink.raise_error()
