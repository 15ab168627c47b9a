"""No hang without end, no lost work on Ctrl-C, no orphans — under mpirun.

A SIGSTOPped rank is named by the collective watchdog and the job ends within its timeout (exit 4);
a rank waiting in a collective costs almost no CPU; ranks whose mpirun was SIGKILLed stop (exit 5)
without committing again; Ctrl-C (SIGINT to mpirun's process group) leaves a state that --resume
continues from, and through jobs/interactive.sh ends in a committed checkpoint and exit 3.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, mpirun
from launches import LANCZOS, LANCZOS_NUMBERS, kill_everything, latest, launch_env, rank_pids, read_numbers, wait_for
import spawn

pytestmark = pytest.mark.mpi

WATCHED = [*LANCZOS, "--set", "comm.timeout_s=5", "--set", "comm.timeout_factor=0"]


def _launch(ranks: int, output: Path, args: list[str], wrapper: list[str] | None = None) -> subprocess.Popen:
    """``mpirun -n ranks python -m hpcspec run --output OUTPUT --resume ARGS`` in a new session
    (its process group is the one a terminal would signal), optionally under ``wrapper``."""
    command = ["mpirun", "--oversubscribe", "-n", str(ranks), sys.executable, "-m", "hpcspec", "run",
               "--output", str(output), "--resume", *args]
    return spawn.popen([*(wrapper or []), *command], env=launch_env("0"), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, preexec_fn=_as_in_a_terminal)


def _as_in_a_terminal() -> None:
    """A terminal's foreground job starts with SIGINT and SIGTERM at their defaults. A suite started
    in the background (``cmd &`` from a script: SIGINT ignored, inherited) would otherwise leave them
    ignored, and bash cannot trap a signal ignored on entry: interactive.sh would never see Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _world_rank(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(item for item in environ if item.startswith(b"OMPI_COMM_WORLD_RANK=")).split(b"=")[1])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    output = tmp_path_factory.mktemp("reference")
    proc = _launch(2, output, LANCZOS)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return read_numbers(output, LANCZOS_NUMBERS)


def _resume_to_end(output: Path, reference: dict[str, np.ndarray]) -> None:
    proc = _launch(2, output, LANCZOS)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    resumed = read_numbers(output, LANCZOS_NUMBERS)
    for key, value in reference.items():
        assert np.array_equal(resumed[key], value), key


@pytest.mark.parametrize("ranks, victim", [(2, 1), (2, 0), (3, 1)])
def test_stopped_rank_is_named_and_the_job_ends_within_its_timeout(tmp_path, ranks, victim):
    output = tmp_path / "hung"
    proc = _launch(ranks, output, WATCHED)
    try:
        assert wait_for(proc, lambda: latest(output / "checkpoints") >= "step-00000003")
        pids = {_world_rank(pid): pid for pid in rank_pids(output)}
        assert len(pids) == ranks, pids
        os.kill(pids[victim], signal.SIGSTOP)
        stopped = time.monotonic()
        out, _ = proc.communicate(timeout=60)
        elapsed = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            kill_everything(proc, output)
    print(f"{ranks} ranks, rank {victim} stopped: exit {proc.returncode} after {elapsed:.1f} s")  # pytest -s
    assert proc.returncode == 4, out[-3000:]
    assert elapsed < 30, f"took {elapsed:.1f} s"
    lines = [line for line in out.splitlines() if line.startswith("hpcspec: error:")]
    assert len(lines) == 1, out[-3000:]
    assert f"rank(s) {victim} did not arrive" in lines[0] and "comm.timeout_s" in lines[0], lines[0]
    assert "Traceback" not in out
    assert not rank_pids(output), "a rank survived the abort"


WAIT_COST = '''
import resource, time
import torch
from hpcspec.parallel.comm import world
comm = world("mpi")
if comm.rank == 1:
    time.sleep(10)
before, started = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
comm.allreduce_sum_(torch.zeros(4, dtype=torch.float64))
after, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - started
cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
if comm.rank == 0:
    print(f"waited {wall:.2f} s, CPU {cpu:.3f} s, {cpu / wall:.4f} CPU s per wall s")
'''


def test_a_rank_waiting_10_s_in_a_collective_costs_almost_no_cpu(tmp_path):
    (tmp_path / "waitcost.py").write_text(WAIT_COST)
    done = mpirun(2, [str(tmp_path / "waitcost.py")], cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("waited"))
    print(line)  # shown with pytest -s
    wall, per_second = float(line.split()[1]), float(line.split()[-6])
    assert wall >= 9.5 and per_second < 0.05, line  # a blocking Allreduce costs 1.0 (Open MPI busy-polls)


def test_ranks_of_a_killed_mpirun_stop_before_the_next_commit(tmp_path, reference):
    output = tmp_path / "orphans"
    proc = _launch(2, output, LANCZOS)
    try:
        assert wait_for(proc, lambda: latest(output / "checkpoints") >= "step-00000003")
        proc.kill()  # mpirun alone, as a node's OOM killer or a lost allocation would
        proc.wait(timeout=10)
        killed = time.monotonic()
        deadline = killed + 20
        while rank_pids(output):
            assert time.monotonic() < deadline, "ranks outlived their launcher by 20 s"
            time.sleep(0.05)
        print(f"orphaned ranks stopped {time.monotonic() - killed:.2f} s after mpirun was killed")  # pytest -s
        last = latest(output / "checkpoints")
        time.sleep(1.0)
        assert latest(output / "checkpoints") == last
    finally:
        kill_everything(proc, output)
    _resume_to_end(output, reference)


def _ctrl_c(output: Path, wrapper: list[str]) -> tuple[subprocess.Popen, str, float]:
    """Start a 2-rank run (under ``wrapper``), SIGINT its whole foreground process group after the
    5th commit, as a terminal's Ctrl-C does; returns (process, output text, seconds to exit)."""
    proc = _launch(2, output, LANCZOS, wrapper=wrapper or None)
    try:
        assert wait_for(proc, lambda: latest(output / "checkpoints") >= "step-00000005")
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        out, _ = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        kill_everything(proc, output)
    return proc, out, elapsed


def test_ctrl_c_to_the_mpirun_process_group_leaves_a_resumable_state(tmp_path, reference):
    """What a terminal's Ctrl-C does to a bare mpirun: Open MPI kills the ranks within 0.5 s."""
    output = tmp_path / "ctrl-c"
    proc, out, elapsed = _ctrl_c(output, [])
    print(f"Ctrl-C to bare mpirun: exit {proc.returncode} after {elapsed:.2f} s")  # pytest -s
    assert proc.returncode not in (0, 3) and elapsed < 5
    assert not rank_pids(output)
    _resume_to_end(output, reference)


def test_ctrl_c_under_interactive_sh_commits_exits_3_and_resumes(tmp_path, reference):
    output = tmp_path / "ctrl-c-wrapped"
    proc, out, elapsed = _ctrl_c(output, [str(REPO / "jobs" / "interactive.sh")])
    print(f"Ctrl-C under interactive.sh: exit {proc.returncode} after {elapsed:.2f} s")  # pytest -s
    assert proc.returncode == 3, out[-3000:]
    assert "stopped on SIGUSR1 after committing checkpoint" in out
    stopped_at = latest(output / "checkpoints")
    assert (output / "checkpoints" / stopped_at / "manifest.json").is_file()
    _resume_to_end(output, reference)
