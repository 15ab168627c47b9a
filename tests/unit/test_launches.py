"""Every process the tests start goes through ``tests/support/spawn.py`` (one thread, own session,
whole session killed on timeout or interruption), except the few short commands listed here,
which start neither hpcspec nor mpirun."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

#: file → how many plain ``subprocess.run(`` calls it may make, and why they need no session kill.
PLAIN_RUNS = {
    "unit/test_config.py": 1,  # python -c: imports hpcspec.config and prints sys.modules
    "unit/files/test_outputs.py": 3,  # mount, umount, and a python -c that prints its pid
    "e2e/test_jobs.py": 2,  # bash -n and shellcheck on the job scripts
    "support/small_disk.py": 3,  # mount, umount and remount of a test's tmpfs
}


def _calls(pattern: str) -> dict[str, int]:
    found = {}
    for path in TESTS.rglob("*.py"):
        name = path.relative_to(TESTS).as_posix()
        count = len(re.findall(pattern, path.read_text()))
        if count and name not in ("support/spawn.py", "unit/test_launches.py"):
            found[name] = count
    return found


def test_no_popen_outside_spawn():
    assert _calls(r"subprocess\.Popen\(") == {}


def test_plain_subprocess_runs_are_only_the_listed_short_commands():
    assert _calls(r"subprocess\.run\(") == PLAIN_RUNS
