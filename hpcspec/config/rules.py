"""``validate``: the value checks types alone do not catch.

Each key's choices and bounds come from its declaration (:mod:`hpcspec.config.schema`); what
stays here as code are the checks that relate several keys or look inside a list.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from ..choices import ADAPTIVE_TRACE_METHODS, FLOAT16_REASON, REFUSED_DTYPES, TASKS
from ..errors import ConfigError
from .options import options
from .schema import Config, TrainConfig


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` naming the closest choice unless ``value`` is one of ``choices``."""
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(choices)}{hint}")


def _check_positive(key: str, value: int | float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key} must be {bound}, got {value!r}")


def _value(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Config) -> Config:
    """Check every key's choices and bounds, then the rules between keys; returns ``cfg`` unchanged."""
    if cfg.hessian.dtype in REFUSED_DTYPES:
        raise ConfigError(f"hessian.dtype = {cfg.hessian.dtype!r} is not supported: {FLOAT16_REASON}")
    for option in options():
        if option.meta.choices and option.kind is str:
            check_choice(option.key, _value(cfg, option.key), option.meta.choices)
    if not cfg.tasks:
        raise ConfigError(f"tasks is empty: name at least one of {', '.join(TASKS)}")
    for task in cfg.tasks:
        check_choice("tasks", task, TASKS)
    if len(set(cfg.tasks)) != len(cfg.tasks):
        raise ConfigError(f"tasks lists a task twice: {list(cfg.tasks)}")
    if math.isnan(cfg.eigen.tol):
        raise ConfigError("eigen.tol must be a number >= 0, got nan")
    for option in options():
        value = _value(cfg, option.key)
        if (option.meta.low or option.meta.high) and not option.meta.in_bounds(value):
            message = option.meta.message or "{key} must be {bounds}, got {value!r}"
            raise ConfigError(message.format(key=option.key, value=value, bounds=option.meta.bounds_text()))
    _validate_eigen(cfg)
    if cfg.trace.rtol > 0 and cfg.trace.method not in ADAPTIVE_TRACE_METHODS:
        raise ConfigError(f"trace.rtol needs a method that can stop early ({', '.join(reversed(ADAPTIVE_TRACE_METHODS))}); "
                          f"{cfg.trace.method} spends its whole budget on one sketch: set trace.rtol = 0 or change "
                          "trace.method")
    _validate_train(cfg.train)
    _validate_landscape(cfg)
    _validate_stages(cfg)
    if any(width <= 0 for width in cfg.model.hidden):
        raise ConfigError(f"model.hidden widths must be > 0, got {list(cfg.model.hidden)}")
    if not cfg.output:
        raise ConfigError("output must name a directory")
    return cfg


def _validate_eigen(cfg: Config) -> None:
    """The eigen method against ``which``, ``maxiter`` and the block solver's sizes."""
    eigen = cfg.eigen
    if eigen.method == "power" and eigen.which != "largest_magnitude" and eigen.which != "largest":
        raise ConfigError(f"eigen.method = 'power' finds the largest-magnitude eigenvalues; eigen.which = "
                          f"{eigen.which!r} needs eigen.method = 'lanczos'")
    if eigen.method == "lanczos" and 0 < eigen.maxiter < eigen.top_k:
        raise ConfigError(f"eigen.maxiter = {eigen.maxiter} is below eigen.top_k = {eigen.top_k}: Lanczos "
                          "needs at least k steps for k eigenpairs (0 = choose automatically)")
    if eigen.method == "block":
        _check_positive("eigen.block_size", eigen.block_size)
        _check_positive("eigen.max_basis", eigen.max_basis, allow_zero=True)
        floor = eigen.top_k + 3 * eigen.block_size
        if 0 < eigen.max_basis < floor:
            raise ConfigError(f"eigen.max_basis = {eigen.max_basis} is too small for eigen.top_k = {eigen.top_k} "
                              f"and eigen.block_size = {eigen.block_size}: it must be at least top_k + 3 * "
                              f"block_size = {floor} (0 = choose automatically)")
        if 0 < eigen.maxiter < eigen.top_k:
            raise ConfigError(f"eigen.maxiter = {eigen.maxiter} is below eigen.top_k = {eigen.top_k}: the block "
                              "solver needs at least k products for k eigenpairs (0 = choose automatically)")


def _validate_landscape(cfg: Config) -> None:
    """``landscape.points_2d``, and the eigenvectors the task walks along."""
    land = cfg.landscape
    if land.points_2d < 0 or land.points_2d == 1:
        raise ConfigError(f"landscape.points_2d must be 0 (no 2-D grid) or >= 2, got {land.points_2d}")
    if "landscape" not in cfg.tasks:
        return
    if "eigen" not in cfg.tasks:
        raise ConfigError("the landscape task walks along the eigen task's eigenvectors: add eigen to tasks "
                          "(on the command line: --top-k 2 --landscape)")
    if land.points_2d and cfg.eigen.top_k < 2:
        raise ConfigError(f"landscape.points_2d = {land.points_2d} needs eigen.top_k >= 2 (the plane of v1 and v2), "
                          f"got {cfg.eigen.top_k}; or set landscape.points_2d = 0 for the 1-D curves only")


def _validate_stages(cfg: Config) -> None:
    """What a pipelined run (``model.stages > 1``) does not do yet: each would need the whole model on a rank."""
    if cfg.model.stages == 1:
        return
    refused = [(cfg.train.steps, "train.steps = 0"), (cfg.hessian.reduction != "fast", "hessian.reduction = 'fast'"),
               (cfg.hessian.bn_mode != "eval", "hessian.bn_mode = 'eval'"),
               ("landscape" in cfg.tasks, "no landscape task")]
    for bad, need in refused:
        if bad:
            raise ConfigError(f"model.stages = {cfg.model.stages} (a pipelined model) needs {need}")


def _validate_train(train: TrainConfig) -> None:
    """The ``[train]`` rules between keys (each key's own bounds are declared)."""
    if train.nesterov and train.momentum == 0:
        raise ConfigError("train.nesterov = true needs train.momentum > 0")
    milestones = list(train.milestones)
    if any(not 0 < m < 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise ConfigError(f"train.milestones must be increasing fractions of the total steps in (0, 1), "
                          f"got {milestones}")
