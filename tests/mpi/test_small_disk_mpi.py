"""A real small disk under the job: full at the first checkpoint, at a later one and at the results,
on 1 and 2 ranks, and a checkpoint folder that turns read-only mid-run.

Each failure is exit 2 on every rank with one ``hpcspec: error:`` line naming the file and the
cause — no ``Traceback``, no ignored exception, no signal (h5py's own driver left a half-closed
dataset behind when the disk filled during HDF5's metadata flush, and rank 0 died with a
segmentation fault at exit) — and what was committed stays usable: with room again, ``--resume``
finishes. These tests mount tmpfs filesystems and are skipped where this process may not mount;
tests/unit/files/test_hdf5_writes.py covers the same failures in-process everywhere.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, mpirun
from small_disk import remount, small_tmpfs
import spawn

from hpcspec.errors import EXIT_BAD_INPUT, EXIT_OK

#: The issue's job: top-3 and a density of the digits MLP, a checkpoint every 5 solver iterations.
JOB = ["-m", "hpcspec", "run", "--model", "mlp", "--data", "digits", "--top-k", "3", "--hvp", "double_backward",
       "--density", "--set", "checkpoint.every_iters=5"]
#: Top-3 alone: its checkpoints are smaller than its results.h5.
TOP3 = ["-m", "hpcspec", "run", "--model", "mlp", "--data", "digits", "--top-k", "3"]


def _mounted(tmp_path: Path, size: str):
    context = small_tmpfs(tmp_path / "disk", size)
    mount = context.__enter__()
    if mount is None:
        context.__exit__(None, None, None)
        pytest.skip("mounting a tmpfs is not permitted here")
    return mount, context


def _one_clean_error(done: subprocess.CompletedProcess) -> str:
    text = done.stdout + done.stderr
    assert done.returncode == EXIT_BAD_INPUT, text
    for crash in ("Traceback", "Exception ignored", "Segmentation fault", "signal", "crashed"):
        assert crash not in text, text
    lines = [line for line in text.splitlines() if line.startswith("hpcspec: error:")]
    assert len(lines) == 1, text
    return lines[0]


def _no_temporaries(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if p.name.startswith(".hpcspec-tmp-") or p.name.endswith(".tmp")]
    assert not left, left


def test_every_page_of_a_filling_disk_fails_cleanly(tmp_path):
    """Checkpoint and results writes, failing one page later each time until they fit, in one
    interpreter that must then exit cleanly (the crash came at exit)."""
    mount, context = _mounted(tmp_path, "4m")
    try:
        done = spawn.run([sys.executable, str(REPO / "tests" / "support" / "fill_sweep.py"), str(mount)],
                         capture_output=True, text=True, timeout=300)
    finally:
        context.__exit__(None, None, None)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    failures = dict(line.split() for line in done.stdout.splitlines())
    assert int(failures["checkpoint"]) > 20 and int(failures["results"]) > 5, done.stdout


#: (ranks, tmpfs size, job, what the error line names). Sizes measured on the digits MLP: at 120k
#: the first checkpoint does not fit; at 800k/1000k the first fits and the second does not; at
#: 150k top-3's checkpoints fit and its results.h5 does not.
CASES = [(1, "120k", JOB, r"checkpoints/step-00000001\.tmp/rank-00000\.h5"),
         (2, "120k", JOB, r"checkpoints/step-00000001\.tmp/rank-0000[01]\.h5"),
         (1, "800k", JOB, r"checkpoints/step-0000000[2-9]\.tmp/rank-00000\.h5"),
         (2, "1000k", JOB, r"checkpoints/step-0000000[2-9]\.tmp/rank-0000[01]\.h5"),
         (1, "150k", TOP3, r"results\.h5"),
         (2, "150k", TOP3, r"results\.h5")]


@pytest.mark.mpi
@pytest.mark.parametrize("ranks,size,job,names", CASES, ids=[f"{c[0]}rank-{c[1]}-{c[3][:12]}" for c in CASES])
def test_a_full_disk_is_one_line_on_every_rank_and_resume_finishes(tmp_path, ranks, size, job, names):
    mount, context = _mounted(tmp_path, size)
    try:
        out = mount / "out"
        line = _one_clean_error(mpirun(ranks, [*job, "--output", str(out)], cwd=tmp_path, timeout=240))
        assert re.search(names, line) and "No space left on device" in line, line
        _no_temporaries(out)
        assert remount(mount, "size=64m"), "tmpfs cannot grow"
        done = mpirun(ranks, [*job, "--output", str(out), "--resume"], cwd=tmp_path, timeout=240)
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        assert (out / "results.h5").is_file()
    finally:
        context.__exit__(None, None, None)


@pytest.mark.mpi
def test_a_checkpoint_folder_that_turns_read_only_mid_run(tmp_path):
    mount, context = _mounted(tmp_path, "64m")
    try:
        checkpoints = mount / "checkpoints"
        args = [*JOB, "--output", str(tmp_path / "out"), "--set", f"checkpoint.dir={str(checkpoints)!r}"]
        job = spawn.popen(["mpirun", "--oversubscribe", "-n", "2", sys.executable, *args], cwd=tmp_path,
                          env=spawn.one_thread_env(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                                                   PYTHONPATH=str(REPO)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (checkpoints / "LATEST").exists():
            assert job.poll() is None and time.monotonic() < deadline, "no checkpoint was committed"
            time.sleep(0.02)
        while not remount(mount, "ro"):  # refused while a checkpoint file is open for writing
            assert job.poll() is None, "the run ended before its folder became read-only"
            time.sleep(0.02)
        stdout, stderr = job.communicate(timeout=240)
        line = _one_clean_error(subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr))
        assert "cannot write checkpoint file" in line and "Read-only file system" in line, line
        assert "previous checkpoint is kept" in line
        assert remount(mount, "rw")
        done = mpirun(2, [*args, "--resume"], cwd=tmp_path, timeout=240)
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        assert "resuming from checkpoint" in done.stdout + done.stderr
    finally:
        context.__exit__(None, None, None)
