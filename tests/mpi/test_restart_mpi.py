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
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import REPO, mpirun

pytestmark = pytest.mark.mpi

COMMON = ["--set", "hessian.hvp='double_backward'", "--set", "hessian.check=false", "--set", "density.plot=false",
          "--set", "checkpoint.every_iters=1"]
LANCZOS = ["--top-k", "5", "--eigen-method", "lanczos", "--tol", "1e-14", "--maxiter", "60", *COMMON]
#: The default solver with a basis so small that it restarts every few passes, then a check round.
BLOCK = ["--top-k", "5", "--block-size", "2", "--max-basis", "11", "--tol", "1e-10", *COMMON]
BLOCK_NUMBERS = ("eigen/values", "eigen/vectors", "eigen/residuals")
SLQ = ["--density", "--probes", "3", "--steps", "40", *COMMON]
#: (dataset, what it is) compared between runs.
LANCZOS_NUMBERS = ("eigen/values", "eigen/alpha", "eigen/beta")
SLQ_NUMBERS = ("lanczos/alpha", "lanczos/beta", "density/nodes")
KILLS = 20
PAUSE = "0.05"


def _env(pause: str = PAUSE) -> dict[str, str]:
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                HPCSPEC_TEST_CHECKPOINT_PAUSE=pause)


def _launch(ranks: int, output: Path, args: list[str], pause: str = PAUSE) -> subprocess.Popen:
    command = ["mpirun", "--oversubscribe", "-n", str(ranks), sys.executable, "-m", "hpcspec", "run",
               "--output", str(output), "--resume", *args]
    return subprocess.Popen(command, env=_env(pause), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _processes(marker: Path) -> dict[int, list[bytes]]:
    """Live processes whose command line names ``marker``, with their argv (read from /proc, so
    no procps is needed on a fresh machine)."""
    found = {}
    needle = str(marker).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(needle in arg for arg in argv):
            found[int(entry.name)] = argv
    return found


def _kill_everything(proc: subprocess.Popen, marker: Path) -> None:
    """SIGKILL mpirun and every rank (found by the output path on their command lines)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 20
    while True:
        for pid in _processes(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is not None and not _processes(marker):
            break
        assert time.monotonic() < deadline, "ranks survived SIGKILL"
        time.sleep(0.05)
    proc.wait(timeout=30)


def _latest(checkpoints: Path) -> str:
    try:
        return (checkpoints / "LATEST").read_text().strip()
    except OSError:
        return ""


def _wait_for(proc: subprocess.Popen, condition, timeout: float = 60.0) -> bool:
    """Poll ``condition`` until true (True) or until the job ends on its own (False)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if condition():
            return True
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.005)
    return False


def _numbers(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    with h5py.File(path / "results.h5") as f:
        return {name: f[name][...] for name in names}


def _run_to_end(ranks: int, output: Path, args: list[str]) -> None:
    proc = _launch(ranks, output, args, pause="0")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]


def _kill_loop(output: Path, args: list[str], seed: int) -> list[str]:
    """SIGKILL the job KILLS times at varied moments, resuming each time; returns where each kill hit."""
    rng = random.Random(seed)
    checkpoints = output / "checkpoints"
    moments: list[str] = []
    while len(moments) < KILLS:
        kind = ("after a commit", "mid-write", "before LATEST", "random time")[len(moments) % 4]
        before = _latest(checkpoints)
        proc = _launch(2, output, args)
        try:
            if kind == "after a commit":
                hit = _wait_for(proc, lambda: _latest(checkpoints) != before)
                time.sleep(rng.uniform(0.0, 0.15))
            elif kind == "mid-write":
                hit = _wait_for(proc, lambda: any(checkpoints.glob("step-*.tmp")))
            elif kind == "before LATEST":
                def renamed() -> bool:
                    done = sorted(p.name for p in checkpoints.glob("step-*") if not p.name.endswith((".tmp", ".damaged")))
                    return bool(done) and done[-1] > (_latest(checkpoints) or "")
                hit = _wait_for(proc, renamed)
            else:
                time.sleep(rng.uniform(0.2, 4.0))
                hit = proc.poll() is None
            if not hit:
                out = proc.communicate()[0]
                pytest.fail(f"the run finished after only {len(moments)} kills; make it longer\n{out[-2000:]}")
            temporaries = [p.name for p in checkpoints.glob("*.tmp")] if checkpoints.is_dir() else []
            _kill_everything(proc, output)
            moments.append(f"{kind}{' (temporaries: ' + ', '.join(temporaries) + ')' if temporaries else ''}")
        finally:
            if proc.poll() is None:
                _kill_everything(proc, output)
    return moments


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    """Uninterrupted runs on 2 ranks."""
    found = {}
    for name, args, numbers in (("lanczos", LANCZOS, LANCZOS_NUMBERS), ("slq", SLQ, SLQ_NUMBERS),
                                ("block", BLOCK, BLOCK_NUMBERS)):
        output = tmp_path_factory.mktemp(f"reference-{name}")
        _run_to_end(2, output, args)
        found[name] = _numbers(output, numbers)
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
    resumed = _numbers(output, numbers)
    for key, value in references[name].items():
        assert np.array_equal(resumed[key], value), f"{key} differs after {len(moments)} kills: {moments}"


@pytest.mark.parametrize("ranks", [1, 3])
def test_resume_on_another_rank_count_agrees_to_1e_10(tmp_path, references, ranks):
    output = tmp_path / "moved"
    proc = _launch(2, output, LANCZOS, pause="0")
    try:
        assert _wait_for(proc, lambda: _latest(output / "checkpoints") >= "step-00000025")
    finally:
        _kill_everything(proc, output)
    _run_to_end(ranks, output, LANCZOS)
    resumed, reference = _numbers(output, LANCZOS_NUMBERS), references["lanczos"]
    with h5py.File(output / "results.h5") as f:
        assert f.attrs["world_size"] == ranks and "step-0000002" in f.attrs["resumed_from"]
    for key in ("eigen/values", "eigen/alpha", "eigen/beta"):
        error = np.max(np.abs(resumed[key] - reference[key]) / np.max(np.abs(reference[key])))
        print(f"resumed on {ranks} rank(s): {key} relative difference {error:.1e}")  # shown with pytest -s
        assert error <= 1e-10, f"{key}: relative difference {error:.1e} on {ranks} ranks"


def _rank_pids(marker: Path) -> list[int]:
    """The hpcspec rank processes (not mpirun) whose command line names ``marker``."""
    return [pid for pid, argv in _processes(marker).items() if Path(argv[0].decode()).name.startswith("python")]


@pytest.mark.parametrize("signum, target", [(signal.SIGUSR1, "mpirun"), (signal.SIGTERM, "ranks")])
def test_stop_signal_checkpoints_exits_3_and_resumes(tmp_path, references, signum, target):
    """USR1 to mpirun (what the job scripts forward), or TERM to every rank (what slurmstepd sends at
    walltime; Open MPI's mpirun itself answers TERM by killing its ranks 0.25 s later, so the job
    scripts turn TERM into USR1)."""
    output = tmp_path / "signalled"
    proc = _launch(2, output, LANCZOS, pause="0")
    try:
        assert _wait_for(proc, lambda: _latest(output / "checkpoints") >= "step-00000005")
        sent = time.monotonic()
        if target == "mpirun":
            proc.send_signal(signum)
        else:
            pids = _rank_pids(output)
            assert len(pids) == 2, pids
            for pid in pids:
                os.kill(pid, signum)
        out, _ = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            _kill_everything(proc, output)
    assert proc.returncode == 3, out[-3000:]
    print(f"SIG{signal.Signals(signum).name[3:]} to {target}: exit 3 after {elapsed:.2f} s")  # shown with pytest -s
    assert elapsed < 5.0, f"took {elapsed:.1f} s to stop"
    assert f"stopped on {signal.Signals(signum).name} after committing checkpoint" in out
    stopped_at = _latest(output / "checkpoints")
    assert stopped_at and (output / "checkpoints" / stopped_at / "manifest.json").is_file()
    _run_to_end(2, output, LANCZOS)
    resumed = _numbers(output, LANCZOS_NUMBERS)
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
