"""Child processes of the tests that cannot outlive them or fight for the cores.

Every launch of hpcspec (or of mpirun) in the tests goes through :func:`popen` or :func:`run`:

- **one thread per process** (:data:`ONE_THREAD`): R ranks that each take all C cores of a shared
  machine run R·C threads and can be tens of times slower than R single-thread ranks;
- **a session of its own** (``start_new_session``), so that everything the launch starts can be
  found again: Open MPI's ``prterun`` puts each rank in a process group of its own, so killing the
  launcher's process group leaves the ranks running, but the ranks stay in the launcher's session;
- **killed, session and all** (:func:`kill_session`), when the launch times out, when the test
  fails or is interrupted (pytest-timeout's default ``signal`` method raises in the test, so the
  ``except`` below and fixture teardown run), and in the :func:`reap_children` fixture's teardown
  for any :func:`popen` child the test itself did not clean up. ``subprocess.run`` with a timeout kills
  only its direct child: an mpirun killed that way leaves its ranks behind as orphans.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

#: What every launched process gets in its environment (torch reads OMP_NUM_THREADS; MKL too).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

#: Children started by :func:`popen` and not yet known to be gone with their whole session.
_live: list[subprocess.Popen] = []


def one_thread_env(env: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``env`` (default: this process's environment) with :data:`ONE_THREAD` and ``extra``."""
    return {**(os.environ if env is None else env), **ONE_THREAD, **extra}


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes in session ``sid``, read from /proc (no procps needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session …
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry.name))
    return found


def kill_session(proc: subprocess.Popen, within: float = 20.0, close: bool = True) -> None:
    """SIGKILL every process in ``proc``'s session (``proc`` leads it: :func:`popen` starts it so),
    until none is left, reap ``proc`` and (with ``close``) close its pipes. Raises AssertionError
    if something survives ``within`` seconds of SIGKILLs."""
    deadline = time.monotonic() + within
    while True:
        members = session_members(proc.pid)
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        if not members and proc.poll() is not None:
            break
        assert time.monotonic() < deadline, f"processes of session {proc.pid} survived SIGKILL: {members}"
        time.sleep(0.02)
    proc.wait()
    if not close:
        return
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    if proc in _live:
        _live.remove(proc)


def popen(command: list[str], **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen`` in a new session, remembered so that :func:`reap_children` kills its
    whole session when the test ends (the caller still kills it in its own ``finally`` when it can)."""
    proc = subprocess.Popen(command, start_new_session=True, **kwargs)
    _live.append(proc)
    return proc


def run(command: list[str], *, timeout: float, input: str | None = None, capture_output: bool = False,
        check: bool = False, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` whose timeout (and any exception while waiting: a pytest-timeout, Ctrl-C)
    kills the child's whole session, ranks included, and which, when the child ends on its own,
    kills whatever it left running in its session (an orphaned rank)."""
    if capture_output:
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    proc = popen(command, **kwargs)
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc, close=False)
        stdout, stderr = proc.communicate()  # what it wrote before it was killed, for the failure message
        raise subprocess.TimeoutExpired(command, timeout, stdout, stderr) from None
    finally:
        kill_session(proc)
    done = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    if check:
        done.check_returncode()
    return done


def kill_all_live() -> None:
    """Kill the sessions of every :func:`popen` child still remembered."""
    for proc in list(_live):
        kill_session(proc)


@pytest.fixture(autouse=True)
def reap_children() -> Iterator[None]:
    """After each test, however it ended, no process it launched through :func:`popen` or
    :func:`run` is left, nor any process of their sessions (imported by ``tests/conftest.py``)."""
    yield
    kill_all_live()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (a torchrun rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
