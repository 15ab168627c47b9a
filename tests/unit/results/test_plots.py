"""Run and sweep figures: blocks.png bars on a log axis start below the smallest value; the
density legend names which eigenvalues are marked."""

import numpy as np
import pytest

from hpcspec.config import load_config
from hpcspec.results.records import RunNumbers
from hpcspec.results.sweep_hdf5 import write_blocks
from hpcspec.results.sweepplots import bar_floor, blocks_plots

pytest.importorskip("matplotlib")


def test_bar_floor_is_the_decade_below_the_smallest_value():
    assert bar_floor(np.array([0.03, 2.0, 40.0])) == pytest.approx(0.01)
    assert bar_floor(np.array([0.5, 0.9, 1.2])) is None  # within LOG_SPAN: linear axis from 0
    assert bar_floor(np.array([-1.0, 3.0, 40.0])) is None  # a value ≤ 0: linear axis from 0


def test_blocks_png_bars_reach_from_the_floor_to_each_value(tmp_path, monkeypatch):
    import hpcspec.results.sweepplots as sweepplots

    drawn = []
    monkeypatch.setattr(sweepplots, "save_figure", lambda figure, out: drawn.append(figure))
    tops = np.array([0.004, 0.08, 3.5])
    numbers = [RunNumbers(num_params=10, loss=0.1, eigenvalues=np.array([top]), residuals=np.array([1e-9]),
                          trace=10 * top, trace_stderr=0.1 * top) for top in tops]
    path = tmp_path / "blocks.h5"
    write_blocks(path, load_config(), ["a", "b", "c"], ["a.*", "b.*", "c.*"], ["a/results.h5"] * 3, numbers)
    blocks_plots(path)
    assert len(drawn) == 1
    for axes, values in zip(drawn[0].axes, (tops, 10 * tops)):
        assert axes.get_yscale() == "log"
        bars = axes.patches
        floor = bar_floor(values)
        assert axes.get_ylim()[0] == pytest.approx(floor)
        assert [bar.get_y() for bar in bars] == pytest.approx([floor] * 3)
        assert [bar.get_y() + bar.get_height() for bar in bars] == pytest.approx(list(values))


def test_density_legend_names_the_end_the_marks_come_from(tmp_path, monkeypatch):
    import hpcspec.results.plots as plots
    from hpcspec.config import to_toml

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, out: drawn.append(figure))
    grid = np.linspace(-1.0, 2.0, 50)
    for which, label in (("both_ends", "eigenvalues at both ends (2)"), ("largest", "top eigenvalues (2)"),
                         ("smallest", "bottom eigenvalues (2)")):
        config = to_toml(load_config(overrides={"eigen.which": which}))
        plots.plot_density(tmp_path / "d.png", grid, np.exp(-grid ** 2), eigenvalues=[-0.9, 1.9],
                           which=plots.stored_which(config))
        texts = [text.get_text() for text in drawn[-1].axes[0].get_legend().get_texts()]
        assert texts[-1] == label
