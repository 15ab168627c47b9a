"""A launch that times out leaves no rank behind.

Open MPI's ``prterun`` puts every rank in a process group of its own, so killing mpirun (what
``subprocess.run`` with a timeout does) or its process group leaves the ranks running, each keeping a
core busy. :mod:`spawn` kills the launch's whole session instead: on its own timeout, when
pytest-timeout interrupts the test (its default ``signal`` method raises in the test), and in the
teardown of a test that left a child running. Each case here launches ``mpirun -n 2`` of a script
that records its pid and sleeps, lets it time out, and checks that both ranks are gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import spawn
from helpers import REPO
from launches import launch_env, processes

pytestmark = pytest.mark.mpi

HANG = """\
import os, sys, time
from mpi4py import MPI
path = os.path.join(sys.argv[1], "rank%d.pid" % MPI.COMM_WORLD.Get_rank())
with open(path + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.replace(path + ".tmp", path)
time.sleep(600)
"""

#: Run by an inner pytest whose --timeout interrupts both tests while their ranks sleep.
INNER = """\
import sys, time
from pathlib import Path
import spawn

ENV = {env!r}

def _job(name):
    folder = Path(__file__).parent / name
    folder.mkdir()
    return folder, ["mpirun", "--oversubscribe", "-n", "2", sys.executable, str(Path(__file__).parent / "hang.py"),
                    str(folder)]

def test_interrupted_in_run():
    folder, command = _job("run")
    spawn.run(command, timeout=600, env=ENV)  # pytest-timeout raises in here

def test_left_running_by_the_test():
    folder, command = _job("popen")
    spawn.popen(command, env=ENV)  # never killed by the test: the reap_children teardown must
    time.sleep(600)
"""

INNER_CONFTEST = "from spawn import reap_children  # noqa: F401\n"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _assert_ranks_gone(folder: Path, within: float = 5.0) -> None:
    pids = sorted(int(p.read_text()) for p in folder.glob("rank*.pid"))
    assert len(pids) == 2, f"the ranks never started in {folder}: {sorted(folder.iterdir())}"
    deadline = time.monotonic() + within
    while any(_alive(pid) for pid in pids) or processes(folder):
        assert time.monotonic() < deadline, f"orphaned ranks survived the timed-out launch: {pids}"
        time.sleep(0.05)


def _write(tmp_path: Path) -> None:
    (tmp_path / "hang.py").write_text(HANG)


def test_a_launch_past_its_timeout_takes_its_ranks_with_it(tmp_path):
    _write(tmp_path)
    folder = tmp_path / "ranks"
    folder.mkdir()
    command = ["mpirun", "--oversubscribe", "-n", "2", sys.executable, str(tmp_path / "hang.py"), str(folder)]
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        spawn.run(command, timeout=12, env=launch_env(), capture_output=True, text=True)
    assert time.monotonic() - started < 40
    _assert_ranks_gone(folder)


def test_a_test_stopped_by_pytest_timeout_leaves_no_rank(tmp_path):
    _write(tmp_path)
    (tmp_path / "test_inner.py").write_text(INNER.replace("{env!r}", repr(launch_env())))
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    env = spawn.one_thread_env(PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "support"), str(REPO)]))
    done = spawn.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
                      "--rootdir", str(tmp_path), "--timeout", "12", "--timeout-method", "signal",
                      str(tmp_path / "test_inner.py")], cwd=tmp_path, env=env, capture_output=True, text=True,
                     timeout=150)
    assert done.returncode == 1 and done.stdout.count("Timeout") >= 2, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 failed" in done.stdout, done.stdout[-3000:]
    for name in ("run", "popen"):
        _assert_ranks_gone(tmp_path / name)
