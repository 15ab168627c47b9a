"""What hpcspec writes and deletes (issue 14 items 1–4): full disks, a user's files, shared folders,
silent overwrites — in one process and, for the key cases, under ``mpirun -n 2`` (every rank exits
2 after one line, no traceback, no hang, nothing of the user's removed)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, mpirun, mpirun_available
import spawn
from small_disk import failing_pwrite

from hpcspec.cli import main
from hpcspec.errors import EXIT_BAD_INPUT, EXIT_OK
from hpcspec.files import atomic, hdf5, lock, outputs
from hpcspec.files.atomic import TMP_PREFIX
from hpcspec.files.lock import LOCK_FILE, FolderLock
from hpcspec.files.outputs import OWNED, RUN_MARKER

#: A small run of all three tasks (test_checkpoint's), a checkpoint at every iteration.
SETTINGS = {"model.hidden": [6], "data.spec": "synthetic", "data.samples": 120, "data.features": 5,
            "data.classes": 3, "tasks": ["eigen", "trace", "density"], "eigen.top_k": 3, "eigen.tol": 1e-10,
            "trace.matvecs": 24, "density.probes": 3, "density.steps": 15, "hessian.hvp": "double_backward",
            "hessian.check": False, "density.plot": False, "checkpoint.every_iters": 1}
needs_mpi = pytest.mark.skipif(not mpirun_available(), reason="mpi4py or mpirun not installed")


def _args(output: Path, *extra: str, **changes) -> list[str]:
    args = ["run", "--output", str(output)]
    for key, value in {**SETTINGS, **changes}.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args + list(extra)


def _error(capsys) -> str:
    """The one error line the run printed (and that there is exactly one, without a traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hpcspec: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(TMP_PREFIX) or p.name.endswith(".tmp")]


class _Products:
    """Counts Hessian products (to show a resume recomputed nothing)."""

    def __init__(self, monkeypatch) -> None:
        from hpcspec.curvature.operator import HessianOperator

        self.count = 0
        for name in ("apply", "apply_sharded"):
            real = getattr(HessianOperator, name)

            def counted(op, *a, _real=real, **k):
                self.count += 1
                return _real(op, *a, **k)

            monkeypatch.setattr(HessianOperator, name, counted)


def _full_disk_on_results(monkeypatch) -> None:
    """Every results.h5 temporary fills the disk after half a kilobyte, as a real full disk does
    under hpcspec's HDF5 writer (an OSError with ENOSPC, half a file)."""
    monkeypatch.setattr(hdf5, "_pwrite", failing_pwrite(lambda name: name.startswith(TMP_PREFIX + "results.h5"), 512))


# -- 1. writes that cannot lose work ------------------------------------------------------------

def test_full_disk_on_results_is_one_line_and_resume_rewrites_without_recomputing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    _full_disk_on_results(monkeypatch)
    assert main(_args(out)) == EXIT_BAD_INPUT
    line = _error(capsys)
    assert "cannot write" in line and "results.h5" in line and "No space left on device" in line
    assert "--resume" in line and "without recomputing" in line
    assert not (out / "results.h5").exists() and not _temporaries(out)
    assert list((out / "checkpoints").glob("step-*")), "the final checkpoint must be kept"
    assert not (out / "checkpoints" / "COMPLETE").exists()
    monkeypatch.undo()
    products = _Products(monkeypatch)
    assert main(_args(out, "--resume")) == EXIT_OK
    assert products.count == 0, "resume after a failed results write must not recompute"
    assert (out / "results.h5").is_file() and (out / "checkpoints" / "COMPLETE").is_file()
    assert not list((out / "checkpoints").glob("step-*"))


def test_full_disk_on_a_plot_keeps_the_previous_plot_and_the_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    from hpcspec.results import mpl

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mpl, "atomic_path", _failing_atomic_path(no_space))
    assert main(_args(out, **{"density.plot": True})) == EXIT_BAD_INPUT
    line = _error(capsys)
    assert "density.png" in line and "No space left on device" in line and "--resume" in line
    assert (out / "results.h5").is_file() and not (out / "density.png").exists() and not _temporaries(out)
    monkeypatch.undo()
    assert main(_args(out, "--resume", **{"density.plot": True})) == EXIT_OK
    assert (out / "density.png").is_file()


def _failing_atomic_path(fail):
    """atomic.atomic_path whose write fails the way ``fail`` does (after making the temporary)."""
    import contextlib

    @contextlib.contextmanager
    def failing(path):
        with atomic.atomic_path(path) as tmp:
            tmp.write_bytes(b"partial")
            fail()
            yield tmp
    return failing


@pytest.mark.parametrize("error", [RuntimeError("Can't write data (No space left on device)"),
                                   OSError(errno.ENOSPC, "No space left on device")])
def test_checkpoint_write_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys, error):
    from hpcspec.checkpoint import store as store_module

    calls = []
    real = store_module._fsync_file

    def full_disk(path):
        calls.append(path)
        if len(calls) == 3:
            raise error
        real(path)

    monkeypatch.setattr(store_module, "_fsync_file", full_disk)
    out = tmp_path / "out"
    assert main(_args(out)) == EXIT_BAD_INPUT
    line = _error(capsys)
    assert "cannot write checkpoint file" in line and "No space left on device" in line
    assert "previous checkpoint is kept" in line
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["LATEST", "step-00000001", "step-00000002"]
    assert (out / "checkpoints" / "step-00000002" / OWNED).is_file()


def test_atomic_path_removes_only_its_temporary_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    neighbour = tmp_path / (TMP_PREFIX + "summary.json.1.other")  # another writer's: not ours to remove
    neighbour.write_text("x")
    with pytest.raises(atomic.WriteFailed, match=r"cannot write .*summary.json.*No space left on device"):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("new, half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old" and neighbour.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, neighbour.name])


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_real_full_tmpfs(tmp_path, capsys):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here ({done.stderr.decode().strip()})")
    try:
        (mount / "filler").write_bytes(b"\0" * 150_000)
        assert main(_args(mount / "out", **{"eigen.top_k": 3})) == EXIT_BAD_INPUT
        line = _error(capsys)
        assert "No space left on device" in line or "cannot" in line
        assert not _temporaries(mount / "out") if (mount / "out").exists() else True
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# -- 2. own only what you made --------------------------------------------------------------

def test_start_up_removes_only_what_hpcspec_made(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(out, "--top-k", "2")) == EXIT_OK
    checkpoints = out / "checkpoints"
    user = {out / "notes.tmp" / "thesis.txt": "mine", out / ".bashrc.tmp-old": "mine",
            checkpoints / "notes.tmp" / "thesis.txt": "mine", checkpoints / ".bashrc.tmp-old": "mine"}
    for path, text in user.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    ours = [out / (TMP_PREFIX + "results.h5.123.abcdef"), checkpoints / (TMP_PREFIX + "LATEST.1.ab"),
            out / ".results.h5.tmp-4242", checkpoints / "LATEST.tmp"]
    for path in ours:
        path.write_text("left by a killed run")
    killed = checkpoints / "step-00000007.tmp"
    killed.mkdir()
    (killed / OWNED).write_text("")
    (killed / "rank-00000.h5").write_text("half")
    # a checkpoint folder holding a user's files is refused unless forced (test_refused_runs.py)
    assert main(_args(out, "--top-k", "2", "--resume")) == EXIT_BAD_INPUT
    assert "not hpcspec's checkpoints" in _error(capsys)
    assert main(_args(out, "--top-k", "2", "--resume", "--force-output")) == EXIT_OK  # finished: only the clean-up
    for path, text in user.items():
        assert path.read_text() == text, f"{path} was the user's"
    for path in [*ours, killed]:
        assert not path.exists(), f"{path} was hpcspec's leftover"
    assert main(_args(out, "--overwrite", "--force-output")) == EXIT_OK  # --overwrite too removes only hpcspec's files
    for path, text in user.items():
        assert path.read_text() == text, f"{path} was the user's"


def test_the_output_root_and_a_folder_of_user_files_are_refused(tmp_path, capsys):
    assert main(_args(Path("/"))) == EXIT_BAD_INPUT
    line = _error(capsys)
    assert "'/'" in line and "not an hpcspec run" in line and "--force-output" in line
    assert not Path("/" + RUN_MARKER).exists() and not Path("/" + LOCK_FILE).exists()
    assert not Path("/results.h5").exists() and not Path("/checkpoints").exists()
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("mine")
    assert main(_args(home)) == EXIT_BAD_INPUT
    assert "'thesis.tex'" in _error(capsys)
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
    assert main(_args(home, "--force-output", "--top-k", "2")) == EXIT_OK
    assert (home / "thesis.tex").read_text() == "mine" and (home / "results.h5").is_file()
    assert main(_args(home, "--overwrite", "--top-k", "2")) == EXIT_OK  # marked now: no flag needed
    assert (home / "thesis.tex").read_text() == "mine"


def test_a_folder_of_an_earlier_version_without_the_marker_is_accepted(tmp_path):
    out = tmp_path / "old"
    (out / "checkpoints").mkdir(parents=True)
    (out / "summary.json").write_text("{}")
    (out / ".results.h5.tmp-77").write_text("half")
    assert outputs.foreign_entries(out) == []
    outputs.claim(out)
    lock.release(out)
    assert (out / RUN_MARKER).is_file() and not (out / ".results.h5.tmp-77").exists()


# -- 3. one run per folder --------------------------------------------------------------------

def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock, until it is killed."""
    code = ("import sys, time; from pathlib import Path; from hpcspec.files import outputs; "
            "outputs.claim(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)")
    holder = spawn.popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                         env=spawn.one_thread_env(PYTHONPATH=str(REPO)))
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        assert main(_args(out)) == EXIT_BAD_INPUT
        line = _error(capsys)
        assert f"is in use by {os.uname().nodename}:{holder.pid} since " in line
        assert not (out / "checkpoints").exists() and not (out / "results.h5").exists()
    finally:
        spawn.kill_session(holder)
    assert main(_args(out, "--top-k", "2")) == EXIT_OK  # the holder is gone: flock released with it


def test_two_real_runs_started_together(tmp_path, capsys):
    out = tmp_path / "out"
    env = spawn.one_thread_env(PYTHONPATH=str(REPO), HPCSPEC_TEST_CHECKPOINT_PAUSE="0.3")
    first = spawn.popen([sys.executable, "-m", "hpcspec", "--backend", "single", *_args(out)], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list((out / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()
        assert main(_args(out)) == EXIT_BAD_INPUT
        assert f"in use by {os.uname().nodename}:{first.pid} since" in _error(capsys)
    finally:
        spawn.kill_session(first)


def test_lock_fallback_without_flock(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    folder = tmp_path / "nfs"
    folder.mkdir()
    first = FolderLock(folder)
    first.acquire()
    assert first.exclusive_file and json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    with pytest.raises(outputs.InputError, match=f"in use by {os.uname().nodename}:{os.getpid()} since"):
        FolderLock(folder).acquire()
    first.release()
    assert not (folder / LOCK_FILE).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout),
                                                "started": "2026-01-01T00:00:00"}))
    second = FolderLock(folder)
    second.acquire()  # the recorded pid is gone on this host: a stale lock, broken
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    second.release()
    (folder / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "yesterday"}))
    with pytest.raises(outputs.InputError, match="in use by elsewhere:1 since yesterday"):
        FolderLock(folder).acquire()


# -- 4. no silent overwrite ---------------------------------------------------------------------

def test_a_finished_run_is_never_overwritten_silently(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(out, **{"density.plot": True})) == EXIT_OK
    assert (out / "density.png").is_file()
    (out / "mynotes.txt").write_text("mine")
    before = (out / "results.h5").stat().st_mtime_ns
    assert main(_args(out, "--resume", **{"eigen.top_k": 4})) == EXIT_BAD_INPUT
    line = _error(capsys)
    assert "holds a finished run with other settings" in line and "eigen.top_k: 3 there, 4 here" in line
    assert "--overwrite" in line
    assert main(_args(out, **{"density.plot": True})) == EXIT_BAD_INPUT  # fresh, same settings
    assert "holds a finished run of these settings" in _error(capsys)
    assert (out / "results.h5").stat().st_mtime_ns == before
    assert main(_args(out, "--resume", **{"density.plot": True})) == EXIT_OK  # same settings: nothing to do
    assert (out / "results.h5").stat().st_mtime_ns == before
    assert main(_args(out, "--overwrite", **{"eigen.top_k": 2, "tasks": ["eigen"]})) == EXIT_OK
    assert not (out / "density.png").exists(), "the old run's plot must go with it"
    assert (out / "mynotes.txt").read_text() == "mine"
    import h5py

    with h5py.File(out / "results.h5") as f:
        assert f["eigen/values"].shape == (2,) and "density" not in f
    assert main(_args(out, "--overwrite", "--resume")) == EXIT_BAD_INPUT
    assert "choose one" in _error(capsys)


# -- the key cases under mpirun -n 2 ------------------------------------------------------------

def _mpi_checks(done: subprocess.CompletedProcess, *expected: str) -> str:
    text = done.stdout + done.stderr
    assert done.returncode == EXIT_BAD_INPUT, text
    lines = [line for line in text.splitlines() if line.startswith("hpcspec: error:")]
    assert len(lines) == 1, text
    for crash in ("Traceback", "crashed", "Exception ignored", "Segmentation fault"):
        assert crash not in text, text
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("room", [0, 3000])
def test_mpi_a_disk_full_on_one_rank_at_the_first_checkpoint(tmp_path, monkeypatch, room):
    """Rank 1's node-local disk fills at its first checkpoint file, at the first byte or during
    HDF5's metadata flush: every rank exits 2 after one line naming rank 1's file."""
    for key, value in {"FULL_DISK": "checkpoint", "FULL_DISK_RANK": "1", "FULL_DISK_BYTES": str(room)}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    done = mpirun(2, [str(REPO / "tests" / "mpi" / "mpi_full_disk.py"), *_args(out)], cwd=tmp_path, timeout=240)
    _mpi_checks(done, "cannot write checkpoint file", "step-00000001.tmp/rank-00001.h5", "No space left on device",
                "on rank 1", "previous checkpoint is kept")
    assert not _temporaries(out) and not list((out / "checkpoints").glob("step-*"))


@pytest.mark.mpi
@needs_mpi
def test_mpi_full_disk_output_root_lock_and_changed_config(tmp_path):
    out = tmp_path / "out"
    script = str(REPO / "tests" / "mpi" / "mpi_full_disk.py")
    done = mpirun(2, [script, *_args(out)], cwd=tmp_path, timeout=240)
    _mpi_checks(done, "results.h5", "No space left on device", "--resume")
    assert not _temporaries(out) and list((out / "checkpoints").glob("step-*"))
    done = mpirun(2, ["-m", "hpcspec", *_args(out, "--resume")], cwd=tmp_path, timeout=240)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert (out / "results.h5").is_file()
    done = mpirun(2, ["-m", "hpcspec", *_args(out, "--resume", **{"eigen.top_k": 4})], cwd=tmp_path, timeout=240)
    _mpi_checks(done, "finished run with other settings", "eigen.top_k: 3 there, 4 here")
    done = mpirun(2, ["-m", "hpcspec", *_args(Path("/"))], cwd=tmp_path, timeout=240)
    _mpi_checks(done, "not an hpcspec run", "--force-output")
    assert not Path("/" + RUN_MARKER).exists()
    holder = _hold_lock(out)
    try:
        done = mpirun(2, ["-m", "hpcspec", *_args(out, "--resume")], cwd=tmp_path, timeout=240)
        _mpi_checks(done, f"in use by {os.uname().nodename}:{holder.pid} since")
    finally:
        spawn.kill_session(holder)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("hs-")) == ["out"]
