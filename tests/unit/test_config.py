"""Strict configuration: unknown keys name the nearest valid one; values are checked."""

import pytest

from hpcspec.config import Config, ConfigError, load_config, parse_override, to_toml


def test_layers_defaults_file_overrides(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('seed = 3\n[eigen]\ntop_k = 7\n[model]\nhidden = [4, 5]\n')
    cfg = load_config(path, {"eigen.top_k": 2, "eigen.tol": 1})
    assert (cfg.seed, cfg.eigen.top_k, cfg.model.hidden, cfg.eigen.tol) == (3, 2, (4, 5), 1.0)
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
    ("hessian.loss", "crossentropy", "did you mean 'cross_entropy'"), ("hessian.dtype", "float16", "not one of"),
    ("model.hidden", [3, 0], "widths must be > 0"), ("model.hidden", "3", "list of integers"),
    ("eigen.tol", -1.0, "must be >= 0"),
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


def test_config_choices_match_what_the_kernels_accept():
    """config.py keeps its own choice lists (so parsing a config needs no torch); they must not drift."""
    import importlib

    from hpcspec import config
    from hpcspec.hessian import operator

    lanczos, probes, trace = (importlib.import_module(f"hpcspec.solvers.{name}") for name in ("lanczos", "probes", "trace"))

    assert set(config.TRACE_METHODS) == set(trace.TRACE_METHODS)
    assert config.TRACE_METHODS[0] == trace.DEFAULT_TRACE_METHOD == Config().trace.method
    assert set(config.DISTRIBUTIONS) == set(probes.DISTRIBUTIONS)
    assert set(config.BN_MODES) == set(operator.BN_MODES)
    assert set(config.WHICH) == set(lanczos.WHICH)
    assert set(config.HVP_METHODS) == {"auto", *operator.HVP_METHODS}
