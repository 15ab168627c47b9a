"""The examples/ scripts run as a user runs them and check their own numbers (exit 0)."""

from __future__ import annotations

import sys

import pytest
from helpers import REPO
from spawn import one_thread_env, run

EXAMPLES = {
    "pyhessian_style.py": "|cos| with the dense eigenvectors",
    "training_sharpness.py": "training losses bitwise equal with and without the calls: True",
}


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs_and_checks_itself(script, tmp_path):
    done = run([sys.executable, str(REPO / "examples" / script)], cwd=tmp_path, timeout=240, capture_output=True,
               text=True, env=one_thread_env(PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert EXAMPLES[script] in done.stdout
