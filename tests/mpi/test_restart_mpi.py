"""Kill it anywhere, resume, same answer — under mpirun, with SIGKILL at random moments.

A Lanczos run and an SLQ run on 2 ranks are killed 20 times each: right after a commit, in the
middle of a checkpoint write (the test hook ``HPCSPEC_TEST_CHECKPOINT_PAUSE`` staggers the rank
writes and pauses rank 0 before the directory rename and before the LATEST replace, so those
windows are wide enough to hit), between the rename and the LATEST pointer, and at random times
(setup, mid-product). Each time the job is resumed; the final α, β and eigenvalues must be bitwise
those of an uninterrupted run on 2 ranks, and within 1e-10 of it when resumed on 1 or 3 ranks.
Stop signals are tested too: SIGUSR1 to mpirun, SIGTERM to the ranks → checkpoint, exit 3, resume completes.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import mpirun
from launches import (
    BLOCK,
    BLOCK_NUMBERS,
    LANCZOS,
    LANCZOS_NUMBERS,
    SLQ,
    SLQ_NUMBERS,
    kill_everything,
    latest,
    launch,
    rank_pids,
    read_numbers,
    wait_for,
)

pytestmark = pytest.mark.mpi

KILLS = 20


def _run_to_end(ranks: int, output: Path, args: list[str]) -> None:
    proc = launch(ranks, output, args, pause="0")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]


def _kill_loop(output: Path, args: list[str], seed: int) -> list[str]:
    """SIGKILL the job KILLS times at varied moments, resuming each time; returns where each kill hit."""
    rng = random.Random(seed)
    checkpoints = output / "checkpoints"
    moments: list[str] = []
    while len(moments) < KILLS:
        kind = ("after a commit", "mid-write", "before LATEST", "random time")[len(moments) % 4]
        before = latest(checkpoints)
        proc = launch(2, output, args)
        try:
            if kind == "after a commit":
                hit = wait_for(proc, lambda: latest(checkpoints) != before)
                time.sleep(rng.uniform(0.0, 0.15))
            elif kind == "mid-write":
                hit = wait_for(proc, lambda: any(checkpoints.glob("step-*.tmp")))
            elif kind == "before LATEST":
                def renamed() -> bool:
                    done = sorted(p.name for p in checkpoints.glob("step-*") if not p.name.endswith((".tmp", ".damaged")))
                    return bool(done) and done[-1] > (latest(checkpoints) or "")
                hit = wait_for(proc, renamed)
            else:
                time.sleep(rng.uniform(0.2, 4.0))
                hit = proc.poll() is None
            if not hit:
                out = proc.communicate()[0]
                pytest.fail(f"the run finished after only {len(moments)} kills; make it longer\n{out[-2000:]}")
            temporaries = [p.name for p in checkpoints.glob("*.tmp")] if checkpoints.is_dir() else []
            kill_everything(proc, output)
            moments.append(f"{kind}{' (temporaries: ' + ', '.join(temporaries) + ')' if temporaries else ''}")
        finally:
            if proc.poll() is None:
                kill_everything(proc, output)
    return moments


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    """Uninterrupted runs on 2 ranks."""
    found = {}
    for name, args, numbers in (("lanczos", LANCZOS, LANCZOS_NUMBERS), ("slq", SLQ, SLQ_NUMBERS),
                                ("block", BLOCK, BLOCK_NUMBERS)):
        output = tmp_path_factory.mktemp(f"reference-{name}")
        _run_to_end(2, output, args)
        found[name] = read_numbers(output, numbers)
    return found


@pytest.mark.parametrize("name, args, numbers", [("lanczos", LANCZOS, LANCZOS_NUMBERS), ("slq", SLQ, SLQ_NUMBERS),
                                                 ("block", BLOCK, BLOCK_NUMBERS)])
def test_sigkill_twenty_times_then_resume_is_bitwise(tmp_path, references, name, args, numbers):
    """For the block solver most kills land inside a restart cycle (it restarts every 2–3 passes)."""
    output = tmp_path / f"killed-{name}"
    moments = _kill_loop(output, args, seed={"lanczos": 7, "slq": 8, "block": 9}[name])
    print(f"{name}: {len(moments)} kills:", "; ".join(moments))  # shown with pytest -s
    assert sum("temporaries" in m for m in moments) >= KILLS // 4, moments  # some kills hit a write
    _run_to_end(2, output, args)
    resumed = read_numbers(output, numbers)
    for key, value in references[name].items():
        assert np.array_equal(resumed[key], value), f"{key} differs after {len(moments)} kills: {moments}"


@pytest.mark.parametrize("ranks", [1, 3])
def test_resume_on_another_rank_count_agrees_to_1e_10(tmp_path, references, ranks):
    output = tmp_path / "moved"
    proc = launch(2, output, LANCZOS, pause="0")
    try:
        assert wait_for(proc, lambda: latest(output / "checkpoints") >= "step-00000025")
    finally:
        kill_everything(proc, output)
    _run_to_end(ranks, output, LANCZOS)
    resumed, reference = read_numbers(output, LANCZOS_NUMBERS), references["lanczos"]
    with h5py.File(output / "results.h5") as f:
        assert f.attrs["world_size"] == ranks and "step-0000002" in f.attrs["resumed_from"]
    for key in ("eigen/values", "eigen/alpha", "eigen/beta"):
        error = np.max(np.abs(resumed[key] - reference[key]) / np.max(np.abs(reference[key])))
        print(f"resumed on {ranks} rank(s): {key} relative difference {error:.1e}")  # shown with pytest -s
        assert error <= 1e-10, f"{key}: relative difference {error:.1e} on {ranks} ranks"


@pytest.mark.parametrize("signum, target", [(signal.SIGUSR1, "mpirun"), (signal.SIGTERM, "ranks")])
def test_stop_signal_checkpoints_exits_3_and_resumes(tmp_path, references, signum, target):
    """USR1 to mpirun (what the job scripts forward), or TERM to every rank (what slurmstepd sends at
    walltime; Open MPI's mpirun itself answers TERM by killing its ranks 0.25 s later, so the job
    scripts turn TERM into USR1)."""
    output = tmp_path / "signalled"
    proc = launch(2, output, LANCZOS, pause="0")
    try:
        assert wait_for(proc, lambda: latest(output / "checkpoints") >= "step-00000005")
        sent = time.monotonic()
        if target == "mpirun":
            proc.send_signal(signum)
        else:
            pids = rank_pids(output)
            assert len(pids) == 2, pids
            for pid in pids:
                os.kill(pid, signum)
        out, _ = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            kill_everything(proc, output)
    assert proc.returncode == 3, out[-3000:]
    print(f"SIG{signal.Signals(signum).name[3:]} to {target}: exit 3 after {elapsed:.2f} s")  # shown with pytest -s
    assert elapsed < 5.0, f"took {elapsed:.1f} s to stop"
    assert f"stopped on {signal.Signals(signum).name} after committing checkpoint" in out
    stopped_at = latest(output / "checkpoints")
    assert stopped_at and (output / "checkpoints" / stopped_at / "manifest.json").is_file()
    _run_to_end(2, output, LANCZOS)
    resumed = read_numbers(output, LANCZOS_NUMBERS)
    for key, value in references["lanczos"].items():
        assert np.array_equal(resumed[key], value), key


def test_exception_on_one_rank_mid_run_ends_the_job_within_10_s(tmp_path):
    """Rank 1 raises inside a product while rank 0 waits in the reduction: MPI_Abort ends both."""
    stamp = tmp_path / "raised-at"
    (tmp_path / "flaky.py").write_text(
        "import os, time, torch\n"
        "class Flaky(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.layer = torch.nn.Linear(64, 10)\n"
        "        self.calls = 0\n"
        "    def forward(self, x):\n"
        "        self.calls += 1\n"
        "        if os.environ.get('OMPI_COMM_WORLD_RANK') == '1' and self.calls == 60:\n"
        f"            open({str(stamp)!r}, 'w').write(repr(time.time()))\n"
        "            raise RuntimeError('injected failure on rank 1')\n"
        "        return self.layer(torch.tanh(x.flatten(1)))\n"
        "def make_model():\n"
        "    return Flaky().double()\n")
    result = mpirun(2, ["-m", "hpcspec", "run", "--model", "flaky:make_model", "--top-k", "3", "--tol", "1e-14",
                        "--set", "hessian.check=false", "--set", "hessian.graph_budget_mb=0",  # a forward per product
                        "--output", str(tmp_path / "o")], tmp_path, timeout=120)
    ended = time.time()
    assert result.returncode not in (0, 2, 3), result.stderr[-2000:]
    assert "injected failure on rank 1" in result.stderr and "aborting all 2 ranks" in result.stderr
    assert stamp.is_file(), "the failure was not injected mid-run"
    assert ended - float(stamp.read_text()) < 10.0
    assert not (tmp_path / "o" / "results.h5").exists()
