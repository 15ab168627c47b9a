"""The run configuration: frozen dataclasses, one field per key, each declaring itself.

Every field is made by :func:`~hpcspec.config.fields.option` with its default, help text,
choices or bounds, command-line flags, and whether it may change on resume or decides a training
run's identity: the single source from which the CLI, the checks, the resume whitelist and
docs/configuration.md + jobs/example.toml are derived (:mod:`hpcspec.config.options`). Defaults
the library shares come from :mod:`hpcspec.choices`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import (
    ACTIVATIONS,
    BN_MODES,
    DEFAULT_GRAPH_BUDGET_MB,
    DEFAULT_SHARD_VECTORS,
    DEFAULT_TOL,
    DEFAULT_TRACE_METHOD,
    DISTRIBUTIONS,
    DTYPES,
    EIGEN_METHODS,
    HDF5_LOCKING,
    HVP_CHOICES,
    LOSSES,
    MAX_TOL,
    MIN_TRACE_MATVECS,
    NORMALIZE,
    PLACEMENTS,
    REDUCTIONS,
    SCHEDULES,
    SPLITS,
    TRACE_CHOICES,
    WHICH,
)
from .fields import RUN, SHOW, TRAIN, Flag, non_negative, option, positive, section

BOTH = (RUN, TRAIN)
_TOL = ", ".join(f"{value:.2g} {name}".replace("e-0", "e-") for name, value in DEFAULT_TOL.items())


@dataclass(frozen=True)
class ModelConfig:
    """The network: a zoo name or ``module:callable``, and its optional weights file.

    ``params`` selects the parameters that enter the Hessian: comma-separated fnmatch globs over
    parameter names (``"layer3.*,linear.*"``); the others are frozen. Empty: all parameters.
    """

    spec: str = option("mlp", 'a zoo model (mlp, cnn, resnet20/32/38/56, transformer) or "mypackage.models:make_model"',
                       flags=(Flag("--model", BOTH, "zoo model ({models}) or module:callable"),), example=SHOW)
    hidden: tuple[int, ...] = option((32, 32), "MLP hidden layer widths", example=[256, 256])
    activation: str = option("tanh", "MLP activation", choices=ACTIVATIONS, example="relu")
    weights: str = option("", 'a state-dict file to load, e.g. "checkpoints/epoch-090.pt"', example=SHOW,
                          flags=(Flag("--weights", (RUN,), "state-dict file to load into the model"),
                                 Flag("--weights", (TRAIN,), "state-dict file to start from (default: the seed's "
                                                             "initialisation)")))
    batchnorm: bool = option(True, "ResNets: BatchNorm layers")
    residual: bool = option(True, "ResNets: skip connections")
    width: int = positive(16, "ResNets and cnn: base channels (ResNet stages: width, 2·width, 4·width)")
    embed: int = positive(64, "transformer: embedding dimension (divisible by heads)")
    layers: int = positive(2, "transformer: blocks")
    heads: int = positive(4, "transformer: attention heads")
    stages: int = positive(1, "pipeline stages the model is split over (world = stages × data shards; the "
                              "model is cut at block boundaries, balanced by parameter count: docs/pipeline.md)",
                           example=2)
    placement: str = option("pipe", 'how launcher ranks map to the stages × shards grid: "pipe" puts the stages of one '
                                    'data shard on consecutive ranks (one node), "stage" the shards of one stage '
                                    '(docs/pipeline.md)', choices=PLACEMENTS, may_change=True, example=SHOW)
    params: str = option("", 'only these parameters enter the Hessian: comma-separated fnmatch globs, e.g. '
                             '"layers.4.*" (the default MLP\'s last layer; "": all)', example=SHOW,
                         flags=(Flag("--params", help="only these parameters enter the Hessian: comma-separated "
                                                      "globs over parameter names, e.g. 'layer3.*,linear.*' (the "
                                                      "others are frozen)"),))


@dataclass(frozen=True)
class DataConfig:
    """The data set (``digits``, ``synthetic``, ``cifar10:DIR``, ``cifar100:DIR``, ``tokens``, an
    ``.h5`` path, or ``module:callable``).

    ``split`` picks CIFAR's ``train`` or ``test`` set; ``normalize`` is ``auto`` (per channel for
    CIFAR, per feature for digits, none otherwise), ``channel`` (per-channel mean/std over the
    whole data set) or ``none``; ``tokens`` draws ``samples`` sequences of ``context`` tokens
    over ``vocab`` symbols. ``max_gb`` caps the GiB one rank may read an HDF5 file's share into
    (0: the rank's share of the node's available memory), checked before reading. A
    ``module:callable`` may return batches (a DataLoader, a list of ``(x, y)`` pairs or of dict
    batches with the targets under ``target_key``): the ranks share out its whole batches, or with
    ``sharded`` each rank's call returns its own part (docs/cli.md, "Data").
    """

    spec: str = option("digits", 'digits, synthetic, tokens, "cifar10:/scratch/me/cifar-10-batches-py", '
                                 '"/scratch/me/train.h5" (x, y) or module:callable', example=SHOW,
                       flags=(Flag("--data", BOTH, "{data}, a path to an HDF5 file, or module:callable"),))
    batch_size: int = positive(256, "samples per forward pass (memory, not mathematics)", example=512,
                               flags=(Flag("--batch-size", help="samples per forward pass"),), identity=False)
    samples: int = positive(512, "synthetic and tokens: samples drawn")
    features: int = positive(16, "synthetic: input features")
    classes: int = non_negative(4, "synthetic: classes")
    outputs: int = positive(1, "synthetic with mse: output width")
    split: str = option("train", "CIFAR: the train or test set", choices=SPLITS)
    normalize: str = option("auto", 'auto (per channel for CIFAR, per feature for digits); "channel": per-channel '
                                    'mean/std of the whole data set; "none"', choices=NORMALIZE, example=SHOW)
    context: int = positive(32, "tokens: sequence length")
    vocab: int = positive(64, "tokens: symbols")
    max_gb: float = non_negative(0.0, "most GiB one rank reads of an HDF5 file (0: its share of the node's memory)")
    target_key: str = option("labels", "module:callable returning dict batches: the key of the targets (the other "
                                       "keys are the model's keyword arguments)")
    sharded: bool = option(False, "module:callable returning batches: it returns this rank's own loader (e.g. with a "
                                  "DistributedSampler); off, one loader whose whole batches the ranks share out")


@dataclass(frozen=True)
class HessianConfig:
    """Which Hessian, and how its products are computed.

    ``dtype`` is the precision the model computes in; accumulation, the reduction across ranks
    and the solver are float64 whatever it is (``tf32``: float32 with TF32 CUDA matmuls). ``bn_mode = "train"`` makes BatchNorm use batch
    statistics (H then depends on the batch size); ``check`` tests symmetry and repeatability of
    H·v before the run. ``graph_budget_mb`` (per rank) lets ``double_backward`` keep the shard's
    first-order graphs between products when they fit, so a product costs one second backward.
    ``shard_vectors`` keeps only each rank's slice of every Lanczos/SLQ vector (memory m·P/R per
    rank; products reduce-scattered); off, every rank holds whole vectors. ``reduction =
    "ordered"`` sums the products exactly (fixed point), so with replicated vectors and a fixed
    thread count the results have the same bits on any number of ranks.
    """

    loss: str = option("cross_entropy", "the loss whose mean over all data is differentiated", choices=LOSSES,
                       identity=True, example=SHOW, flags=(Flag("--loss", BOTH, "cross_entropy or mse"),))
    dtype: str = option("float64", "float32 halves memory and time; bfloat16 (unit roundoff 2^-8: H·v to a few %) and tf32 "
                        "(float32 with TF32 matmuls on CUDA; float32 on a CPU) for speed on GPUs; the solvers and "
                        "the accumulation stay float64 (docs/accuracy.md#mixed-precision)", choices=DTYPES,
                        identity=True, example=SHOW,
                        flags=(Flag("--dtype", (RUN,), "model compute precision: float64, float32, bfloat16 or tf32 "
                                                       "(solver is float64)"),
                               Flag("--dtype", (TRAIN,), "training precision: float64 (default), float32 or tf32")))
    hvp: str = option("auto", "the Hessian-vector product; auto: double_backward, or forward_over_reverse for a float64 model "
                      "with convolutions (a fixed rule, docs/performance.md)", choices=HVP_CHOICES,
                      example=SHOW, flags=(Flag("--hvp", help="auto, double_backward or forward_over_reverse"),))
    bn_mode: str = option("eval", '"train": BatchNorm uses batch statistics (H then depends on batch_size)',
                          choices=BN_MODES, example=SHOW,
                          flags=(Flag("--bn-mode", help="eval (default: running statistics) or train (batch "
                                                        "statistics)"),))
    check: bool = option(True, "symmetry and bitwise repeatability of H·v before the run (4 products)",
                         may_change=True, example=SHOW)
    graph_budget_mb: float = non_negative(DEFAULT_GRAPH_BUDGET_MB, "per rank: keep the shard's first-order graphs if "
                                          "they fit (a product = one backward)", may_change=True, example=SHOW)
    shard_vectors: bool = option(DEFAULT_SHARD_VECTORS, "each rank keeps 1/R of every Lanczos/SLQ vector",
                                 may_change=True, example=SHOW)
    reduction: str = option("fast", '"ordered": exact sums, bitwise the same on any rank count (slower, more memory)',
                            choices=REDUCTIONS, may_change=True, example=SHOW)


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

    top_k: int = positive(5, "eigenpairs wanted", example=10,
                          flags=(Flag("--top-k", help="top-k eigenpairs", task="eigen"),))
    which: str = option("largest", "which end of the spectrum", choices=WHICH, example=SHOW,
                        flags=(Flag("--which", help="largest, smallest, largest_magnitude or both_ends"),))
    method: str = option("block", 'block Lanczos, right for repeated eigenvalues; "lanczos": single vector; "power": '
                                  "PyHessian's power iteration, for comparison with its numbers",
                         choices=EIGEN_METHODS, example=SHOW,
                         flags=(Flag("--eigen-method", help="block (default: block Lanczos with restarts, right for "
                                     "repeated eigenvalues), lanczos (single vector) or power (PyHessian's power "
                                     "iteration)"),))
    tol: float = option(0.0, f"relative Ritz-residual tolerance (0: {_TOL}; power: 1e-3); looser than {MAX_TOL:g} "
                             "certifies nothing and is refused", low=(0, True), high=(MAX_TOL, True),
                        message="eigen.tol = {value!r} is outside " + f"[0, {MAX_TOL:g}]: a looser relative Ritz "
                                "residual cannot tell the wanted eigenvalues from their neighbours, so it certifies "
                                f"nothing (0: the compute dtype's default, {_TOL})", example=SHOW,
                        flags=(Flag("--tol", help=f"relative Ritz-residual tolerance (0: {_TOL})"),))
    maxiter: int = non_negative(0, "block: products (0: max(1000, 100·top_k)); lanczos: Krylov dimension",
                                example=SHOW,
                                flags=(Flag("--maxiter", help="most products (block) or Lanczos steps (lanczos)"),))
    block_size: int = option(1, "vectors per data pass; multiplicity ≤ block_size found by construction, higher by "
                                "the completeness check", example=SHOW,
                             flags=(Flag("--block-size", help="vectors per data pass of the block solver (default 1, the "
                                                             "fewest products; a wider block takes fewer passes): "
                                                             "multiplicity up to it is found by construction"),))
    max_basis: int = option(0, "most vectors held per rank (0: max(64, 2·top_k + 4·block_size))", example=SHOW,
                            flags=(Flag("--max-basis", help="most vectors the block solver holds (0: max(64, 2k + "
                                                            "4b))"),))


@dataclass(frozen=True)
class TraceConfig:
    """Stochastic trace estimation: a budget of ``matvecs`` products, or stop earlier once the
    standard error is ≤ ``rtol`` × |estimate| (``rtol = 0``: spend the whole budget)."""

    method: str = option(DEFAULT_TRACE_METHOD, "the estimator", choices=TRACE_CHOICES, example="hutchpp",
                         flags=(Flag("--trace-method", help="krylov (default), hutchpp, xtrace or hutchinson"),))
    matvecs: int = option(100, "budget of Hessian-vector products", low=(MIN_TRACE_MATVECS, True), example=200,
                          message="trace.matvecs = {value} is too small: every trace method needs at least "
                                  f"{MIN_TRACE_MATVECS} products for an estimate with a standard error",
                          flags=(Flag("--trace-matvecs", help="products the trace may spend (default 100)"),))
    rtol: float = non_negative(0.0, "stop early once the standard error is this share of the estimate (0: never); "
                               "matvecs is then the ceiling, the deflation basis ≤ 10 vectors",
                               example=0.005)
    distribution: str = option("rademacher", "probe vector entries", choices=DISTRIBUTIONS)


@dataclass(frozen=True)
class DensityConfig:
    """Spectral density by stochastic Lanczos quadrature: ``probes`` × ``steps`` products,
    broadened by a Gaussian of width ``sigma`` × (spectral range) on ``grid`` points."""

    probes: int = positive(4, "SLQ probe vectors", example=8,
                           flags=(Flag("--probes", help="SLQ probe vectors (default 4)"),))
    steps: int = option(80, "Lanczos steps per probe", low=(2, True), example=100,
                        message="density.steps = {value} is too few: stochastic Lanczos quadrature needs at least "
                                "2 Lanczos steps per probe to resolve a spectrum (default 80; --steps 80)",
                        flags=(Flag("--steps", help="Lanczos steps per SLQ probe (default 80)"),))
    sigma: float = option(0.01, "Gaussian broadening, as a fraction of the spectral range", low=(0, False),
                          high=(1, False), example=SHOW,
                          message="density.sigma is a fraction of the spectral range in (0, 1), got {value!r}")
    grid: int = option(1000, "points of the density curve", low=(2, True), example=SHOW,
                       message="density.grid must be >= 2 points, got {value}")
    distribution: str = option("rademacher", "probe vector entries", choices=DISTRIBUTIONS)
    plot: bool = option(True, "density.png, log scale", may_change=True, example=SHOW)


@dataclass(frozen=True)
class TrainConfig:
    """Training: ``run`` uses ``steps`` and ``lr`` for brief full-batch Adam before the analysis
    (0 steps = analyse as loaded); ``python -m hpcspec train`` uses every key for data-parallel
    minibatch SGD (see docs/cli.md, "train").

    ``train`` runs ``epochs`` passes over the data (0: ``steps`` updates instead) of global
    minibatches of ``batch_size`` samples, SGD with ``momentum``/``nesterov``/``weight_decay``,
    the learning rate ``lr`` following ``schedule`` (``cosine`` to 0, ``step``: × ``gamma`` at
    each of ``milestones``, fractions of the total steps; ``constant``) after a linear ``warmup``
    over that many steps, and saves the weights every ``save_every`` steps (0: first and last only).
    """

    steps: int = non_negative(0, "run: full-batch Adam steps before the analysis; train: SGD updates when epochs = 0",
                              example=SHOW,
                              flags=(Flag("--train-steps", help="full-batch Adam steps before the analysis"),
                                     Flag("--steps", (TRAIN,), "SGD updates, when --epochs is 0")))
    lr: float = non_negative(0.01, "learning rate (train: the peak)",
                             flags=(Flag("--lr", (TRAIN,), "peak learning rate (default 0.01)"),))
    epochs: int = non_negative(0, "train: passes over the data (0: use steps)",
                               flags=(Flag("--epochs", (TRAIN,), "passes over the data (0: use --steps)"),))
    batch_size: int = positive(128, "train: global minibatch size, split over the ranks",
                               flags=(Flag("--batch-size", (TRAIN,), "global minibatch size, split over the ranks "
                                                                     "(default 128)"),))
    momentum: float = option(0.9, "train: SGD momentum", low=(0, True), high=(1, False),
                             message="train.momentum must lie in [0, 1), got {value!r}",
                             flags=(Flag("--momentum", (TRAIN,), "SGD momentum (default 0.9)"),))
    nesterov: bool = option(False, "train: Nesterov momentum (needs momentum > 0)")
    weight_decay: float = non_negative(5e-4, "train: L2 weight decay",
                                       flags=(Flag("--weight-decay", (TRAIN,), "L2 weight decay (default 5e-4)"),))
    schedule: str = option("cosine", "train: the learning-rate schedule (step: × gamma at each milestone)",
                           choices=SCHEDULES, flags=(Flag("--schedule", (TRAIN,), "cosine (default), step or "
                                                                                  "constant"),))
    milestones: tuple[float, ...] = option((0.5, 0.75), "train: the step schedule's milestones, increasing fractions "
                                                        "of the total steps in (0, 1)")
    gamma: float = option(0.1, "train: the step schedule's factor", low=(0, False), high=(1, True),
                          message="train.gamma (the step schedule's factor) must lie in (0, 1], got {value!r}")
    warmup: int = non_negative(0, "train: steps of linear learning-rate warmup")
    save_every: int = non_negative(0, "train: save step_*.pt every this many steps (0: first and last)",
                                   identity=False,
                                   flags=(Flag("--save-every", (TRAIN,), "save step_*.pt every this many steps (0: "
                                                                         "first and last)"),))


@dataclass(frozen=True)
class CheckpointConfig:
    """When and where the iteration state is committed, so a killed job resumes (``--resume``).

    A checkpoint is committed every ``every_iters`` solver iterations and/or when ``every_seconds``
    have passed since the last one — the time cadence stretched so that writing costs at most
    ``max_overhead`` of the run — and always on SIGTERM/SIGUSR1/SIGINT before exiting 3.
    ``dir`` defaults to ``<output>/checkpoints``. ``hdf5_locking`` applies to every HDF5 file
    hpcspec reads ("false" for Lustre/NFS without working locks; "auto" leaves HDF5's default
    and ``$HDF5_USE_FILE_LOCKING``).
    """

    every_iters: int = non_negative(0, "also every N solver iterations; 0: only by time")
    every_seconds: float = non_negative(300.0, "commit when this much time passed since the last checkpoint...")
    max_overhead: float = option(0.02, "...stretched so writing costs at most this share of the run time",
                                 low=(0, True), high=(1, False),
                                 message="checkpoint.max_overhead is a share of run time in [0, 1), got {value!r}")
    keep: int = positive(2, "committed checkpoints kept; older ones are deleted")
    dir: str = option("", "default <output>/checkpoints")
    hdf5_locking: str = option("auto", '"false" on Lustre/NFS without working locks (or HDF5_USE_FILE_LOCKING=FALSE)',
                               choices=HDF5_LOCKING)


@dataclass(frozen=True)
class LandscapeConfig:
    """The ``landscape`` task: the mean loss along the top eigenvector v₁ (and a seeded random unit
    direction, ``random``) on ``points`` steps α ∈ [−radius, radius], and over the plane of v₁, v₂
    on ``points_2d`` × ``points_2d`` steps (0: no 2-D grid). α is a parameter-space distance: the
    directions have unit norm. Needs the ``eigen`` task (top_k ≥ 2 for the 2-D grid)."""

    radius: float = positive(0.5, "α ∈ [−radius, radius] along unit directions")
    points: int = option(21, "1-D curves along v1 and a seeded random direction", low=(2, True),
                         message="landscape.points must be >= 2, got {value}")
    points_2d: int = option(11, "2-D grid over (v1, v2) per axis; 0 = none")
    random: bool = option(True, "also the curve along a seeded random direction")


@dataclass(frozen=True)
class BlocksConfig:
    """``run --per-block``: a block is the first ``depth`` components of a parameter's module path
    (ResNet: conv1, bn1, layer1.0, …, linear; an MLP's Sequential: layers.0, layers.2, …)."""

    depth: int = positive(2, "module-path components that name a block")


@dataclass(frozen=True)
class CommConfig:
    """The watchdog on every MPI collective (:mod:`hpcspec.parallel.watchdog`): a collective that has waited
    longer than ``max(timeout_s, timeout_factor × the longest this rank computed between two
    collectives)`` seconds aborts the job (exit 4), naming the ranks that did not arrive."""

    timeout_s: float = positive(600.0, "seconds a collective may wait at least",
                                message="comm.timeout_s must be > 0 seconds, got {value!r} (default 600)")
    timeout_factor: float = non_negative(20.0, "× the longest computation between two collectives",
                                         message="comm.timeout_factor must be >= 0, got {value!r} (default 20)")


@dataclass(frozen=True)
class ProgressConfig:
    """Progress of every iterative task on rank 0 (products done / planned, products per second, ETA;
    "at most" where the method may stop early): a bar when stderr is a terminal (tqdm's when it is
    installed), else one log line every ``every_seconds`` per task. 0: no progress display."""

    every_seconds: float = non_negative(30.0, "batch jobs: a progress line every this many seconds; 0: none",
                                        flags=(Flag("--progress-every", help="seconds between progress lines "
                                                    "when stderr is not a terminal (0: no progress display)"),))


@dataclass(frozen=True)
class Config:
    """Everything a run needs; see docs/configuration.md for each key."""

    output: str = option("hpcspec-out", "the output directory", may_change=True, example=SHOW,
                         flags=(Flag("--output", (RUN,), "output directory"),
                                Flag("--output", (TRAIN,), "directory for step_*.pt, train.toml, train_state.pt, "
                                                           "train_log.json")))
    force_output: bool = option(False, "write into an output folder that holds files other than an hpcspec run's",
                                may_change=True,
                                flags=(Flag("--force-output", BOTH, "write into an output folder that holds files "
                                            "other than an hpcspec run's (config key force_output; hpcspec still "
                                            "deletes only what it wrote)"),))
    seed: int = non_negative(0, "probe and start vectors depend only on this (never on the rank count)",
                             identity=True, example=SHOW,
                             flags=(Flag("--seed", (RUN,), "seed for probe and start vectors and zoo model "
                                                           "initialisation"),
                                    Flag("--seed", (TRAIN,), "seed of the initial weights and the minibatch order")))
    threads: int = non_negative(0, "0: OMP_NUM_THREADS if set, else usable cores divided by the ranks on each node",
                                may_change=True, example=SHOW,
                                flags=(Flag("--threads", BOTH, "torch threads per rank (0: OMP_NUM_THREADS if set, "
                                                               "else cores / ranks per node)"),))
    tasks: tuple[str, ...] = option(("eigen",), "what to compute: eigen, trace, density, landscape",
                                    example=["eigen", "trace", "density"],
                                    flags=(Flag("--trace", help="the trace, with a standard error", task="trace"),
                                           Flag("--density", help="the eigenvalue density by stochastic Lanczos "
                                                "quadrature (+ density.png)", task="density"),
                                           Flag("--landscape", help="the loss along the top eigenvectors and a random "
                                                "direction (needs --top-k; + landscape_1d.png, landscape_2d.png)",
                                                task="landscape")))
    model: ModelConfig = section(ModelConfig, "The network.", identity=True)
    data: DataConfig = section(DataConfig, "The data set.", identity=True)
    hessian: HessianConfig = section(HessianConfig, "Which Hessian, and how its products are computed.")
    eigen: EigenConfig = section(EigenConfig, "Top-k eigenpairs (0 means: the method's default).")
    trace: TraceConfig = section(TraceConfig, "Stochastic trace estimation.")
    density: DensityConfig = section(DensityConfig, "Spectral density by stochastic Lanczos quadrature.")
    train: TrainConfig = section(TrainConfig, "Brief full-batch Adam before run's analysis; "
                                              "every key for python -m hpcspec train.", identity=True)
    checkpoint: CheckpointConfig = section(CheckpointConfig, "Checkpoints for restartable runs (with --resume a run "
                                           "continues from the newest one).", may_change=True)
    blocks: BlocksConfig = section(BlocksConfig, "run --per-block: what a parameter block is.", may_change=True)
    landscape: LandscapeConfig = section(LandscapeConfig, 'The loss along the top eigenvectors: add "landscape" '
                                         'to tasks (needs "eigen").')
    comm: CommConfig = section(CommConfig, "The watchdog on every MPI collective.", may_change=True)
    progress: ProgressConfig = section(ProgressConfig, "Progress display on rank 0.", may_change=True)
