"""Run under ``mpirun -n 2``: every bad-input case through the CLI in one MPI world.

Each rank records its exit code and what it printed to stderr; rank 0 writes them all to
``FOLDER/mpi_bad_inputs.json`` for tests/mpi/test_mpi.py to check. Reaching the end at all shows
no case left a rank waiting in a collective.
"""

import contextlib
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

import bad_inputs  # noqa: E402
from mpi4py import MPI  # noqa: E402

from hpcspec.cli import main  # noqa: E402

folder = Path(sys.argv[1])
records = []
for name, argv, _ in bad_inputs.cases(folder):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(argv)
    records.append({"name": name, "code": code, "stderr": stderr.getvalue()})
gathered = MPI.COMM_WORLD.gather(records, root=0)
if MPI.COMM_WORLD.rank == 0:
    (folder / "mpi_bad_inputs.json").write_text(json.dumps(gathered))
