"""Command line: ``python -m hpcspec [run|resume|validate|train|track|info] …``. Parsing and dispatch only.

Exit codes: 0 done; 2 bad input or configuration (every rank, one line from rank 0); 3 stopped on
SIGTERM/SIGUSR1/SIGINT after committing a checkpoint (the job scripts requeue on 3); any other
code is a crash, after which the whole MPI world is aborted so no rank hangs.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Sequence

from .checkpoint import StopFlag, StopRequested
from .config import Config, load_config, parse_override
from .errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_STOPPED, InputError
from .hessian.dense import MAX_DENSE_PARAMS
from .parallel.agree import AgreedInputError, agreed
from .parallel.comm import BACKENDS, Communicator, SingleProcess, world
from .parallel.logs import setup_logging

#: ``python -m hpcspec`` with no arguments: train the default MLP on digits briefly, then analyse it.
DEMO_OVERRIDES = {"train.steps": 100, "output": "hpcspec-out", "tasks": ["eigen", "trace", "density"]}

#: Task flags: naming any of them on the command line runs exactly the tasks named.
TASK_FLAGS = {"top_k": "eigen", "trace": "trace", "density": "density", "landscape": "landscape"}

#: Dedicated flags and the config keys they set (applied after the config file, before --set).
FLAG_KEYS = {"model": "model.spec", "data": "data.spec", "loss": "hessian.loss", "top_k": "eigen.top_k",
             "output": "output", "dtype": "hessian.dtype", "seed": "seed", "tol": "eigen.tol",
             "which": "eigen.which", "maxiter": "eigen.maxiter", "batch_size": "data.batch_size",
             "hvp": "hessian.hvp", "weights": "model.weights", "train_steps": "train.steps",
             "threads": "threads", "eigen_method": "eigen.method", "block_size": "eigen.block_size",
             "max_basis": "eigen.max_basis", "trace_method": "trace.method",
             "trace_matvecs": "trace.matvecs", "probes": "density.probes", "steps": "density.steps",
             "bn_mode": "hessian.bn_mode", "params": "model.params", "force_output": "force_output"}


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so errors go through the agreed-exit path."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message} (see python -m hpcspec {self.prog.split()[-1]} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpcspec", description="Hessian spectra of neural networks, distributed over MPI ranks.")
    parser.add_argument("--backend", default=os.environ.get("HPCSPEC_BACKEND", "auto"),
                        choices=BACKENDS, help="communication backend: mpi (mpi4py), torch (torch.distributed: "
                                               "gloo on CPU, NCCL on GPU), horovod (Horovod under mpirun; "
                                               "installed separately), single; default auto")
    parser.add_argument("--debug", action="store_true",
                        help="on a bad-input error, also print the traceback behind it (e.g. of your module:callable)")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser("run", help="top-k eigenpairs, trace and/or spectral density of a model's Hessian")
    _add_job_arguments(run)
    run.add_argument("--resume", action="store_true",
                     help="continue from the newest good checkpoint in the output directory (start from the "
                          "beginning if there is none; do nothing if the run already finished)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run already in the output directory: first delete every file it wrote "
                          "(results, plots, checkpoints; nothing that hpcspec did not write)")
    run.add_argument("--per-block", action="store_true",
                     help="run the tasks once per parameter block (blocks.depth components of the module path) "
                          "into OUTPUT/blocks/<block>/; writes blocks.h5 and blocks.png")
    track = sub.add_parser("track", help="run the tasks on every training checkpoint (step_*.pt) of a folder; "
                                         "writes track.h5 and track_*.png (rerun: only new checkpoints run)")
    track.add_argument("checkpoint_dir", help="the folder of step_*.pt files (python -m hpcspec train --output); "
                                              "its train.toml gives the model, data and Hessian defaults")
    _add_job_arguments(track)
    track.add_argument("--resume", action="store_true",
                       help="accepted for symmetry with run: track always resumes (finished steps are skipped, a "
                            "stopped one continues)")
    resume = sub.add_parser("resume", help="continue a stopped run from its output directory, with the config "
                                           "stored in its checkpoint")
    resume.add_argument("output_dir", help="the stopped run's output directory (holding checkpoints/)")
    resume.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key that may change on resume, e.g. --set threads=4")
    validate = sub.add_parser("validate", help="run the estimators on a small model and compare each with its "
                                               "dense float64 Hessian")
    _add_job_arguments(validate)
    validate.add_argument("--max-params", type=int, default=MAX_DENSE_PARAMS,
                          help=f"refuse models with more parameters (default {MAX_DENSE_PARAMS:,}: P² float64)")
    report = sub.add_parser("report", help="rewrite summary.json, the console summary and every plot from stored "
                                           "results files (offline: no MPI, model or data needed)")
    report.add_argument("results", nargs="+", help="results.h5 file(s) written by run, validate, track or --per-block")
    report.add_argument("--output", help="folder for the regenerated files (default: each file's own folder)")
    report.add_argument("--table", help="also write a Markdown table comparing the runs to this file")
    train = sub.add_parser("train", help="data-parallel minibatch SGD, saving step_*.pt weights for the analyses "
                                         "(restartable: --resume)")
    _add_train_arguments(train)
    sub.add_parser("info", help="versions, world size and device")
    return parser


def _add_problem_arguments(parser: argparse.ArgumentParser, set_example: str) -> None:
    """The config file, overrides, model, data and loss: what every subcommand that builds a model takes."""
    from .problem.data import BUILTIN_DATA
    from .problem.models import BUILTIN_MODELS

    parser.add_argument("--config", help="TOML job config (see README)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. --set {set_example} (repeatable; applied last)")
    parser.add_argument("--model", help=f"zoo model ({', '.join(BUILTIN_MODELS)}) or module:callable")
    parser.add_argument("--data", help=f"{', '.join(BUILTIN_DATA)}, a path to an "
                                       "HDF5 file, or module:callable")
    parser.add_argument("--loss", help="cross_entropy or mse")
    parser.add_argument("--force-output", action="store_const", const=True,
                        help="write into an output folder that holds files other than an hpcspec run's (config "
                             "key force_output; hpcspec still deletes only what it wrote)")


def _add_job_arguments(run: argparse.ArgumentParser) -> None:
    """The flags ``run`` and ``validate`` share (each also has a config key; see README)."""
    _add_problem_arguments(run, "eigen.maxiter=300")
    tasks = run.add_argument_group("tasks (any combination; with none named, the config's tasks, default top-k)")
    tasks.add_argument("--top-k", type=int, help="top-k eigenpairs")
    tasks.add_argument("--trace", action="store_const", const=True, help="the trace, with a standard error")
    tasks.add_argument("--density", action="store_const", const=True,
                       help="the eigenvalue density by stochastic Lanczos quadrature (+ density.png)")
    tasks.add_argument("--landscape", action="store_const", const=True,
                       help="the loss along the top eigenvectors and a random direction (needs --top-k; "
                            "+ landscape_1d.png, landscape_2d.png)")
    run.add_argument("--which", help="largest, smallest, largest_magnitude or both_ends")
    run.add_argument("--eigen-method", help="block (default: block Lanczos with restarts, right for repeated "
                     "eigenvalues), lanczos (single vector) or power (PyHessian's power iteration)")
    run.add_argument("--block-size", type=int, help="vectors per data pass of the block solver (default 4): "
                     "multiplicity up to it is found by construction")
    run.add_argument("--max-basis", type=int, help="most vectors the block solver holds (0: max(64, 2k + 4b))")
    run.add_argument("--trace-method", help="krylov (default), hutchpp, xtrace or hutchinson")
    run.add_argument("--trace-matvecs", type=int, help="products the trace may spend (default 100)")
    run.add_argument("--probes", type=int, help="SLQ probe vectors (default 4)")
    run.add_argument("--steps", type=int, help="Lanczos steps per SLQ probe (default 80)")
    run.add_argument("--output", help="output directory")
    run.add_argument("--dtype", help="model compute precision: float64 or float32 (solver is float64)")
    run.add_argument("--seed", type=int, help="seed for probe and start vectors and zoo model initialisation")
    run.add_argument("--tol", type=float, help="relative Ritz-residual tolerance (0: 1e-8 float64, 1e-5 float32)")
    run.add_argument("--maxiter", type=int, help="most products (block) or Lanczos steps (lanczos)")
    run.add_argument("--batch-size", type=int, help="samples per forward pass")
    run.add_argument("--hvp", help="auto, double_backward or forward_over_reverse")
    run.add_argument("--bn-mode", help="eval (default: running statistics) or train (batch statistics)")
    run.add_argument("--weights", help="state-dict file to load into the model")
    run.add_argument("--params", help="only these parameters enter the Hessian: comma-separated globs over "
                                      "parameter names, e.g. 'layer3.*,linear.*' (the others are frozen)")
    run.add_argument("--train-steps", type=int, help="full-batch Adam steps before the analysis")
    run.add_argument("--threads", type=int, help="torch threads per rank (0: cores / ranks per node)")


#: ``train``'s flags and the config keys they set (``--steps``/``--batch-size`` mean training steps/minibatch).
TRAIN_FLAG_KEYS = {"model": "model.spec", "data": "data.spec", "loss": "hessian.loss", "output": "output",
                   "dtype": "hessian.dtype", "seed": "seed", "batch_size": "train.batch_size",
                   "weights": "model.weights", "threads": "threads", "epochs": "train.epochs", "steps": "train.steps",
                   "lr": "train.lr", "momentum": "train.momentum", "weight_decay": "train.weight_decay",
                   "schedule": "train.schedule", "save_every": "train.save_every", "force_output": "force_output"}


def _add_train_arguments(train: argparse.ArgumentParser) -> None:
    """The flags of ``train`` (each sets the config key in :data:`TRAIN_FLAG_KEYS`; see README "Training")."""
    _add_problem_arguments(train, "train.nesterov=true")
    train.add_argument("--output", help="directory for step_*.pt, train.toml, train_state.pt, train_log.json")
    train.add_argument("--dtype", help="training precision: float64 (default) or float32")
    train.add_argument("--seed", type=int, help="seed of the initial weights and the minibatch order")
    train.add_argument("--weights", help="state-dict file to start from (default: the seed's initialisation)")
    train.add_argument("--threads", type=int, help="torch threads per rank (0: cores / ranks per node)")
    train.add_argument("--epochs", type=int, help="passes over the data (0: use --steps)")
    train.add_argument("--steps", type=int, help="SGD updates, when --epochs is 0")
    train.add_argument("--batch-size", type=int, help="global minibatch size, split over the ranks (default 128)")
    train.add_argument("--lr", type=float, help="peak learning rate (default 0.01)")
    train.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    train.add_argument("--weight-decay", type=float, help="L2 weight decay (default 5e-4)")
    train.add_argument("--schedule", help="cosine (default), step or constant")
    train.add_argument("--save-every", type=int, help="save step_*.pt every this many steps (0: first and last)")
    train.add_argument("--resume", action="store_true",
                       help="continue from OUTPUT/train_state.pt (start from the beginning if there is none)")


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None,
                     flag_keys: dict[str, str] = FLAG_KEYS) -> Config:
    """Defaults → ``base`` → ``--config`` file → dedicated flags (``flag_keys``) → ``--set`` (later wins)."""
    overrides: dict[str, Any] = dict(base or {})
    named = [task for flag, task in TASK_FLAGS.items() if getattr(args, flag, None) is not None]
    if named:
        overrides["tasks"] = named
    for flag, key in flag_keys.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    for item in getattr(args, "set", []):
        key, value = parse_override(item)
        overrides[key] = value
    return load_config(getattr(args, "config", None), overrides)


def _info(comm: Communicator) -> None:
    from .parallel.device import select_device
    from .results.provenance import versions

    if comm.rank == 0:
        for name, version in versions(comm).items():
            print(f"{name:>13}: {version}")
        print(f"{'world size':>13}: {comm.size}")
        print(f"{'device':>13}: {select_device(comm)}")


def _report(args: argparse.Namespace, comm: Communicator) -> None:
    """``report``: rank 0 regenerates each file's outputs (and the comparison table) offline."""
    from pathlib import Path

    from .commands.report import comparison_table, regenerate

    if comm.rank != 0:
        return
    paths = [Path(item) for item in args.results]
    output = Path(args.output) if args.output else None
    for i, path in enumerate(paths):
        folder = output / f"{i}-{path.parent.name}" if output is not None and len(paths) > 1 else output
        print(regenerate(path, folder), flush=True)
    if args.table or len(paths) > 1:
        table = comparison_table(paths)
        print(table, flush=True)
        if args.table:
            try:
                Path(args.table).parent.mkdir(parents=True, exist_ok=True)
                Path(args.table).write_text(table + "\n")
            except OSError as exc:
                raise InputError(f"cannot write the table to {args.table!r} ({exc.strerror})") from None


def _dispatch(argv: Sequence[str], comm: Communicator, flag: StopFlag) -> int:
    from .commands.run import run_job, validate_job

    parser = build_parser()
    args = agreed(comm, parser.parse_args, argv)
    if args.command == "info":
        _info(comm)
        return EXIT_OK
    if args.command == "report":
        agreed(comm, _report, args, comm)
        return EXIT_OK
    if args.command == "train":
        from .commands.train import train_job

        cfg = _watched(comm, agreed(comm, config_from_args, args, None, TRAIN_FLAG_KEYS))
        train_job(cfg, comm, resume=args.resume, flag=flag)
        return EXIT_OK
    if args.command == "track":
        from .commands.track import track_config, track_job

        cfg, steps = agreed(comm, track_config, args)
        track_job(_watched(comm, cfg), steps, comm, flag)
        return EXIT_OK
    if args.command == "resume":
        cfg = _watched(comm, agreed(comm, _stored_run_config, args))
        run_job(cfg, comm, resume=True, flag=flag)
        return EXIT_OK
    if args.command is None:
        args = parser.parse_args(["run"])
        cfg = agreed(comm, config_from_args, args, DEMO_OVERRIDES)
    elif args.command == "validate":
        named = any(getattr(args, flag, None) is not None for flag in TASK_FLAGS)
        base = {} if named or args.config else {"tasks": ["eigen", "trace", "density"]}
        cfg = _watched(comm, agreed(comm, config_from_args, args, base))
        validate_job(cfg, comm, max_params=args.max_params)
        return EXIT_OK
    else:
        cfg = agreed(comm, config_from_args, args)
    cfg = _watched(comm, cfg)
    if getattr(args, "per_block", False):
        from .commands.track import blocks_job

        blocks_job(cfg, comm, flag, overwrite=bool(getattr(args, "overwrite", False)))
        return EXIT_OK
    run_job(cfg, comm, resume=bool(getattr(args, "resume", False)), flag=flag,
            overwrite=bool(getattr(args, "overwrite", False)))
    return EXIT_OK


def _watched(comm: Communicator, cfg: Config) -> Config:
    """Give the communicator's collective watchdog the configured deadline (``[comm]``); returns ``cfg``."""
    from .parallel.watchdog import configure

    configure(comm, cfg.comm.timeout_s, cfg.comm.timeout_factor)
    return cfg


def _stored_run_config(args: argparse.Namespace) -> Config:
    """``resume OUTPUT_DIR``: the config stored with the checkpoints, output pointed at OUTPUT_DIR."""
    from pathlib import Path

    from .commands.resume import stored_config

    output = Path(args.output_dir)
    overrides: dict[str, Any] = {"output": str(output), "checkpoint.dir": ""}
    for item in args.set:
        key, value = parse_override(item)
        overrides[key] = value
    return load_config(overrides=overrides, text=stored_config(output))


def _backend(argv: Sequence[str]) -> str:
    """The backend, read before anything else (it decides how errors are agreed on)."""
    for i, item in enumerate(argv):
        if item == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if item.startswith("--backend="):
            return item.split("=", 1)[1]
    return os.environ.get("HPCSPEC_BACKEND", "auto")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m hpcspec``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, before or after the subcommand
    argv = [item for item in argv if item != "--debug"]
    if any(item in ("-h", "--help") for item in argv):
        build_parser().parse_known_args(argv)  # argparse prints help and exits 0
    try:
        comm = world(_backend(argv))
    except InputError as exc:  # no communicator to agree on: every rank failed alike; rank 0 says so
        if _launcher_rank() == 0:
            print(f"hpcspec: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    setup_logging(comm)  # the one place logging is configured: rank-aware, progress from rank 0 only
    # Caught for the life of the process: a signal during setup is acted on at the first iteration
    # boundary, and one after the last is ignored (the run finishes and exits 0).
    flag = StopFlag().install()
    try:
        code = _dispatch(argv, comm, flag)
        _close(comm)
        return code
    except StopRequested as exc:  # every rank committed the checkpoint and raised together
        if comm.rank == 0:
            print(f"hpcspec: {exc}; continue with --resume (exit code {EXIT_STOPPED})", file=sys.stderr, flush=True)
        _close(comm)
        return EXIT_STOPPED
    except AgreedInputError as exc:
        if debug and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        if comm.rank == 0:
            print(f"hpcspec: error: {exc}", file=sys.stderr, flush=True)
        _close(comm)
        return EXIT_BAD_INPUT
    except InputError as exc:  # raised on some ranks only: the others may wait in a collective
        print(f"hpcspec: error: {exc} (rank {comm.rank})", file=sys.stderr, flush=True)
        _abort(comm, EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
    except BaseException:
        traceback.print_exc()
        print(f"hpcspec: rank {comm.rank} crashed; aborting all {comm.size} ranks", file=sys.stderr, flush=True)
        _abort(comm, 1)
        return 1
    finally:
        flag.uninstall()


def _launcher_rank() -> int:
    """This process's rank as the launcher's environment tells it (0 when none does): who prints
    an error found before any communicator exists."""
    for name in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID", "RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _close(comm: Communicator) -> None:
    """Every rank together, on a normal exit: let the backend shut down cleanly (if it needs to)."""
    close = getattr(comm, "close", None)
    if close is not None:
        close()


def _abort(comm: Communicator, code: int) -> None:
    """End every rank now (MPI_Abort); a single process just returns to exit normally."""
    if not isinstance(comm, SingleProcess) and comm.size > 1:
        sys.stderr.flush()
        comm.abort(code)
