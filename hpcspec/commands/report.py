"""``python -m hpcspec report``: a finished run's outputs regenerated from its ``results.h5`` alone.

``report RESULTS.h5`` rebuilds ``summary.json``, the console summary and every plot — on a laptop,
without MPI, the model or the data — through the very functions the run used, so an offline
report is the run's report. Given a ``track.h5`` / ``blocks.h5`` it redraws the sweep's plots and
prints its table. This module only picks what to do: the files are read by
:mod:`hpcspec.results.hdf5` and :mod:`hpcspec.results.sweep_hdf5`, written by
:mod:`hpcspec.results.text` and :mod:`hpcspec.results.plots`.
"""

from __future__ import annotations

from pathlib import Path

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


def regenerate(path: Path, output: Path | None = None) -> str:
    """Rewrite ``summary.json`` and the plots of the run stored in ``path`` into ``output`` (default:
    the file's folder); returns the console summary. A missing plotting library skips the plots."""
    if file_kind(path) in SWEEP_KINDS:
        return _regenerate_sweep(path)
    stored = load_run(path)
    folder = output if output is not None else path.parent
    folder.mkdir(parents=True, exist_ok=True)
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
