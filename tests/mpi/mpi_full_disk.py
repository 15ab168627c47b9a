"""``python tests/mpi/mpi_full_disk.py ARGS…``: the CLI with a full disk injected into an HDF5 write.

By default every ``results.h5`` temporary cannot grow past half a kilobyte. ``FULL_DISK=checkpoint``
makes the checkpoint files fail instead, ``FULL_DISK_RANK=r`` on rank r only (a node-local disk
that fills on one rank), and ``FULL_DISK_BYTES=n`` lets them grow to n bytes first. The writes fail
with ENOSPC, as on a real full disk, through hpcspec's HDF5 writer (tests/support/small_disk.py).
Run under ``mpirun -n 2`` or alone; the exit code is the CLI's.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from mpi4py import MPI  # noqa: E402
from small_disk import failing_pwrite  # noqa: E402

from hpcspec.cli import main  # noqa: E402
from hpcspec.files import hdf5  # noqa: E402
from hpcspec.files.atomic import TMP_PREFIX  # noqa: E402

target = os.environ.get("FULL_DISK", "results")
prefix = {"results": TMP_PREFIX + "results.h5", "checkpoint": "rank-"}[target]
rank = os.environ.get("FULL_DISK_RANK", "")
if rank == "" or int(rank) == MPI.COMM_WORLD.rank:
    hdf5._pwrite = failing_pwrite(lambda name: name.startswith(prefix), int(os.environ.get("FULL_DISK_BYTES", "512")))
sys.exit(main(sys.argv[1:]))
