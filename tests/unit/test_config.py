"""Strict configuration: unknown keys name the nearest valid one; values are checked."""

import pytest

from hpcspec.config import Config, ConfigError, load_config, parse_override, to_toml


def test_layers_defaults_file_overrides(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('seed = 3\n[eigen]\ntop_k = 7\n[model]\nhidden = [4, 5]\n')
    cfg = load_config(path, {"eigen.top_k": 2, "eigen.tol": 0.01})
    assert (cfg.seed, cfg.eigen.top_k, cfg.model.hidden, cfg.eigen.tol) == (3, 2, (4, 5), 0.01)
    assert cfg.data == Config().data


def test_round_trips_through_toml(tmp_path):
    cfg = load_config(None, {"model.hidden": [3], "data.spec": 'odd "name"', "train.lr": 0.5})
    path = tmp_path / "again.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("key, hint", [("eigen.topk", "eigen.top_k"), ("top_k", "eigen.top_k"),
                                       ("modle.spec", "model.spec"), ("hessian.los", "hessian.loss")])
def test_unknown_key_names_closest(key, hint):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'; did you mean '{hint}'"):
        load_config(None, {key: 1})


def test_unknown_key_in_file_and_section_errors(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text("[eigen]\nmax_iter = 3\n")
    with pytest.raises(ConfigError, match="'eigen.max_iter'; did you mean 'eigen.maxiter'"):
        load_config(path)
    path.write_text("eigen = 3\n")
    with pytest.raises(ConfigError, match="is a section"):
        load_config(path)
    path.write_text("[eigen\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("key, value, message", [
    ("eigen.top_k", 0, "must be > 0"), ("eigen.top_k", "five", "must be int"), ("eigen.top_k", True, "must be int"),
    ("hessian.loss", "crossentropy", "did you mean 'cross_entropy'"),
    ("hessian.dtype", "float16", "is not supported: float16's range"), ("hessian.dtype", "half", "not one of"),
    ("model.hidden", [3, 0], "widths must be > 0"), ("model.hidden", "3", "list of integers"),
    ("eigen.tol", -1.0, r"eigen.tol = -1.0 is outside \[0, 0.02\]"),
])
def test_bad_values(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {key: value})


def test_parse_override():
    assert parse_override("eigen.top_k=3") == ("eigen.top_k", 3)
    assert parse_override("model.hidden=[8, 8]") == ("model.hidden", [8, 8])
    assert parse_override("data.spec=mymod:make") == ("data.spec", "mymod:make")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("eigen.top_k")


def test_config_and_kernels_share_one_choice_list_each():
    """Every choice tuple is defined once, in hpcspec.choices: the kernels use those very objects,
    and the config's lists are they or derived from them."""
    import importlib
    import subprocess
    import sys

    from hpcspec import choices
    from hpcspec.config import options
    from hpcspec.curvature import operator
    from hpcspec.parallel import comm

    lanczos, probes, trace = (importlib.import_module(f"hpcspec.solvers.{name}") for name in ("lanczos", "probes", "trace"))
    assert trace.TRACE_METHODS is choices.TRACE_METHODS and trace.ADAPTIVE_METHODS is choices.ADAPTIVE_TRACE_METHODS
    assert probes.DISTRIBUTIONS is choices.DISTRIBUTIONS and lanczos.WHICH is choices.WHICH
    assert operator.BN_MODES is choices.BN_MODES and operator.REDUCTIONS is choices.REDUCTIONS
    assert operator.HVP_METHODS is choices.HVP_METHODS and comm.BACKENDS is choices.BACKENDS
    declared = {option.key: option.meta.choices for option in options()}
    assert declared["hessian.hvp"] == ("auto", *choices.HVP_METHODS)
    assert set(declared["trace.method"]) == set(choices.TRACE_METHODS)
    assert declared["trace.method"][0] == choices.DEFAULT_TRACE_METHOD == Config().trace.method
    assert declared["trace.distribution"] is declared["density.distribution"] is choices.DISTRIBUTIONS
    assert declared["hessian.bn_mode"] is choices.BN_MODES and declared["eigen.which"] is choices.WHICH
    # the library and the CLI share their defaults
    import inspect

    params = inspect.signature(operator.HessianOperator).parameters
    assert params["graph_budget_mb"].default == Config().hessian.graph_budget_mb == choices.DEFAULT_GRAPH_BUDGET_MB
    assert params["shard_vectors"].default is Config().hessian.shard_vectors is choices.DEFAULT_SHARD_VECTORS
    # parsing a config imports no kernel (hpcspec/__init__ imports the library, so load the modules bare)
    code = ("import sys, importlib.util, types; pkg = types.ModuleType('hpcspec'); pkg.__path__ = ['hpcspec']; "
            "sys.modules['hpcspec'] = pkg; import hpcspec.config; hpcspec.config.load_config(); "
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'hpcspec.'))))")
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    loaded = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert "torch" not in loaded and "hpcspec.solvers" not in loaded, loaded
