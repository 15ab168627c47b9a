"""Run under ``mpirun -n R`` by test_callable_batches_mpi.py: the CLI on data callables returning
batches (tests/support/batch_data.py), good and bad, all in one MPI world.

Each rank records every case's exit code and stderr; rank 0 writes them to ``FOLDER/batches-R.json``.
The good cases write ``FOLDER/R-NAME/results.h5``. Reaching the end shows no case left a rank waiting.

Usage: python mpi_callable_batches.py FOLDER
"""

import contextlib
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from batch_data import BAD, GOOD  # noqa: E402
from mpi4py import MPI  # noqa: E402

from hpcspec.cli import main  # noqa: E402


def _run(argv):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(argv)
    return {"code": code, "stderr": stderr.getvalue()}


folder = Path(sys.argv[1])
size = MPI.COMM_WORLD.size
records = {}
for name, data, model, extra in GOOD:
    records[name] = _run(["run", "--model", f"batchmod:{model}", "--data", f"batchmod:{data}", "--top-k", "3",
                          "--tol", "1e-12", "--trace", "--trace-matvecs", "20", "--output",
                          str(folder / f"{size}-{name}"), *extra])
for name, data, extra, least, _ in BAD:
    if size >= least:
        records[name] = _run(["run", "--model", "batchmod:make_model", "--data", f"batchmod:{data}",
                              "--output", str(folder / f"{size}-bad"), *extra])
gathered = MPI.COMM_WORLD.gather(records, root=0)
if MPI.COMM_WORLD.rank == 0:
    (folder / f"batches-{size}.json").write_text(json.dumps(gathered))
