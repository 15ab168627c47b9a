"""The command line's help and errors as a new user meets them: defaults shown, the default job
named, a mistyped flag pointing at the right --help, and an example glob that matches something."""

import fnmatch
import re

import pytest

from hpcspec.cli import DEMO_OVERRIDES, build_parser
from hpcspec.config import ModelConfig
from hpcspec.config.options import options
from hpcspec.errors import InputError


def _help(*argv: str) -> str:
    parser = build_parser()
    if not argv:
        return " ".join(parser.format_help().split())
    subparsers = next(a for a in parser._actions if a.dest == "command")  # argparse keeps them there
    return " ".join(subparsers.choices[argv[0]].format_help().split())


@pytest.mark.parametrize("flag, default", [("--output OUTPUT", "hpcspec-out"), ("--model MODEL", "mlp"),
                                           ("--data DATA", "digits"), ("--train-steps TRAIN_STEPS", "0")])
def test_run_help_shows_the_defaults(flag, default):
    text = _help("run")
    text = text[text.index("options:"):]  # past the usage line
    after = text[text.index(flag):]
    assert f"(default {default})" in after[:after.index(" --", len(flag))]


def test_top_level_help_says_no_command_runs_the_default_job():
    text = _help()
    assert "With no command, python -m hpcspec runs the default job" in text
    assert f"--train-steps {DEMO_OVERRIDES['train.steps']}" in text and DEMO_OVERRIDES["output"] in text


@pytest.mark.parametrize("argv, hint", [(["run", "--tpo", "3"], "python -m hpcspec run --help"),
                                        (["--frob"], "python -m hpcspec --help"),
                                        (["run", "--top-k", "x"], "python -m hpcspec run --help"),
                                        (["bogus"], "python -m hpcspec --help")])
def test_a_mistyped_flag_names_the_help_of_its_command(argv, hint):
    with pytest.raises(InputError) as raised:
        build_parser().parse_args(argv)
    assert str(raised.value).endswith(f"(see {hint})") and "hpcspec hpcspec" not in str(raised.value)


def test_the_params_example_glob_matches_the_default_mlp():
    from hpcspec.problem.models import build_model

    help_text = next(o for o in options() if o.key == "model.params").meta.help
    glob = re.search(r'e\.g\. "([^"]+)"', help_text).group(1)
    model = build_model("mlp", input_shape=(1, 8, 8), output_dim=10, cfg_model=ModelConfig(), seed=0)
    assert any(fnmatch.fnmatchcase(name, glob) for name, _ in model.named_parameters())


@pytest.mark.parametrize("argv, expected", [
    (["validate"], {"output": "hpcspec-validate", "tasks": ["eigen", "trace", "density"], "train.steps": 100}),
    (["validate", "--model", "mlp", "--trace"], {"output": "hpcspec-validate"}),
    (["validate", "--train-steps", "0"], {"output": "hpcspec-validate", "tasks": ["eigen", "trace", "density"]}),
    (["validate", "--config", "job.toml"], {}),
])
def test_bare_validate_trains_like_the_default_job_into_its_own_folder(argv, expected):
    from hpcspec.cli import config_from_args, validate_base

    args = build_parser().parse_args(argv)
    assert validate_base(args) == expected
    if "--config" not in argv:
        cfg = config_from_args(args, validate_base(args))
        assert cfg.output == "hpcspec-validate" != DEMO_OVERRIDES["output"]
        assert cfg.train.steps == expected.get("train.steps", 0)
