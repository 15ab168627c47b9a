"""``python tests/mpi_full_disk.py ARGS…``: the CLI with a full disk injected into the results write.

h5py reports a full disk as ``RuntimeError: No space left on device`` (the failure the issue met);
this wrapper makes every ``h5py.File`` opened on a ``results.h5`` temporary raise exactly that after
creating the file, so the test sees what a real full disk leaves behind. Run under ``mpirun -n 2``
or alone; the exit code is the CLI's.
"""

import sys

import h5py

import hpcspec.results.hdf5
from hpcspec.cli import main
from hpcspec.files.atomic import TMP_PREFIX


class _FullDisk:
    """``h5py`` with a ``File`` that fails on results.h5 temporaries, as ENOSPC does mid-write."""

    def __getattr__(self, name):
        return getattr(h5py, name)

    @staticmethod
    def File(path, *args, **kwargs):  # noqa: N802 (h5py's name)
        if str(path).rsplit("/", 1)[-1].startswith(TMP_PREFIX + "results.h5"):
            with open(path, "wb") as handle:
                handle.write(b"\x89HDF half a file")
            raise RuntimeError("Can't write data (file write failed: No space left on device)")
        return h5py.File(path, *args, **kwargs)


hpcspec.results.hdf5.h5py = _FullDisk()
sys.exit(main(sys.argv[1:]))
