"""The end of ``run`` and ``validate`` on rank 0: results.h5, summary.json, the plots and the console
summary, written once the tasks' numbers are known (and, for ``run``, committed in a checkpoint)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..analyses.tasks import TaskResults
from ..analyses.validation import Validation
from ..config import Config
from ..files.atomic import WriteFailed
from ..parallel.comm import Communicator
from ..problem.params import ParamLayout
from ..results.hdf5 import write_results
from ..results.plots import write_density_plot, write_landscape_plots
from ..results.records import RunInfo
from ..results.text import console_summary, summary, validation_table, write_summary

log = logging.getLogger(__name__)


def write_outputs(comm: Communicator, cfg: Config, output: Path, layout: ParamLayout, results: TaskResults,
                  info: RunInfo, validation: Validation | None, kept: Path | None = None) -> None:
    """Rank 0 (a local step): results.h5, summary.json and the plots, then the console summary. A
    failed write is one line naming the file and the cause and, when ``kept`` (the committed
    checkpoint holding this state) is given, how to write them again from it."""
    if comm.rank != 0:
        return
    try:
        _write_files(cfg, output, layout, results, info, validation)
    except WriteFailed as exc:
        hint = (f"; nothing is lost: the computed state is in checkpoint {str(kept)!r}, free space and rerun with "
                "--resume to write the results without recomputing") if kept is not None else ""
        raise WriteFailed(f"{exc}{hint}") from None


def _write_files(cfg: Config, output: Path, layout: ParamLayout, results: TaskResults, info: RunInfo,
                 validation: Validation | None) -> None:
    files = [("results", output / "results.h5"), ("summary", output / "summary.json")]
    write_results(files[0][1], results, layout, info, validation)
    write_summary(files[1][1], summary(results, layout, info, validation))
    try:
        if results.density is not None and cfg.density.plot:
            write_density_plot(output / "density.png", results, info)
            files.append(("plot", output / "density.png"))
    except ImportError as exc:  # the numbers are written; a missing plotting library must not lose them
        log.warning("density.png not written: %s", exc)
    if results.landscape is not None:
        try:
            files += [("plot", path) for path in write_landscape_plots(output / "results.h5", output)]
        except OSError as exc:  # reading results.h5 back
            raise WriteFailed(f"cannot write the landscape plots to {str(output)!r} ({exc})") from None
        except ImportError as exc:
            log.warning("landscape plots not written: %s", exc)
    print(console_summary(results, layout, info, files), flush=True)
    if validation is not None:
        print(validation_table(validation, results), flush=True)
