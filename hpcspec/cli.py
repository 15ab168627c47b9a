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
from .choices import BACKENDS
from .config import (
    Config,
    command_flags,
    flag_overrides,
    layered_config,
    load_config,
    named_tasks,
    parse_override,
)
from .config.fields import RUN as RUN_FLAGS
from .config.fields import TASKS_GROUP
from .config.fields import TRAIN as TRAIN_FLAGS
from .errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_STOPPED, InputError, one_line
from .curvature.dense import MAX_DENSE_PARAMS
from .parallel.agree import AgreedInputError, agreed
from .parallel.comm import Communicator, SingleProcess, world
from .parallel.logs import setup_logging

#: ``python -m hpcspec`` with no arguments: train the default MLP on digits briefly, then analyse it.
DEMO_OVERRIDES = {"train.steps": 100, "output": "hpcspec-out", "tasks": ["eigen", "trace", "density"]}
#: ``validate`` without ``--config``: its own folder, so it never meets the default job's run.
VALIDATE_OUTPUT = "hpcspec-validate"


def validate_base(args: argparse.Namespace) -> dict[str, Any]:
    """The layer ``validate`` puts under its flags. With ``--config``, none (the file decides).
    Else: writes to ``VALIDATE_OUTPUT``; all three tasks unless a task flag names some; and, when
    no ``--model``, ``--weights`` or ``--train-steps`` is given, the default job's brief training,
    so that a bare ``validate`` checks the estimators on the network the default job analyses (an
    untrained MLP's near-zero, flat spectrum made the relative trace error look like 81 %)."""
    if args.config:
        return {}
    base: dict[str, Any] = {"output": VALIDATE_OUTPUT}
    if not named_tasks(vars(args), RUN_FLAGS):
        base["tasks"] = list(DEMO_OVERRIDES["tasks"])
    if all(getattr(args, name, None) is None for name in ("model", "weights", "train_steps")):
        base["train.steps"] = DEMO_OVERRIDES["train.steps"]
    return base


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so errors go through the agreed-exit path."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message} (see {help_command(self.prog)})")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse's, but a flag no parser knows names the help of the command it followed."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command and self.prog == "hpcspec" else self.prog
            raise InputError(f"unrecognized arguments: {' '.join(extras)} (see {help_command(prog)})")
        return parsed


def help_command(prog: str) -> str:
    """The help line for the parser named ``prog``: ``python -m hpcspec --help`` for the top level
    (prog ``hpcspec``), ``python -m hpcspec run --help`` for a command (prog ``hpcspec run``)."""
    return " ".join(["python -m hpcspec", *prog.split()[1:], "--help"])


def demo_text() -> str:
    """What ``python -m hpcspec`` with no command does, from :data:`DEMO_OVERRIDES` (for ``--help``)."""
    return (f"With no command, python -m hpcspec runs the default job: run --train-steps "
            f"{DEMO_OVERRIDES['train.steps']} --{' --'.join(t for t in DEMO_OVERRIDES['tasks'] if t != 'eigen')} "
            f"--output {DEMO_OVERRIDES['output']} (train the default MLP on digits briefly, then its top-5 "
            f"eigenvalues, trace and density). Every command's flags: python -m hpcspec COMMAND --help.")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpcspec", description="Hessian spectra of neural networks, distributed over MPI ranks.",
                     epilog=demo_text())
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
    run.add_argument("--dry-run", action="store_true",
                     help="print the per-rank memory plan for model.stages × data shards and stop (no product)")
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
    report.add_argument("--output", help="folder for the regenerated files (default: each file's own folder); "
                                         "one holding another run's or a user's summary.json or plots is refused")
    report.add_argument("--force-output", action="store_true",
                        help="write into --output even where it holds files a report would replace")
    report.add_argument("--table", help="also write a Markdown table comparing the runs to this file")
    train = sub.add_parser("train", help="data-parallel minibatch SGD, saving step_*.pt weights for the analyses "
                                         "(restartable: --resume)")
    _add_train_arguments(train)
    sub.add_parser("info", help="versions, world size and device")
    return parser


def _add_config_arguments(parser: argparse.ArgumentParser, command: str, set_example: str) -> None:
    """``--config``, ``--set`` and every flag the options declare for ``command`` (``run`` or ``train``,
    :func:`hpcspec.config.command_flags`): names, types and help come from the config's fields."""
    from .problem.data import BUILTIN_DATA
    from .problem.models import BUILTIN_MODELS

    parser.add_argument("--config", help="TOML job config (every key: docs/configuration.md)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. --set {set_example} (repeatable; applied last)")
    groups: dict[str, Any] = {}
    for option, flag in command_flags(command):
        target: Any = parser
        if flag.task:
            if TASKS_GROUP not in groups:
                groups[TASKS_GROUP] = parser.add_argument_group(TASKS_GROUP)
            target = groups[TASKS_GROUP]
        text = (flag.help or option.meta.help).format(models=", ".join(BUILTIN_MODELS), data=", ".join(BUILTIN_DATA))
        if option.kind in (int, float, str) and option.default != "" and "default" not in text:
            text += f" (default {option.default})"
        if option.kind in (int, float):
            target.add_argument(flag.name, type=option.kind, help=text)
        elif option.kind is str:
            target.add_argument(flag.name, help=text)
        else:  # a switch: a boolean key, or a task flag on ``tasks``
            target.add_argument(flag.name, action="store_const", const=True, help=text)


def _add_job_arguments(run: argparse.ArgumentParser) -> None:
    """The flags ``run``, ``validate`` and ``track`` share (each sets a config key; docs/configuration.md)."""
    _add_config_arguments(run, RUN_FLAGS, "eigen.maxiter=300")


def _add_train_arguments(train: argparse.ArgumentParser) -> None:
    """The flags of ``train`` (each sets a config key; docs/cli.md, "train")."""
    _add_config_arguments(train, TRAIN_FLAGS, "train.nesterov=true")
    train.add_argument("--resume", action="store_true",
                       help="continue from OUTPUT/train_state.pt (start from the beginning if there is none)")


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None, command: str = RUN_FLAGS) -> Config:
    """Defaults → ``--config`` file → ``base`` → the flags of ``command`` → ``--set`` (later wins)."""
    return layered_config(getattr(args, "config", None), base=base, flags=flag_overrides(vars(args), command),
                          sets=getattr(args, "set", []))


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
        print(regenerate(path, folder, force=args.force_output), flush=True)
    if args.table or len(paths) > 1:
        table = comparison_table(paths, Path(args.table).parent if args.table else None)
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

        cfg = _watched(comm, agreed(comm, config_from_args, args, None, TRAIN_FLAGS))
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
        cfg = _watched(comm, agreed(comm, config_from_args, args, validate_base(args)))
        validate_job(cfg, comm, max_params=args.max_params)
        return EXIT_OK
    else:
        cfg = agreed(comm, config_from_args, args)
    cfg = _watched(comm, cfg)
    if getattr(args, "dry_run", False):
        from .commands.stages import dry_run

        dry_run(cfg, comm)
        return EXIT_OK
    if getattr(args, "per_block", False):
        from .commands.blocks import blocks_job

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
            print(f"hpcspec: error: {one_line(exc)}", file=sys.stderr, flush=True)
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
            print(f"hpcspec: error: {one_line(exc)}", file=sys.stderr, flush=True)
        _close(comm)
        return EXIT_BAD_INPUT
    except InputError as exc:  # raised on some ranks only: the others may wait in a collective
        print(f"hpcspec: error: {one_line(exc)} (rank {comm.rank})", file=sys.stderr, flush=True)
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
