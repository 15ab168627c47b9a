"""Run under ``mpirun -n 2`` by test_pipeline.py: each bad pipelined input through the CLI in one
MPI world; every rank records its exit code and stderr, rank 0 writes them to FOLDER/bad.json.
Reaching the end at all shows no case left a rank waiting in a collective.

Usage: python mpi_pipeline_bad.py FOLDER (holding badstages.py, on sys.path)
"""

import contextlib
import io
import json
import sys
from pathlib import Path

from mpi4py import MPI

from hpcspec.cli import main

folder = Path(sys.argv[1])
common = ["run", "--data", "synthetic", "--set", "data.samples=8", "--set", "data.features=4", "--top-k", "1",
          "--set", "hessian.check=false"]
cases = {
    "not_dividing": ["--model", "mlp", "--set", "model.stages=3"],
    "cannot_split": ["--model", "badstages:opaque", "--set", "model.stages=2"],
    "too_few_blocks": ["--model", "mlp", "--set", "model.hidden=[]", "--set", "model.stages=2"],
    "mismatched": ["--model", "badstages:mismatched", "--set", "model.stages=2"],
}
records = {}
for name, extra in cases.items():
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main([*common, "--output", str(folder / name), *extra])
    records[name] = {"code": code, "stderr": stderr.getvalue()}
gathered = MPI.COMM_WORLD.gather(records, root=0)
if MPI.COMM_WORLD.rank == 0:
    (folder / "bad.json").write_text(json.dumps(gathered))
