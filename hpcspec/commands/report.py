"""``python -m hpcspec report``: a finished run's outputs regenerated from its ``results.h5`` alone.

``report RESULTS.h5`` rebuilds ``summary.json``, the console summary and every plot — on a laptop,
without MPI, the model or the data — through the very functions the run used, so an offline
report is the run's report. Given a ``track.h5`` / ``blocks.h5`` it redraws the sweep's plots and
prints its table. This module only picks what to do: the files are read by
:mod:`hpcspec.results.hdf5` and :mod:`hpcspec.results.sweep_hdf5`, written by
:mod:`hpcspec.results.text` and :mod:`hpcspec.results.plots`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from ..files.atomic import write_text_atomic
from ..files.outputs import make_folder
from ..results.hdf5 import file_kind, load_run
from ..results.plots import write_density_plot, write_landscape_plots
from ..results.sweep_hdf5 import SWEEP_KINDS, read_sweep
from ..results.sweepplots import sweep_plots
from ..results.text import (
    console_summary,
    runs_table,
    summary,
    sweep_table,
    validation_table,
    write_summary,
)


#: What a report writes into its folder (and a folder that holds ``results.h5`` is another run's).
REPORT_FILES = ("summary.json", "density.png", "landscape_1d.png", "landscape_2d.png")
#: Left in a ``--output`` folder by a report: the results file it was made from, so that the same
#: report may be rewritten there and no other one may replace it.
REPORT_MARKER = ".hpcspec-report"


def report_folder(path: Path, output: Path | None, force: bool = False) -> Path:
    """The folder a report of ``path`` writes into: ``output``, or the run's own folder.

    Refused with one line (:class:`InputError`): an ``output`` that is a file or cannot be created,
    and, unless ``force``, one holding a file the report would replace (summary.json, the plots)
    that no report of this same ``path`` wrote — a user's files or another run's, whose summary
    would then disagree with its own results.h5.
    """
    if output is None or (output.is_dir() and output.resolve() == path.resolve().parent):
        return path.parent
    if output.exists() and not output.is_dir():
        raise InputError(f"report --output {str(output)!r} is a file, not a folder: give a folder for the "
                         "regenerated summary and plots")
    make_folder(output, "the report folder")
    names = set(os.listdir(output))
    if force or _marked_source(output) == str(path.resolve()):
        return output
    clashes = sorted(names & {*REPORT_FILES, "results.h5"})
    if clashes:
        whose = ("another run's folder" if "results.h5" in names
                 else "a report of another results file" if _marked_source(output) else "not written by a report")
        raise InputError(f"report --output {str(output)!r} holds {', '.join(clashes)} ({whose}), which this report "
                         "would replace: choose a new or empty folder, or pass --force-output")
    return output


def _marked_source(folder: Path) -> str | None:
    try:
        return (folder / REPORT_MARKER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def regenerate(path: Path, output: Path | None = None, force: bool = False) -> str:
    """Rewrite ``summary.json`` and the plots of the run stored in ``path`` into ``output`` (default:
    the file's folder; checked by :func:`report_folder`, ``force`` as ``--force-output``); returns
    the console summary. A missing plotting library skips the plots."""
    if file_kind(path) in SWEEP_KINDS:
        return _regenerate_sweep(path)
    stored = load_run(path)
    folder = report_folder(path, output, force)
    if folder != path.parent:
        write_text_atomic(folder / REPORT_MARKER, str(path.resolve()) + "\n")
    write_summary(folder / "summary.json", summary(stored.results, stored.layout, stored.info, stored.validation))
    # the line names what this report read and what it wrote (results.h5 is read, never rewritten)
    files = [("read", path), ("summary", folder / "summary.json")]
    if stored.results.density is not None:
        write_density_plot(folder / "density.png", stored.results, stored.info)
        files.append(("plot", folder / "density.png"))
    if stored.results.landscape is not None:
        files += [("plot", written) for written in write_landscape_plots(path, folder)]
    text = console_summary(stored.results, stored.layout, stored.info, files)
    if stored.validation is not None:
        text += "\n" + validation_table(stored.validation, stored.results)
    return text


def comparison_table(paths: list[Path], base: Path | None = None) -> str:
    """The Markdown table comparing the runs stored in ``paths``, each labelled by its folder
    relative to the folder all of them share, its links relative to ``base`` (the table file's
    folder; default the working directory; see :func:`hpcspec.results.text.runs_table`)."""
    return runs_table([(label, path, load_run(path)) for label, path in zip(_labels(paths), paths)], base)


def _labels(paths: list[Path]) -> list[str]:
    """Each run's folder, relative to the folder all of them share."""
    folders = [path.resolve().parent for path in paths]
    if len(folders) == 1:
        return [folders[0].name]
    common = Path(*Path(folders[0]).parts[:_common_depth(folders)])
    relative = [str(folder.relative_to(common)) for folder in folders]
    return [label if label != "." else folder.name for label, folder in zip(relative, folders)]


def _common_depth(folders: list[Path]) -> int:
    depth = 0
    for parts in zip(*(folder.parts for folder in folders)):
        if len(set(parts)) != 1:
            break
        depth += 1
    return depth


def _regenerate_sweep(path: Path) -> str:
    """Redraw a ``track.h5`` / ``blocks.h5``'s plots (next to it) and print the sweep's own table."""
    plots = sweep_plots(path)
    sweep = read_sweep(path)
    numbers = sweep.numbers()
    rows = len(sweep.labels)
    what = "step" if sweep.kind == "track" else "block"
    title = f"{sweep.kind}: {rows} {'checkpoints' if sweep.kind == 'track' else 'blocks'} in {path}"
    sizes = [n.num_params for n in numbers] if sweep.kind == "blocks" else None
    table = sweep_table(title, what, sweep.labels, numbers, sizes)
    return table + "\n" + "  ".join(f"plot: {plot}" for plot in plots)
