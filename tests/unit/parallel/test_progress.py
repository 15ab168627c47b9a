"""Progress display (hpcspec.parallel.progress) and the solvers' progress hook: log lines on a fake
clock, a bar on a fake terminal, silence on other ranks, honest plans, numbers unchanged."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from helpers import classification_data, mlp

from hpcspec.analyses.tasks import run_tasks
from hpcspec.config import load_config
from hpcspec.curvature.dense import dense_hessian
from hpcspec.curvature.operator import HessianOperator
from hpcspec.parallel.progress import BarMeter, LogMeter, ProgressDisplay, duration
from hpcspec.solvers.block_lanczos import BlockLanczos
from hpcspec.solvers.density import SLQ
from hpcspec.solvers.lanczos import Lanczos
from hpcspec.solvers.matrix import MatrixOperator
from hpcspec.solvers.power import PowerIteration
from hpcspec.solvers.trace import TraceEstimator


class FakeClock:
    """Seconds that move only when a test says so (or by ``tick`` on every read)."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


def spectrum_operator(n: int = 60, seed: int = 0) -> MatrixOperator:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    values = np.concatenate([[50.0, 40.0, 30.0], np.linspace(-1.0, 1.0, n - 3)])
    return MatrixOperator(torch.from_numpy((q * values) @ q.T))


def test_log_lines_respect_the_cadence_and_compute_rate_and_eta():
    clock, lines = FakeClock(), []
    display = ProgressDisplay(0, 10.0, lines.append, stream=Pipe(), clock=clock)
    meter = display.task("trace (krylov)", 200, bound=False)
    assert isinstance(meter, LogMeter)
    for done in range(1, 201):  # 4 products a second: one every 0.25 s
        clock.now += 0.25
        meter.update(done)
    display.finished(meter)
    # 50 s in all: a line at 10, 20, 30, 40 and 50 s, none more often
    assert len(lines) == 5
    assert lines[0] == ("trace (krylov): 40 of 200 products (20 %), 4 products/s, 40 s left")
    assert lines[1].startswith("trace (krylov): 80 of 200 products (40 %), 4 products/s, 30 s left")
    assert lines[-1].endswith("200 of 200 products (100 %), 4 products/s, 0 s left")


def test_an_upper_bound_says_at_most_and_a_resumed_task_counts_only_its_own_rate():
    clock, lines = FakeClock(), []
    display = ProgressDisplay(0, 5.0, lines.append, stream=Pipe(), clock=clock)
    meter = display.task("eigen (block)", 1007, bound=True, done=300)  # resumed after 300 products
    clock.now += 5.0
    meter.update(310)  # 10 products in 5 s
    assert lines == ["eigen (block): 310 of at most 1,007 products (31 %), 2 products/s, at most 5m48s left"]
    assert meter.rate() == pytest.approx(2.0)
    assert meter.eta() == pytest.approx((1007 - 310) / 2.0)


def test_no_rate_yet_and_short_tasks_print_nothing():
    clock, lines = FakeClock(), []
    meter = ProgressDisplay(0, 30.0, lines.append, stream=Pipe(), clock=clock).task("density (SLQ)", 320, bound=True)
    assert meter.eta() is None and "ETA unknown" in meter.text()
    clock.now += 29.0
    meter.update(320)
    assert lines == []


@pytest.mark.parametrize("rank, every", [(1, 10.0), (3, 10.0), (0, 0.0)])
def test_other_ranks_and_every_seconds_zero_show_nothing(rank, every):
    clock, lines = FakeClock(tick=100.0), []
    for stream in (Pipe(), FakeTerminal()):
        display = ProgressDisplay(rank, every, lines.append, stream=stream, clock=clock)
        meter = display.task("eigen (lanczos)", 50, bound=True)
        for done in range(1, 51):
            meter.update(done)
        display.around(lines.append)("a task's own log line")
        display.finished(meter)
        assert stream.getvalue() == ""
    assert lines == ["a task's own log line"] * 2  # log lines still go through (the logger filters ranks)


def test_terminal_bar_redraws_in_place_and_steps_aside_for_log_lines():
    clock, terminal, lines = FakeClock(), FakeTerminal(), []
    display = ProgressDisplay(0, 30.0, lines.append, stream=terminal, clock=clock, bar="builtin")
    meter = display.task("trace (hutchpp)", 100, bound=False)
    assert isinstance(meter, BarMeter)
    say = display.around(lambda message: (terminal.write(message + "\n"), lines.append(message)))
    for done in range(10, 101, 10):
        clock.now += 1.0
        meter.update(done)
        if done == 50:
            say("trace: halfway")
    display.finished(meter)
    out = terminal.getvalue()
    frames = out.split("\r\x1b[K")
    assert "[############............] trace (hutchpp): 50 of 100 products (50 %), 10 products/s, 5 s left" in frames
    # the log line sits on its own line, the bar cleared before it and redrawn after
    assert "trace: halfway\n" in frames and lines == ["trace: halfway"]
    assert frames[-1] == "[########################] trace (hutchpp): 100 of 100 products (100 %), 10 products/s, 0 s left\n"
    assert out.count("\n") == 2  # the log line and the bar's last frame, nothing else scrolls


def test_terminal_bar_is_throttled():
    clock, terminal = FakeClock(), FakeTerminal()
    meter = ProgressDisplay(0, 1.0, print, stream=terminal, clock=clock, bar="builtin").task("x", 1000, bound=False)
    for done in range(1, 1001):
        clock.now += 0.001  # 1000 updates in 1 s: at most one frame per 0.1 s
        meter.update(done)
    assert 9 <= terminal.getvalue().count("\r\x1b[K[") <= 11


def test_tqdm_bar_when_installed():
    pytest.importorskip("tqdm", reason="tqdm is the optional 'progress' extra; the built-in bar is used without it")
    terminal = FakeTerminal()
    display = ProgressDisplay(0, 1.0, print, stream=terminal)
    meter = display.task("density (SLQ)", 40, bound=True)
    for done in range(4, 41, 4):
        meter.update(done)
    display.finished(meter)
    assert "density (SLQ) (total ≤, stops early)" in terminal.getvalue() and "40/40" in terminal.getvalue()


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (42.2, "42 s"), (185, "3m05s"), (7620, "2h07m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


SOLVERS = {
    "lanczos": lambda op: Lanczos(op, 3, tol=1e-10, seed=1),
    "block": lambda op: BlockLanczos(op, 3, tol=1e-10, block_size=2, seed=1),
    "power": lambda op: PowerIteration(op, 2, maxiter=40, tol=1e-6, seed=1),
    "slq": lambda op: SLQ(op, probes=3, steps=20, seed=1),
    "hutchpp": lambda op: TraceEstimator(op, method="hutchpp", matvecs=30, seed=1),
    "xtrace": lambda op: TraceEstimator(op, method="xtrace", matvecs=31, seed=1),
    "adaptive": lambda op: TraceEstimator(op, method="krylov", matvecs=50, rtol=0.05, seed=1),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_the_hook_sees_every_product_within_an_honest_plan_and_changes_no_number(name):
    op = spectrum_operator()
    seen: list[int] = []
    hooked = SOLVERS[name](op)
    planned, bound = hooked.planned_matvecs()
    with_hook = hooked.run(progress=seen.append)
    without = SOLVERS[name](op).run()
    assert seen == sorted(seen) and seen[-1] == hooked.num_matvecs
    assert hooked.num_matvecs <= planned and (bound or hooked.num_matvecs == planned)
    for field in ("eigenvalues", "estimate", "samples", "nodes", "weights"):
        if hasattr(with_hook, field):
            assert np.array_equal(np.asarray(getattr(with_hook, field)), np.asarray(getattr(without, field)))


def test_a_real_run_shows_each_task_and_the_dense_check():
    """A captured display of a small real run: an MLP's Hessian, every task, the dense Hessian."""
    model = mlp(seed=0, sizes=(5, 7, 3))
    x, y = classification_data(n=37)
    op = HessianOperator(model, "cross_entropy", (x, y), batch_size=10, method="double_backward")
    cfg = load_config(overrides={"tasks": ["eigen", "trace", "density"], "eigen.top_k": 3, "trace.matvecs": 40,
                                 "density.probes": 2, "density.steps": 15})
    lines: list[str] = []
    display = ProgressDisplay(0, 1.0, lines.append, stream=Pipe(), clock=FakeClock(tick=0.5))
    plain = run_tasks(op, cfg)
    shown = run_tasks(op, cfg, lines.append, display=display)
    meter = display.task("dense Hessian", op.size, bound=False)
    dense_hessian(op, block_size=16, progress=meter.update)
    display.finished(meter)
    print("\n".join(lines))
    pattern = r"{}: \d+ of {}[\d,]+ products \(\d+ %\), [\d.]+ products/s, {}"
    for label, bound in (("eigen \\(block\\)", True), ("trace \\(krylov\\)", False), ("density \\(SLQ\\)", True),
                         ("dense Hessian", False)):
        at_most = "at most " if bound else ""
        assert any(re.fullmatch(pattern.format(label, at_most, f"(?:{at_most}.+ left)"), line) for line in lines), label
    assert f"dense Hessian: {op.size} of {op.size} products (100 %)" in "\n".join(lines)
    assert any(line.startswith("trace (krylov) finished in") for line in lines)
    assert np.array_equal(plain.eigen.eigenvalues, shown.eigen.eigenvalues)
    assert plain.trace.estimate == shown.trace.estimate
    assert np.array_equal(plain.density.values, shown.density.values)


def test_display_run_closes_the_bar_when_a_checkpoint_stops_the_run():
    clock, terminal = FakeClock(tick=1.0), FakeTerminal()
    display = ProgressDisplay(0, 1.0, print, stream=terminal, clock=clock, bar="builtin")

    class Stop(Exception):
        pass

    def boundary(solver):
        if solver.num_matvecs == 5:
            raise Stop

    with pytest.raises(Stop):
        display.run(Lanczos(spectrum_operator(), 3, seed=1), "eigen (lanczos)", boundary)
    assert display.current is None
    last = terminal.getvalue().split("\r\x1b[K")[-1]  # the final frame stays, ended by a newline
    assert last.startswith("[##......................] eigen (lanczos): 5 of at most 60 products (8 %), ")
    assert last.endswith(" left\n") and terminal.getvalue().count("\n") == 1


def test_a_terminal_of_zero_columns_gets_log_lines_and_a_sized_one_a_bar():
    """A pseudo-terminal nobody sized reports 0 columns: tqdm draws nothing there, so log lines."""
    import fcntl
    import os
    import struct
    import termios

    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as stream:
            display = ProgressDisplay(0, 10.0, [].append, stream=stream, bar="builtin")
            assert os.get_terminal_size(slave).columns == 0
            assert isinstance(display.task("trace", 10, bound=False), LogMeter)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
            assert isinstance(display.task("trace", 10, bound=False), BarMeter)
    finally:
        os.close(master)
        os.close(slave)
