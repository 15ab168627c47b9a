"""Run configuration: frozen dataclasses, layered defaults → TOML file → command line.

Every rank parses the same inputs, so a bad value raises :class:`ConfigError` on every rank before
any collective. Unknown keys are errors that name the closest valid key (a typo in a 64-rank job
should cost seconds, not a queue wait).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError

ACTIVATIONS = ("tanh", "relu", "gelu", "sigmoid", "softplus")
LOSSES = ("cross_entropy", "mse")
DTYPES = ("float64", "float32")
HVP_METHODS = ("auto", "double_backward", "forward_over_reverse")
REDUCTIONS = ("fast", "ordered")
WHICH = ("largest", "smallest", "largest_magnitude", "both_ends")
TASKS = ("eigen", "trace", "density", "landscape")
EIGEN_METHODS = ("block", "lanczos", "power")
TRACE_METHODS = ("krylov", "hutchpp", "xtrace", "hutchinson")
DISTRIBUTIONS = ("rademacher", "gaussian")
BN_MODES = ("eval", "train")
HDF5_LOCKING = ("auto", "true", "false", "best-effort")
SPLITS = ("train", "test")
NORMALIZE = ("auto", "channel", "none")
SCHEDULES = ("cosine", "step", "constant")
#: The fewest products any trace method needs at its default sketch size (hutchpp: 2·1 + 2).
MIN_TRACE_MATVECS = 4


@dataclass(frozen=True)
class ModelConfig:
    """The network: a zoo name or ``module:callable``, and its optional weights file.

    ``params`` selects the parameters that enter the Hessian: comma-separated fnmatch globs over
    parameter names (``"layer3.*,linear.*"``); the others are frozen. Empty: all parameters.
    """

    spec: str = "mlp"
    hidden: tuple[int, ...] = (32, 32)
    activation: str = "tanh"
    weights: str = ""
    # ResNets and cnn: base channels (ResNet stages: width, 2·width, 4·width); ResNet switches
    batchnorm: bool = True
    residual: bool = True
    width: int = 16
    # transformer: embedding dimension, blocks, attention heads (embed divisible by heads)
    embed: int = 64
    layers: int = 2
    heads: int = 4
    params: str = ""


@dataclass(frozen=True)
class DataConfig:
    """The data set (``digits``, ``synthetic``, ``cifar10:DIR``, ``cifar100:DIR``, ``tokens``, an
    ``.h5`` path, or ``module:callable``).

    ``split`` picks CIFAR's ``train`` or ``test`` set; ``normalize`` is ``auto`` (per channel for
    CIFAR, per feature for digits, none otherwise), ``channel`` (per-channel mean/std over the
    whole data set) or ``none``; ``tokens`` draws ``samples`` sequences of ``context`` tokens
    over ``vocab`` symbols. ``max_gb`` caps the GiB one rank may read an HDF5 file's share into
    (0: the rank's share of the node's available memory), checked before reading.
    """

    spec: str = "digits"
    batch_size: int = 256
    samples: int = 512
    features: int = 16
    classes: int = 4
    outputs: int = 1
    split: str = "train"
    normalize: str = "auto"
    context: int = 32
    vocab: int = 64
    max_gb: float = 0.0


@dataclass(frozen=True)
class HessianConfig:
    """Which Hessian, and how its products are computed.

    ``dtype`` is the precision the model computes in; accumulation, the reduction across ranks
    and the solver are float64 whatever it is. ``bn_mode = "train"`` makes BatchNorm use batch
    statistics (H then depends on the batch size); ``check`` tests symmetry and repeatability of
    H·v before the run. ``graph_budget_mb`` (per rank) lets ``double_backward`` keep the shard's
    first-order graphs between products when they fit, so a product costs one second backward.
    ``shard_vectors`` keeps only each rank's slice of every Lanczos/SLQ vector (memory m·P/R per
    rank; products reduce-scattered); off, every rank holds whole vectors. ``reduction =
    "ordered"`` sums the products exactly (fixed point), so with replicated vectors and a fixed
    thread count the results have the same bits on any number of ranks.
    """

    loss: str = "cross_entropy"
    dtype: str = "float64"
    hvp: str = "auto"
    bn_mode: str = "eval"
    check: bool = True
    graph_budget_mb: float = 1024.0
    shard_vectors: bool = True
    reduction: str = "fast"


@dataclass(frozen=True)
class EigenConfig:
    """Top-k eigenpairs; ``tol = 0``, ``maxiter = 0`` and ``max_basis = 0`` mean "the method's default".

    ``method = "block"`` (default) is block Lanczos with thick restart, locking and a completeness
    check: right when eigenvalues repeat (multiplicity ≤ ``block_size`` by construction, higher
    with high probability), ``block_size`` vectors per data pass, at most ``max_basis`` vectors held
    (default max(64, 2k + 4·block_size)); ``maxiter`` counts products. ``method = "lanczos"`` is
    single-vector Lanczos without restarts (``maxiter`` = Krylov dimension): it finds one copy of a
    repeated eigenvalue at most. ``method = "power"`` is PyHessian's power iteration with deflation
    (largest magnitude, its relative-change stopping rule), for comparison with published PyHessian
    numbers.
    """

    top_k: int = 5
    which: str = "largest"
    method: str = "block"
    tol: float = 0.0
    maxiter: int = 0
    block_size: int = 4
    max_basis: int = 0


@dataclass(frozen=True)
class TraceConfig:
    """Stochastic trace estimation: a budget of ``matvecs`` products, or stop earlier once the
    standard error is ≤ ``rtol`` × |estimate| (``rtol = 0``: spend the whole budget)."""

    method: str = "krylov"
    matvecs: int = 100
    rtol: float = 0.0
    distribution: str = "rademacher"


@dataclass(frozen=True)
class DensityConfig:
    """Spectral density by stochastic Lanczos quadrature: ``probes`` × ``steps`` products,
    broadened by a Gaussian of width ``sigma`` × (spectral range) on ``grid`` points."""

    probes: int = 4
    steps: int = 80
    sigma: float = 0.01
    grid: int = 1000
    distribution: str = "rademacher"
    plot: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """Training: ``run`` uses ``steps`` and ``lr`` for brief full-batch Adam before the analysis
    (0 steps = analyse as loaded); ``python -m hpcspec train`` uses every key for data-parallel
    minibatch SGD (see README "Training").

    ``train`` runs ``epochs`` passes over the data (0: ``steps`` updates instead) of global
    minibatches of ``batch_size`` samples, SGD with ``momentum``/``nesterov``/``weight_decay``,
    the learning rate ``lr`` following ``schedule`` (``cosine`` to 0, ``step``: × ``gamma`` at
    each of ``milestones``, fractions of the total steps; ``constant``) after a linear ``warmup``
    over that many steps, and saves the weights every ``save_every`` steps (0: first and last only).
    """

    steps: int = 0
    lr: float = 0.01
    epochs: int = 0
    batch_size: int = 128
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup: int = 0
    save_every: int = 0


@dataclass(frozen=True)
class CheckpointConfig:
    """When and where the iteration state is committed, so a killed job resumes (``--resume``).

    A checkpoint is committed every ``every_iters`` solver iterations and/or when ``every_seconds``
    have passed since the last one — the time cadence stretched so that writing costs at most
    ``max_overhead`` of the run — and always on SIGTERM/SIGUSR1/SIGINT before exiting 3.
    ``dir`` defaults to ``<output>/checkpoints``. ``hdf5_locking`` applies to every HDF5 file
    hpcspec opens ("false" for Lustre/NFS without working locks; "auto" leaves HDF5's default
    and ``$HDF5_USE_FILE_LOCKING``).
    """

    every_iters: int = 0
    every_seconds: float = 300.0
    max_overhead: float = 0.02
    keep: int = 2
    dir: str = ""
    hdf5_locking: str = "auto"


@dataclass(frozen=True)
class LandscapeConfig:
    """The ``landscape`` task: the mean loss along the top eigenvector v₁ (and a seeded random unit
    direction, ``random``) on ``points`` steps α ∈ [−radius, radius], and over the plane of v₁, v₂
    on ``points_2d`` × ``points_2d`` steps (0: no 2-D grid). α is a parameter-space distance: the
    directions have unit norm. Needs the ``eigen`` task (top_k ≥ 2 for the 2-D grid)."""

    radius: float = 0.5
    points: int = 21
    points_2d: int = 11
    random: bool = True


@dataclass(frozen=True)
class BlocksConfig:
    """``run --per-block``: a block is the first ``depth`` components of a parameter's module path
    (ResNet: conv1, bn1, layer1.0, …, linear; an MLP's Sequential: layers.0, layers.2, …)."""

    depth: int = 2


@dataclass(frozen=True)
class CommConfig:
    """The watchdog on every MPI collective (:mod:`hpcspec.parallel.watchdog`): a collective that has waited
    longer than ``max(timeout_s, timeout_factor × the longest this rank computed between two
    collectives)`` seconds aborts the job (exit 4), naming the ranks that did not arrive."""

    timeout_s: float = 600.0
    timeout_factor: float = 20.0


@dataclass(frozen=True)
class Config:
    """Everything a run needs; see README "Configuration" for each key."""

    output: str = "hpcspec-out"
    #: Write into an output folder that holds files other than an hpcspec run's (README "What
    #: hpcspec writes and deletes"); ``--force-output``.
    force_output: bool = False
    seed: int = 0
    threads: int = 0
    tasks: tuple[str, ...] = ("eigen",)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    hessian: HessianConfig = field(default_factory=HessianConfig)
    eigen: EigenConfig = field(default_factory=EigenConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    density: DensityConfig = field(default_factory=DensityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    blocks: BlocksConfig = field(default_factory=BlocksConfig)
    landscape: LandscapeConfig = field(default_factory=LandscapeConfig)
    comm: CommConfig = field(default_factory=CommConfig)


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """All dotted keys a config accepts, e.g. ``eigen.top_k``."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(valid_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    if not close:  # a bare leaf name given without its section, e.g. "top_k"
        close = [k for k in valid_keys() if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:1]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Check one value against its field type; ints are accepted where floats are expected."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float) if item is float else item) and not isinstance(v, bool) for v in value
        ):
            noun = {int: "integers", float: "numbers"}.get(item, "strings")
            raise ConfigError(f"config key {key!r} must be a list of {noun}, got {value!r}")
        if item is float:
            values = tuple(float(v) for v in value)
            for number in values:
                _check_finite(key, number)
            return values
        return tuple(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"config key {key!r} must be {kind.__name__}, got {value!r}")
    if kind is float:
        _check_finite(key, value)
    return value


def _check_finite(key: str, value: float) -> None:
    """No config number means anything as NaN or infinity (``--tol nan`` would otherwise run and
    report residuals of 0 as "not converged")."""
    if not math.isfinite(value):
        default = _default_of(key)
        raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}"
                          + (f" (the default is {default!r})" if default is not None else ""))


def _default_of(key: str) -> Any:
    """The default value of a dotted key (None if there is none to show)."""
    node: Any = Config()
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key(prefix + key)
    values = {}
    for name in names & set(data):
        kind, value = hints[name], data[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {prefix + name!r} is a section; give it as [{prefix + name}]")
            values[name] = _build(kind, value, f"{prefix}{name}.")
        else:
            values[name] = _coerce(prefix + name, value, kind)
    return cls(**values)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(choices)}{hint}")


def _check_positive(key: str, value: int | float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key} must be {bound}, got {value!r}")


def validate(cfg: Config) -> Config:
    """Value checks that types alone do not catch; returns ``cfg`` unchanged."""
    _check_choice("model.activation", cfg.model.activation, ACTIVATIONS)
    _check_choice("hessian.loss", cfg.hessian.loss, LOSSES)
    _check_choice("hessian.dtype", cfg.hessian.dtype, DTYPES)
    _check_choice("hessian.hvp", cfg.hessian.hvp, HVP_METHODS)
    _check_choice("eigen.which", cfg.eigen.which, WHICH)
    _check_choice("eigen.method", cfg.eigen.method, EIGEN_METHODS)
    _check_choice("hessian.bn_mode", cfg.hessian.bn_mode, BN_MODES)
    _check_choice("hessian.reduction", cfg.hessian.reduction, REDUCTIONS)
    _check_choice("trace.method", cfg.trace.method, TRACE_METHODS)
    _check_choice("trace.distribution", cfg.trace.distribution, DISTRIBUTIONS)
    _check_choice("density.distribution", cfg.density.distribution, DISTRIBUTIONS)
    _check_choice("checkpoint.hdf5_locking", cfg.checkpoint.hdf5_locking, HDF5_LOCKING)
    _check_choice("data.split", cfg.data.split, SPLITS)
    _check_choice("data.normalize", cfg.data.normalize, NORMALIZE)
    if not 0 <= cfg.checkpoint.max_overhead < 1:
        raise ConfigError(f"checkpoint.max_overhead is a share of run time in [0, 1), got {cfg.checkpoint.max_overhead!r}")
    if not cfg.tasks:
        raise ConfigError(f"tasks is empty: name at least one of {', '.join(TASKS)}")
    for task in cfg.tasks:
        _check_choice("tasks", task, TASKS)
    if len(set(cfg.tasks)) != len(cfg.tasks):
        raise ConfigError(f"tasks lists a task twice: {list(cfg.tasks)}")
    if cfg.eigen.method == "power" and cfg.eigen.which != "largest_magnitude" and cfg.eigen.which != "largest":
        raise ConfigError(f"eigen.method = 'power' finds the largest-magnitude eigenvalues; eigen.which = "
                          f"{cfg.eigen.which!r} needs eigen.method = 'lanczos'")
    if cfg.eigen.method == "lanczos" and 0 < cfg.eigen.maxiter < cfg.eigen.top_k:
        raise ConfigError(f"eigen.maxiter = {cfg.eigen.maxiter} is below eigen.top_k = {cfg.eigen.top_k}: Lanczos "
                          "needs at least k steps for k eigenpairs (0 = choose automatically)")
    if cfg.eigen.method == "block":
        _check_positive("eigen.block_size", cfg.eigen.block_size)
        _check_positive("eigen.max_basis", cfg.eigen.max_basis, allow_zero=True)
        floor = cfg.eigen.top_k + 3 * cfg.eigen.block_size
        if 0 < cfg.eigen.max_basis < floor:
            raise ConfigError(f"eigen.max_basis = {cfg.eigen.max_basis} is too small for eigen.top_k = {cfg.eigen.top_k} "
                              f"and eigen.block_size = {cfg.eigen.block_size}: it must be at least top_k + 3 * "
                              f"block_size = {floor} (0 = choose automatically)")
        if 0 < cfg.eigen.maxiter < cfg.eigen.top_k:
            raise ConfigError(f"eigen.maxiter = {cfg.eigen.maxiter} is below eigen.top_k = {cfg.eigen.top_k}: the block "
                              "solver needs at least k products for k eigenpairs (0 = choose automatically)")
    if math.isnan(cfg.eigen.tol):
        raise ConfigError("eigen.tol must be a number >= 0, got nan")
    if cfg.trace.matvecs < MIN_TRACE_MATVECS:
        raise ConfigError(f"trace.matvecs = {cfg.trace.matvecs} is too small: every trace method needs at least "
                          f"{MIN_TRACE_MATVECS} products for an estimate with a standard error")
    if cfg.trace.rtol > 0 and cfg.trace.method == "xtrace":
        raise ConfigError("trace.rtol needs a method that can stop early (krylov, hutchpp, hutchinson); "
                          "xtrace spends its whole budget on one sketch: set trace.rtol = 0 or change trace.method")
    if not 0 < cfg.density.sigma < 1:
        raise ConfigError(f"density.sigma is a fraction of the spectral range in (0, 1), got {cfg.density.sigma!r}")
    if cfg.density.steps < 2:
        raise ConfigError(f"density.steps = {cfg.density.steps} is too few: stochastic Lanczos quadrature needs at least "
                          "2 Lanczos steps per probe to resolve a spectrum (default 80; --steps 80)")
    if not cfg.comm.timeout_s > 0:
        raise ConfigError(f"comm.timeout_s must be > 0 seconds, got {cfg.comm.timeout_s!r} (default 600)")
    if cfg.comm.timeout_factor < 0:
        raise ConfigError(f"comm.timeout_factor must be >= 0, got {cfg.comm.timeout_factor!r} (default 20)")
    if cfg.density.grid < 2:
        raise ConfigError(f"density.grid must be >= 2 points, got {cfg.density.grid}")
    for key, value in [("data.batch_size", cfg.data.batch_size), ("data.samples", cfg.data.samples),
                       ("data.features", cfg.data.features), ("data.outputs", cfg.data.outputs),
                       ("eigen.top_k", cfg.eigen.top_k), ("trace.matvecs", cfg.trace.matvecs),
                       ("density.probes", cfg.density.probes), ("density.steps", cfg.density.steps),
                       ("checkpoint.keep", cfg.checkpoint.keep), ("model.width", cfg.model.width),
                       ("model.embed", cfg.model.embed), ("model.layers", cfg.model.layers),
                       ("model.heads", cfg.model.heads), ("data.context", cfg.data.context),
                       ("data.vocab", cfg.data.vocab), ("blocks.depth", cfg.blocks.depth)]:
        _check_positive(key, value)
    for key, value in [("threads", cfg.threads), ("data.classes", cfg.data.classes), ("data.max_gb", cfg.data.max_gb),
                       ("eigen.tol", cfg.eigen.tol), ("eigen.maxiter", cfg.eigen.maxiter), ("trace.rtol", cfg.trace.rtol),
                       ("train.steps", cfg.train.steps), ("train.lr", cfg.train.lr), ("seed", cfg.seed),
                       ("checkpoint.every_iters", cfg.checkpoint.every_iters),
                       ("hessian.graph_budget_mb", cfg.hessian.graph_budget_mb),
                       ("checkpoint.every_seconds", cfg.checkpoint.every_seconds)]:
        _check_positive(key, value, allow_zero=True)
    _validate_train(cfg.train)
    _validate_landscape(cfg)
    if any(width <= 0 for width in cfg.model.hidden):
        raise ConfigError(f"model.hidden widths must be > 0, got {list(cfg.model.hidden)}")
    if not cfg.output:
        raise ConfigError("output must name a directory")
    return cfg


def _validate_landscape(cfg: Config) -> None:
    """``[landscape]`` values, and the eigenvectors the task walks along."""
    land = cfg.landscape
    if not land.radius > 0:
        raise ConfigError(f"landscape.radius must be > 0, got {land.radius!r}")
    if land.points < 2:
        raise ConfigError(f"landscape.points must be >= 2, got {land.points}")
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


def _validate_train(train: TrainConfig) -> None:
    """The ``[train]`` values ``python -m hpcspec train`` relies on (``steps``/``lr`` are checked above)."""
    _check_choice("train.schedule", train.schedule, SCHEDULES)
    for key, value in [("train.epochs", train.epochs), ("train.weight_decay", train.weight_decay),
                       ("train.warmup", train.warmup), ("train.save_every", train.save_every)]:
        _check_positive(key, value, allow_zero=True)
    _check_positive("train.batch_size", train.batch_size)
    if not 0 <= train.momentum < 1:
        raise ConfigError(f"train.momentum must lie in [0, 1), got {train.momentum!r}")
    if train.nesterov and train.momentum == 0:
        raise ConfigError("train.nesterov = true needs train.momentum > 0")
    if not 0 < train.gamma <= 1:
        raise ConfigError(f"train.gamma (the step schedule's factor) must lie in (0, 1], got {train.gamma!r}")
    milestones = list(train.milestones)
    if any(not 0 < m < 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise ConfigError(f"train.milestones must be increasing fractions of the total steps in (0, 1), "
                          f"got {milestones}")


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is read as TOML, and as a bare string otherwise."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    if key not in valid_keys():
        raise _unknown_key(key)
    *sections, leaf = key.split(".")
    node = tree
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None, *,
                text: str | None = None) -> Config:
    """Defaults, then the TOML file at ``path`` (or the TOML ``text``), then dotted ``overrides``
    (later wins)."""
    tree: dict[str, Any] = {}
    if text is not None:
        try:
            tree = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"stored config is not valid TOML: {exc}") from None
    elif path is not None:
        path = Path(path)
        try:
            tree = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    return validate(_build(Config, tree, ""))


def to_toml(cfg: Any, prefix: str = "") -> str:
    """The config as TOML text (stored in every output file for provenance)."""
    scalars, sections = [], []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            sections.append(f"\n[{prefix}{f.name}]\n" + to_toml(value, f"{prefix}{f.name}."))
        else:
            scalars.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(scalars) + "".join(sections) + ("\n" if not prefix else "")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
