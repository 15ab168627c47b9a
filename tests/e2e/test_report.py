"""``python -m hpcspec report``: the offline report equals the run's own, read from results.h5 alone."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import REPO
import spawn

from hpcspec.cli import main
from hpcspec.commands.report import comparison_table
from hpcspec.results.hdf5 import load_run

RUN = ["run", "--data", "synthetic", "--set", "data.samples=60", "--set", "data.features=4", "--set",
       "model.hidden=[5]", "--top-k", "2", "--trace", "--density", "--trace-matvecs", "8", "--probes", "2",
       "--steps", "6", "--set", "density.grid=50", "--landscape",
       "--set", "landscape.points=5", "--set", "landscape.points_2d=3"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("report") / "run"
    assert main([*RUN, "--output", str(output)]) == 0
    return output


def test_report_rewrites_the_runs_summary_and_plot(finished_run: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["report", str(finished_run / "results.h5"), "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    original = json.loads((finished_run / "summary.json").read_text())
    assert json.loads((tmp_path / "summary.json").read_text()) == original
    for plot in ("density.png", "landscape_1d.png", "landscape_2d.png"):
        assert (tmp_path / plot).stat().st_size > 0
    assert "gradient" in original and "landscape" in original
    assert f"{original['eigen']['values'][0]:.15e}" in printed
    assert f"{original['trace']['estimate']:.10g}" in printed
    # the files line names the results.h5 it read and what it wrote, never a results.h5 in --output
    plots = ", ".join(str(tmp_path / plot) for plot in ("density.png", "landscape_1d.png", "landscape_2d.png"))
    assert printed.strip().splitlines()[-1] == (f"read: {finished_run / 'results.h5'}  summary: "
                                                f"{tmp_path / 'summary.json'}  plots: {plots}")
    assert not (tmp_path / "results.h5").exists()


def test_the_runs_files_line_lists_the_landscape_plots(tmp_path: Path, capsys) -> None:
    output = tmp_path / "run"
    assert main([*RUN, "--output", str(output)]) == 0
    plots = ", ".join(str(output / plot) for plot in ("density.png", "landscape_1d.png", "landscape_2d.png"))
    assert capsys.readouterr().out.strip().splitlines()[-1] == (f"results: {output / 'results.h5'}  summary: "
                                                                f"{output / 'summary.json'}  plots: {plots}")


def test_stored_density_is_rebuilt_exactly(finished_run: Path) -> None:
    stored = load_run(finished_run / "results.h5")
    with h5py.File(finished_run / "results.h5", "r") as f:
        np.testing.assert_array_equal(stored.results.density.grid, f["density/grid"][()])
        np.testing.assert_array_equal(stored.results.density.values, f["density/values"][()])
        np.testing.assert_array_equal(stored.results.eigen.eigenvectors.numpy().T, f["eigen/vectors"][()])


def test_comparison_table_holds_each_runs_numbers(finished_run: Path, tmp_path: Path) -> None:
    table_file = tmp_path / "table.md"
    assert main(["report", str(finished_run / "results.h5"), str(finished_run / "results.h5"),
                 "--table", str(table_file), "--output", str(tmp_path / "out")]) == 0
    summary = json.loads((finished_run / "summary.json").read_text())
    rows = table_file.read_text().strip().splitlines()
    assert len(rows) == 4  # header, rule, two runs
    top = f"{summary['eigen']['values'][0]:.6g} ± {summary['eigen']['residuals'][0]:.1e}"
    trace = f"{summary['trace']['estimate']:.6g} ± {summary['trace']['stderr']:.2g}"
    assert top in rows[2] and trace in rows[2]
    assert comparison_table([finished_run / "results.h5"]).splitlines()[2].startswith("| run | mlp |")


@pytest.mark.parametrize("content, message", [(None, "does not exist"), (b"not hdf5", "not a readable HDF5"),
                                              ("empty-h5", "not an hpcspec results.h5")])
def test_bad_results_file_is_one_line_exit_2(tmp_path: Path, content, message) -> None:
    path = tmp_path / "results.h5"
    if content == "empty-h5":
        h5py.File(path, "w").close()
    elif content is not None:
        path.write_bytes(content)
    done = spawn.run([sys.executable, "-m", "hpcspec", "report", str(path)], cwd=REPO, capture_output=True,
                     text=True, timeout=120, env=spawn.one_thread_env())
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_report_redraws_a_sweep_file(tmp_path: Path, capsys) -> None:
    output = tmp_path / "blocks"
    assert main(["run", "--data", "synthetic", "--set", "data.samples=40", "--set", "data.features=4", "--set",
                 "model.hidden=[5]", "--top-k", "1", "--per-block", "--output", str(output)]) == 0
    (output / "blocks.png").unlink()
    capsys.readouterr()
    assert main(["report", str(output / "blocks.h5")]) == 0
    printed = capsys.readouterr().out
    assert (output / "blocks.png").stat().st_size > 0
    with h5py.File(output / "blocks.h5", "r") as f:
        for block, top in zip(f["block"].asstr()[()], f["eigenvalues"][()][:, 0]):
            assert any(block in line and f"{top:.8g}" in line for line in printed.splitlines())


@pytest.mark.parametrize("rtol", [0.0, 0.5])
def test_trace_converged_is_written_only_when_rtol_was_asked(tmp_path: Path, rtol: float) -> None:
    output = tmp_path / "run"
    assert main(["run", "--data", "synthetic", "--set", "data.samples=60", "--set", "data.features=4", "--set",
                 "model.hidden=[5]", "--trace", "--trace-matvecs", "40", "--trace-method", "hutchinson",
                 "--set", f"trace.rtol={rtol}", "--output", str(output)]) == 0
    with h5py.File(output / "results.h5", "r") as f:
        attrs = dict(f["trace"].attrs)
    record = json.loads((output / "summary.json").read_text())["trace"]
    assert attrs["rtol"] == record["rtol"] == rtol
    if rtol == 0:  # a fixed budget: no stop test was made, so no claim of convergence either way
        assert "converged" not in attrs and "converged" not in record
    else:
        assert bool(attrs["converged"]) is record["converged"] is True
    stored = load_run(output / "results.h5")
    assert stored.results.trace_rtol == rtol and stored.results.trace.converged


def test_table_switches_and_density_links(finished_run: Path, tmp_path: Path, monkeypatch) -> None:
    # the same run given once by an absolute and once by a relative path: one link form, relative
    # to the table file's folder, and no BatchNorm/residual claim for an MLP
    monkeypatch.chdir(finished_run.parent)
    table_file = tmp_path / "tables" / "runs.md"
    assert main(["report", str(finished_run / "results.h5"), f"{finished_run.name}/results.h5",
                 "--table", str(table_file), "--output", str(tmp_path / "out")]) == 0
    rows = [row.split(" | ") for row in table_file.read_text().strip().splitlines()[2:]]
    link = f"[density.png]({Path(os.path.relpath(finished_run / 'density.png', table_file.parent)).as_posix()})"
    for cells in rows:
        assert cells[1] == "mlp" and cells[2] == "—" and cells[3] == "—"
        assert cells[-1] == f"{link} |"


# -- where a report may write ---------------------------------------------------------------------

def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hpcspec: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_report_output_that_is_a_file_or_lies_below_one_is_one_line(finished_run: Path, tmp_path: Path,
                                                                    capsys) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    results = str(finished_run / "results.h5")
    assert main(["report", results, "--output", str(notes)]) == 2
    assert "is a file, not a folder" in _one_error_line(capsys)
    assert main(["report", results, "--output", str(notes / "sub")]) == 2
    assert "cannot create the report folder" in _one_error_line(capsys)
    assert notes.read_text() == "mine"


@pytest.mark.parametrize("name", ["summary.json", "density.png", "landscape_1d.png", "landscape_2d.png"])
def test_report_refuses_a_folder_holding_a_users_file_it_would_replace(finished_run: Path, tmp_path: Path,
                                                                       capsys, name: str) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / name).write_bytes(b"the user's own")
    results = str(finished_run / "results.h5")
    assert main(["report", results, "--output", str(folder)]) == 2
    line = _one_error_line(capsys)
    assert name in line and "not written by a report" in line and "--force-output" in line
    assert sorted(p.name for p in folder.iterdir()) == [name] and (folder / name).read_bytes() == b"the user's own"
    assert main(["report", results, "--output", str(folder), "--force-output"]) == 0
    assert json.loads((folder / "summary.json").read_text()) == json.loads((finished_run / "summary.json").read_text())


def test_report_never_replaces_another_runs_summary(finished_run: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    shutil.copytree(finished_run, other)
    (other / "summary.json").write_text('{"the other run": 1}')
    assert main(["report", str(finished_run / "results.h5"), "--output", str(other)]) == 2
    assert "another run's folder" in _one_error_line(capsys)
    assert (other / "summary.json").read_text() == '{"the other run": 1}'
    assert main(["report", str(other / "results.h5"), "--output", str(other)]) == 0  # its own folder: rewritten
    assert json.loads((other / "summary.json").read_text()) == json.loads((finished_run / "summary.json").read_text())


def test_a_reports_folder_takes_the_same_report_again_and_no_other(finished_run: Path, tmp_path: Path,
                                                                    capsys) -> None:
    folder = tmp_path / "report"
    assert main(["report", str(finished_run / "results.h5"), "--output", str(folder)]) == 0
    assert main(["report", str(finished_run / "results.h5"), "--output", str(folder)]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    capsys.readouterr()
    assert main(["report", str(copy / "results.h5"), "--output", str(folder)]) == 2
    assert "a report of another results file" in _one_error_line(capsys)


def test_an_error_message_with_newlines_is_printed_on_one_line(finished_run: Path, capsys, monkeypatch) -> None:
    """A cause quoted from elsewhere (HDF5's text, a user's exception) may carry newlines."""
    from hpcspec.commands import report
    from hpcspec.errors import InputError, one_line

    def refuse(path):
        raise InputError("cannot read it (file read failed: time = Mon Dec  7 17:32:34 2026\n, errno = 5)\n  more")

    monkeypatch.setattr(report, "load_run", refuse)
    assert main(["report", str(finished_run / "results.h5")]) == 2
    line = _one_error_line(capsys)
    assert line.endswith("cannot read it (file read failed: time = Mon Dec  7 17:32:34 2026 , errno = 5) more")
    assert one_line("a\n\n  b\r\n c ") == "a b c" and one_line(OSError(5, "x")) == "[Errno 5] x"
