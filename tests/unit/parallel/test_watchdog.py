"""The collective watchdog in one process: its deadline, its report and the launcher check,
driven by a fake clock, a fake request and a fake side communicator (the real thing under
mpirun is tests/mpi/test_watchdog_mpi.py)."""

from __future__ import annotations

import os

import pytest

from hpcspec.parallel import watchdog as wd


class Clock:
    """Monotonic seconds that advance by ``step`` on every reading."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Request:
    """Completes on its ``after``-th test."""

    def __init__(self, after: int) -> None:
        self.after, self.tests = after, 0

    def Test(self) -> bool:  # noqa: N802 - mpi4py's name
        self.tests += 1
        return self.tests >= self.after


class SilentPeers:
    """A side communicator of ``size`` ranks in which nobody ever answers."""

    def __init__(self, size: int) -> None:
        self.size, self.sent = size, []

    def Get_rank(self) -> int:  # noqa: N802
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return self.size

    def Iprobe(self, **kwargs) -> bool:  # noqa: N802
        return False

    def Isend(self, buffer, dest: int, tag: int) -> object:  # noqa: N802
        self.sent.append((dest, tag))
        return object()


class Aborted(Exception):
    pass


def _abort(code: int) -> None:
    raise Aborted(code)


def test_limit_is_the_timeout_or_a_multiple_of_the_longest_gap():
    clock = Clock(0.5)
    dog = wd.Watchdog(SilentPeers(2), _abort, timeout_s=10.0, factor=20.0, clock=clock, parent=os.getppid())
    assert dog.limit == 10.0
    dog.wait(Request(1), "allreduce")  # entered 0.5 s after the watchdog was made
    assert dog.longest_gap == pytest.approx(0.5) and dog.limit == 10.0
    clock.now += 3.0  # 3 s of computation before the next collective
    dog.wait(Request(1), "allreduce")
    assert dog.longest_gap == pytest.approx(3.5, abs=0.01) and dog.limit == pytest.approx(70.0, abs=0.2)
    dog.configure(100.0, 0.0)
    assert dog.limit == 100.0 and dog.sequence == 2


def test_a_collective_past_its_limit_names_the_silent_ranks_and_aborts_with_4(capsys):
    peers = SilentPeers(3)
    dog = wd.Watchdog(peers, _abort, timeout_s=5.0, factor=0.0, clock=Clock(0.05), parent=os.getppid())
    with pytest.raises(Aborted) as raised:
        dog.wait(Request(10**9), "bcast")
    assert raised.value.args == (wd.EXIT_HUNG,)
    assert sorted(dest for dest, _ in peers.sent) == [1, 2]  # every other rank was asked
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcspec: error: collective #1 (bcast) waited 5 s")
    assert "rank(s) 1, 2 did not arrive" in lines[0] and "aborting all 3 ranks (exit 4)" in lines[0]


def test_a_rank_whose_launcher_is_gone_exits_5(monkeypatch, capsys):
    dog = wd.Watchdog(SilentPeers(2), _abort, clock=Clock(0.01), parent=os.getppid() + 1)

    def exit_(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(wd.os, "_exit", exit_)
    with pytest.raises(SystemExit) as raised:
        dog.wait(Request(1), "allreduce")
    assert raised.value.code == wd.EXIT_LAUNCHER_GONE
    assert "the launcher (pid" in capsys.readouterr().err


def test_check_launcher_and_configure_ignore_communicators_without_a_watchdog():
    class Plain:
        pass

    wd.check_launcher(Plain())
    wd.configure(Plain(), 5.0, 0.0)
