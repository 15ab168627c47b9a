"""docs/configuration.md and jobs/example.toml are generated from the config's declarations: they
must be what the generator writes now, and the example must load."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcspec.config import load_config
from hpcspec.config.docs import REGENERATE, generated

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted(generated(), key=str), ids=str)
def test_generated_file_is_up_to_date(path: Path) -> None:
    want = generated()[path]
    have = (ROOT / path).read_text() if (ROOT / path).is_file() else None
    assert have == want, f"{path} is stale: regenerate it with `{REGENERATE}` (and commit the result)"


def test_example_lists_every_key_and_loads() -> None:
    from hpcspec.config import valid_keys

    text = generated()[Path("jobs") / "example.toml"]
    cfg = load_config(text=text)
    assert cfg.eigen.top_k == 10 and cfg.tasks == ("eigen", "trace", "density")
    names = {line.lstrip("# ").split(" = ", 1)[0] for line in text.splitlines() if " = " in line}
    assert {key.rpartition(".")[2] for key in valid_keys()} <= names
