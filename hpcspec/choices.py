"""Every choice list and every default the library and the command line share, stated once.

The config (:mod:`hpcspec.config`) validates against these tuples and the kernels (operator,
solvers, communicator) check their arguments against the same ones, so the two cannot drift.
Torch-free on purpose: parsing or validating a config must not import torch. Where the config
accepts more than a kernel (``hvp = "auto"``, the default trace method listed first) the config's
tuple is derived from the kernel's here.
"""

from __future__ import annotations

# --- the model and the loss --------------------------------------------------------------------
ACTIVATIONS = ("tanh", "relu", "gelu", "sigmoid", "softplus")
LOSSES = ("cross_entropy", "mse")
#: How a batch of a ``reduction="mean"`` criterion is weighted (``Loss.of(criterion, weight=…)``):
#: by its samples, or by its target tokens other than the criterion's ``ignore_index``.
LOSS_WEIGHTS = ("samples", "tokens")
#: The compute precisions (``hessian.dtype``): names of torch dtypes, and ``tf32`` (float32 whose
#: CUDA matmuls and convolutions round their inputs to TF32's 10-bit mantissa; on a CPU plain float32).
#: float16 is refused (:data:`REFUSED_DTYPES`).
DTYPES = ("float64", "float32", "bfloat16", "tf32")
#: Dtype names refused with a reason, not merely as unknown.
REFUSED_DTYPES = ("float16",)
#: Why (the CLI's ``hessian.dtype`` and the library's model dtype say the same).
FLOAT16_REASON = ("float16's range (largest 65504, smallest normal 6e-5) overflows batch loss sums and underflows "
                  "second derivatives without the loss scaling an exact HVP cannot use; use bfloat16 (float32's "
                  "range) or float32")
#: Unit roundoff u (half the spacing of the numbers just above 1) of each compute precision: 2⁻⁵³,
#: 2⁻²⁴, 2⁻⁸ (bfloat16's 7 stored mantissa bits), 2⁻¹¹ (TF32's 10).
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "bfloat16": 2.0**-8, "tf32": 2.0**-11}

# --- the Hessian operator ----------------------------------------------------------------------
#: The Hessian-vector product implementations :class:`~hpcspec.curvature.operator.HessianOperator` has.
HVP_METHODS = ("double_backward", "forward_over_reverse")
#: What ``hessian.hvp`` accepts: ``auto`` picks one by a fixed rule (:mod:`hpcspec.curvature.method`).
HVP_CHOICES = ("auto", *HVP_METHODS)
#: ``fast``: one float64 allreduce (bits depend on the rank count through the summation order);
#: ``ordered``: an exact fixed-point sum whose bits do not (see ``HessianOperator._exact_sum``).
REDUCTIONS = ("fast", "ordered")
#: How launcher ranks map to the pipeline grid (``model.placement``, :mod:`hpcspec.parallel.grid`):
#: ``pipe``: rank = d·S + s, the S stages of one data shard consecutive (on one node under a
#: by-slot/block mapping); ``stage``: rank = s·D + d, the D shards of one stage consecutive.
PLACEMENTS = ("pipe", "stage")
#: ``eval``: BatchNorm normalises with its running (population) statistics; ``train``: with each
#: batch's own statistics.
BN_MODES = ("eval", "train")
#: MiB per rank the shard's first-order graphs may take to be kept between products (0: never kept).
DEFAULT_GRAPH_BUDGET_MB = 1024.0
#: Solvers keep only each rank's slice of every long vector (products reduce-scattered).
DEFAULT_SHARD_VECTORS = True

# --- the solvers -------------------------------------------------------------------------------
WHICH = ("largest", "smallest", "largest_magnitude", "both_ends")
EIGEN_METHODS = ("block", "lanczos", "power")
#: The trace estimators, in the order of their history (Hutchinson 1989 → Hutch++ → XTrace → Krylov-deflated).
TRACE_METHODS = ("hutchinson", "hutchpp", "xtrace", "krylov")
DEFAULT_TRACE_METHOD = "krylov"
#: The trace methods that can stop early at a standard error (``trace.rtol``); XTrace spends its budget on one sketch.
ADAPTIVE_TRACE_METHODS = ("hutchinson", "hutchpp", "krylov")
#: ``trace.method``'s choices as the config lists them: the default first.
TRACE_CHOICES = (DEFAULT_TRACE_METHOD, *(method for method in TRACE_METHODS if method != DEFAULT_TRACE_METHOD))
#: The fewest products any trace method needs at its default sketch size (hutchpp: 2·1 + 2).
MIN_TRACE_MATVECS = 4
DISTRIBUTIONS = ("rademacher", "gaussian")
#: Lanczos / block Lanczos relative Ritz-residual tolerance by compute dtype (``eigen.tol = 0``;
#: a library call with ``tol=None``): float32 products are not accurate to 1e-8. bfloat16 and TF32:
#: 4 u (2⁻⁶ ≈ 1.6e-2 and 2⁻⁹ ≈ 2.0e-3): their products carry errors of a few u, and the digits
#: MLP's top-5 eigenvalues in bfloat16 reach their error floor (1–2 % = 2.4–4.3 u against the
#: float64 Hessian) at 4 u, while 16 u leaves the fifth 6 % off (docs/accuracy.md, "Mixed
#: precision"). TF32 on a CPU computes float32 but keeps TF32's tolerance.
DEFAULT_TOL = {"float64": 1e-8, "float32": 1e-5, "bfloat16": 4 * UNIT_ROUNDOFF["bfloat16"],
               "tf32": 4 * UNIT_ROUNDOFF["tf32"]}
#: The loosest eigen tolerance accepted (``eigen.tol``, the library's ``tol``). A Ritz residual
#: bound r = tol · max|θ| puts each reported value within r of *some* eigenvalue, and the wanted
#: ones are told apart from their neighbours only while r stays below the gaps: at the bfloat16
#: default (1.6e-2) the top values of a designed spectrum come out right, at 0.1 block Lanczos
#: reports values near eigenvalues that are not the wanted ones, at 0.5 the digits MLP's λ1 comes
#: out 0.57 against 0.81 (tests/unit/solvers/test_block_lanczos.py). Power iteration's relative
#: change is bounded the same way.
MAX_TOL = 0.02
#: PyHessian's defaults for its power iteration (``hessian.eigenvalues(maxIter=100, tol=1e-3)``).
POWER_TOL = 1e-3
POWER_MAXITER = 100

# --- the run -----------------------------------------------------------------------------------
TASKS = ("eigen", "trace", "density", "landscape")
SPLITS = ("train", "test")
NORMALIZE = ("auto", "channel", "none")
SCHEDULES = ("cosine", "step", "constant")
HDF5_LOCKING = ("auto", "true", "false", "best-effort")
#: Communication backends (``--backend``); ``auto`` picks one from the launcher's environment.
BACKENDS = ("auto", "mpi", "torch", "horovod", "single")


def tolerance_problem(tol: object, name: str = "tol") -> str | None:
    """Why ``tol`` cannot certify an eigenvalue (one line naming the accepted range), or None."""
    try:
        value = float(tol)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{name} must be a number in [0, {MAX_TOL:g}], got {tol!r}"
    if not 0.0 <= value <= MAX_TOL:  # NaN and infinities fail too
        return (f"{name} = {tol!r} is outside [0, {MAX_TOL:g}]: a looser relative Ritz residual cannot tell the "
                f"wanted eigenvalues from their neighbours, so it certifies nothing (the defaults: "
                f"{DEFAULT_TOL['float64']:g} in float64, {DEFAULT_TOL['float32']:g} in float32)")
    return None


def default_tol(dtype: object = None) -> float:
    """The Lanczos tolerance for a compute dtype (a name or a torch dtype); float64's when unknown."""
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float64"
    return DEFAULT_TOL.get(name, DEFAULT_TOL["float64"])
