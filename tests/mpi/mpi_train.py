"""Run under ``mpirun -n 3`` by tests/test_train.py, in its folder (argv[1]): every MPI training case
in one launch (a launch costs seconds).

1. ``train`` on all 3 ranks (the command line, exit code recorded) into ``ranks3``;
2. on ranks 0 and 1 (a sub-communicator; rank 2 waits): an uninterrupted training into ``ranks2``;
   one into ``stopped2`` that rank 1 alone sends itself SIGTERM during (both ranks must stop at
   the same step); a fresh start over it (refused on both ranks); ``--resume`` to the end; a
   BatchNorm model (whose weights must end identical on both ranks).
Rank 0 writes what happened to ``mpi_train.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mpi4py import MPI

folder = Path(sys.argv[1])
os.chdir(folder)
sys.path.insert(0, str(folder))
TESTS = Path(__file__).resolve().parents[1]
sys.path[1:1] = [str(TESTS / "e2e"), str(TESTS / "support")]  # test_train and its helpers (pytest's pythonpath)

import trainmod  # noqa: E402  (written by the test)
from test_train import TRAIN  # noqa: E402

from hpcspec.commands import train as tr  # noqa: E402
from hpcspec.checkpoint import StopFlag, model_fingerprint  # noqa: E402
from hpcspec.cli import TRAIN_FLAG_KEYS, build_parser, config_from_args, main  # noqa: E402
from hpcspec.parallel.comm import MPICommunicator  # noqa: E402
from hpcspec.parallel.agree import AgreedInputError  # noqa: E402

world = MPI.COMM_WORLD
report: dict = {"ranks3": main([*TRAIN, "--output", "ranks3"])}


def config(output: str, *extra: str):
    return config_from_args(build_parser().parse_args([*TRAIN, "--output", output, *extra]), None, TRAIN_FLAG_KEYS)


pair = world.Split(0 if world.rank < 2 else MPI.UNDEFINED, world.rank)
if pair != MPI.COMM_NULL:
    comm = MPICommunicator(pair)
    tr.train_job(config("ranks2"), comm)
    trainmod.CALLS[0] = 0
    if comm.rank == 1:
        os.environ["HPCSPEC_TEST_SIGTERM_AT"] = "6"
    with StopFlag() as flag:
        try:
            tr.train_job(config("stopped2"), comm, flag=flag)
            stopped_at = None
        except tr.TrainingStopped as exc:
            stopped_at = exc.step
    os.environ.pop("HPCSPEC_TEST_SIGTERM_AT", None)
    report["stopped_at"] = comm.allgather_object(stopped_at)
    try:
        tr.train_job(config("stopped2"), comm)
        report["refused"] = ""
    except AgreedInputError as exc:
        report["refused"] = str(exc)
    tr.train_job(config("stopped2"), comm, resume=True)
    # BatchNorm: local batch statistics, running statistics averaged every step: the same weights on both ranks
    bn = tr.train_job(config("bn2", "--model", "trainmod:bn_model"), comm)
    report["bn_fingerprints"] = comm.allgather_object(model_fingerprint(bn.model))
    if world.rank == 0:
        (folder / "mpi_train.json").write_text(json.dumps(report))
    pair.Free()
world.Barrier()
