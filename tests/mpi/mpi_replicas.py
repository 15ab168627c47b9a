"""Run under ``mpirun -n N``: weights or buffers that differ between ranks are refused, through the
CLI and through the library, on every rank, naming the first differing tensor; the same model
on every rank runs. Rank 0 writes ``FOLDER/replicas.json`` for tests/mpi/test_replicas_mpi.py."""

import contextlib
import io
import json
import sys
from pathlib import Path

import torch
from mpi4py import MPI

import hpcspec
from hpcspec.cli import main

folder = Path(sys.argv[1])
sys.path.insert(0, str(folder))
import rankmod  # noqa: E402  (written by the test)

comm = hpcspec.world()
records = {}


def cli(name: str, argv: list[str]) -> None:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(argv)
    records[name] = {"code": code, "stderr": stderr.getvalue()}


def library(name: str, make) -> None:
    x, y = rankmod.make_data()
    try:
        make(x, y)
        records[name] = {"raised": None}
    except hpcspec.InputError as error:
        records[name] = {"raised": str(error)}


common = ["--data", "rankmod:make_data", "--loss", "mse", "--top-k", "2", "--tol", "1e-10"]
for factory in ("rank_seeded", "rank_buffer", "last_rank_bias", "same"):
    cli(factory, ["run", "--model", f"rankmod:{factory}", *common, "--output", str(folder / factory)])
    library(f"operator {factory}", lambda x, y, f=factory: hpcspec.block_lanczos(
        hpcspec.HessianOperator(getattr(rankmod, f)(), "mse", (x, y), comm), 2, tol=1e-10))
    library(f"pyhessian {factory}", lambda x, y, f=factory: hpcspec.hessian(
        getattr(rankmod, f)(), torch.nn.MSELoss(), data=(x, y), comm=comm).eigenvalues(top_n=1))
gathered = MPI.COMM_WORLD.gather(records, root=0)
if MPI.COMM_WORLD.rank == 0:
    (folder / "replicas.json").write_text(json.dumps(gathered))
