"""Operator sanity before a long run: is H·v a fixed, symmetric linear map?

Every solver assumes the operator is symmetric and deterministic. A model that draws random
numbers in its forward (dropout left on, noise injection), normalises with batch statistics
unintentionally, or has an operation whose backward is not itself differentiable (a custom
autograd Function or extension kernel without double-backward support) breaks that silently: Lanczos then returns confident nonsense. These
checks refuse such a model up front, for a few products, with a message that says what to change.

:func:`check_model_modes` and :func:`nondeterministic_modules` inspect module modes (local, free);
:func:`check_operator` measures the operator itself (collective, four products).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from ..errors import InputError
from ..parallel.agree import AgreedInputError
from ..solvers.base import LinearOperator, as_operator
from ..solvers.probes import probe_block, probe_generator
from .operator import HessianOperator, check_bn_mode

#: Default symmetry tolerances by compute dtype (see :func:`symmetry_error` for the measure).
#: Measured with this module's probes: the default job's trained digits MLP (3,466 parameters,
#: 20 probe pairs, both HVP methods) gives at most 2.6e-15 in float64 and 7.0e-7 in float32
#: (medians 6e-16 and 2e-7); untrained tanh MLPs of 310 to 301,066 parameters give the same
#: orders whatever P. A backward that is not itself differentiable (a custom autograd Function
#: whose backward runs under no_grad, as an extension kernel without double-backward support)
#: gave 2e-2 to 4e-1 at those sizes, in either dtype. So float32's 1e-4 sits ~100× above its
#: roundoff and ~100× below those defects; float64's 1e-10 leaves ~10⁴× for deeper networks,
#: longer sums and GPU kernels, and is as far below any defect.
#: bfloat16 (unit roundoff u = 2⁻⁸): 2u = 2⁻⁷ ≈ 7.8e-3, where the same probes measured 1.0e-3 on the
#: default job's MLP and 5e-4 to 1.0e-3 on a ResNet-20 (width 4, 8×8 digits) with either HVP
#: method — ~8× above the roundoff, ~3× below the smallest defect above. TF32 (u = 2⁻¹¹, by name
#: in :data:`SYMMETRY_TOL_BY_NAME`: its tensors are float32): 2u ≈ 9.8e-4, since its CUDA
#: products round like bfloat16's with 3 more bits (on a CPU it is float32 and passes far below).
SYMMETRY_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2.0**-7}
#: The same by ``hessian.dtype`` name, with ``tf32``, which no torch dtype names.
SYMMETRY_TOL_BY_NAME = {str(dtype).removeprefix("torch."): tol for dtype, tol in SYMMETRY_TOL.items()} | {"tf32": 2.0**-10}

#: Products :func:`check_operator` spends: one (P, 2) block, applied twice.
CHECK_MATVECS = 4


@dataclass(frozen=True)
class OperatorCheck:
    """What :func:`check_operator` measured on a passing operator.

    Attributes:
        symmetry_error: :func:`symmetry_error` of two Gaussian probes: the asymmetry
            ``|uᵀHv − vᵀHu|`` relative to the typical size of such inner products (about the unit
            roundoff of the compute dtype for a correct operator).
        repeatable: H·[u, v] was bitwise identical on a second application (always True on a
            returned check: a failure raises).
        num_matvecs: products spent.
    """

    symmetry_error: float
    repeatable: bool
    num_matvecs: int


def default_symmetry_tol(dtype: torch.dtype | str | None) -> float:
    """The symmetry tolerance for a compute dtype or a ``hessian.dtype`` name: :data:`SYMMETRY_TOL`
    (:data:`SYMMETRY_TOL_BY_NAME` for a name), float64's when the operator has no compute dtype
    (a dense matrix), ~10³ unit roundoffs for other (unmeasured) types."""
    if dtype is None:
        return SYMMETRY_TOL[torch.float64]
    if isinstance(dtype, str):
        return SYMMETRY_TOL_BY_NAME.get(dtype, SYMMETRY_TOL[torch.float64])
    return SYMMETRY_TOL.get(dtype, 1e3 * float(torch.finfo(dtype).eps))


def symmetry_error(u: torch.Tensor, v: torch.Tensor, hu: torch.Tensor, hv: torch.Tensor) -> float:
    """``√P · |uᵀHv − vᵀHu| / (‖Hu‖‖v‖ + ‖Hv‖‖u‖)`` for vectors of length P (0 if H·u = H·v = 0).

    Invariant to the scale of H, u and v. For probes with independent N(0, 1) entries
    (‖u‖ ≈ √P) it is ≈ ``|uᵀHv − vᵀHu| / (‖Hu‖ + ‖Hv‖)``: the asymmetry relative to the typical
    size of ``uᵀHv`` (a N(0, ‖Hv‖²) variable). Without the √P both rounding errors and real
    defects shrink like 1/√P, and a fixed tolerance would pass a defective large model.
    """
    norm = torch.linalg.vector_norm
    scale = float(norm(hu) * norm(v) + norm(hv) * norm(u))
    return len(u) ** 0.5 * abs(float(u @ hv) - float(v @ hu)) / scale if scale > 0 else 0.0


@contextmanager
def _seeded_rng(op: LinearOperator, seed: int) -> Iterator[None]:
    """Run with the global CPU (and the operator's CUDA device) RNG seeded to ``seed``, then
    restore the caller's RNG state.

    The two applications run under different seeds, so a model that draws random numbers in its
    forward sees different draws each time — even if something between the two products had
    reset the global RNG — and the user's RNG stream is left as it was.
    """
    device = op.device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a − b| / max|a|`` (inf when a is 0 and b is not)."""
    top = float((a - b).abs().max())
    scale = float(a.abs().max())
    return top / scale if scale > 0 else (float("inf") if top > 0 else 0.0)


def _verdict(first: torch.Tensor, second: torch.Tensor, error: float, tol: float, dtype_name: str) -> str | None:
    """The one-line failure message for these measurements, or None if the operator passes."""
    skip = "or set hessian.check = false to skip this check"
    if not (torch.isfinite(first).all() and torch.isfinite(second).all()):
        return ("H·v contains NaN or infinite values; the loss, the model or the data overflow or are not finite "
                "at these parameters — check the weights, the inputs and the model (a lower-precision dtype "
                "overflowing?); no setting can skip this, every product would carry it")
    if not torch.equal(first, second):
        return (f"H·v is not repeatable: two products of the same vectors differ (max relative difference "
                f"{_relative_difference(first, second):.1e}); the model or data pipeline is non-deterministic "
                f"(dropout, random noise in forward, random augmentation?) — make it "
                f"deterministic, " + skip)
    if not error <= tol:
        return (f"H·v is not symmetric: uᵀHv and vᵀHu differ by {error:.1e} of their scale (tolerance {tol:.0e} for "
                f"{dtype_name}); the backward of some operation is not itself differentiable (a custom autograd "
                f"Function or extension kernel whose backward runs under no_grad or detaches?) — give it a "
                f"differentiable backward (double-backward support), " + skip)
    return None


def check_operator(op: LinearOperator, *, seed: int = 0, symmetry_tol: float | None = None) -> OperatorCheck:
    """Check that H·v is finite, bitwise repeatable and symmetric; raise :class:`AgreedInputError` if not.

    Collective (calls ``op.apply``): every rank calls it at the same point; rank 0 judges and
    broadcasts its verdict, so every rank returns or raises alike. Costs
    :data:`CHECK_MATVECS` = 4 products: the block ``[u, v]`` of probes ``"check"`` 0 and 1 is
    applied twice, under different RNG seeds, and the two results must agree bit for bit (a block
    and a single-vector product may legitimately differ in the last bits, so like is compared with
    like); the first result gives the symmetry error (see :class:`OperatorCheck`).

    Args:
        op: the operator (its ``compute_dtype`` sets the default tolerance).
        seed: seeds the probes.
        symmetry_tol: largest accepted symmetry error; default :data:`SYMMETRY_TOL` for the
            compute dtype (float64 when the operator has none).
    """
    op = as_operator(op)
    dtype = op.compute_dtype
    tol = default_symmetry_tol(dtype) if symmetry_tol is None else symmetry_tol
    block = probe_block(op.size, seed, "check", [0, 1], "gaussian")
    first_seed, second_seed = (probe_generator(seed, "check rng", i).initial_seed() for i in (0, 1))
    # Kept first-order graphs would freeze one draw of a random forward: recompute for the check.
    with op.recomputing(), _seeded_rng(op, first_seed):
        first = op.apply(block)
    with op.recomputing(), _seeded_rng(op, second_seed if second_seed != first_seed else first_seed + 1):
        second = op.apply(block)
    error = symmetry_error(block[:, 0], block[:, 1], first[:, 0], first[:, 1])
    message = None
    if op.comm.rank == 0:
        message = _verdict(first, second, error, tol, str(dtype or torch.float64).removeprefix("torch."))
    message, error = op.comm.bcast_object((message, error))
    if message is not None:  # rank 0's verdict, broadcast: every rank raises it together
        raise AgreedInputError(message)
    return OperatorCheck(symmetry_error=error, repeatable=True, num_matvecs=CHECK_MATVECS)


def _offenders(model: nn.Module, bn_mode: str) -> list[tuple[str, str, str]]:
    """``(name, why, kind)`` for each module that makes H·v random (kind "random") or dependent on
    the batching (kind "batch", "batch-always") in the model's current modes."""
    check_bn_mode(bn_mode)
    found = []
    for name, module in model.named_modules():
        label = name or "(root)"
        kind = type(module).__name__
        if not module.training:
            if isinstance(module, _BatchNorm) and bn_mode != "train" and module.running_mean is None:
                found.append((label, f"{kind} without running statistics", "batch-always"))
            continue
        if isinstance(module, _DropoutNd) and module.p > 0:
            found.append((label, f"{kind} in training mode", "random"))
        elif isinstance(module, nn.RReLU):
            found.append((label, f"{kind} in training mode", "random"))
        elif isinstance(module, (nn.MultiheadAttention, nn.RNNBase)) and getattr(module, "dropout", 0) > 0:
            found.append((label, f"{kind} with dropout in training mode", "random"))
        elif isinstance(module, _BatchNorm) and bn_mode != "train":
            batch_always = module.running_mean is None
            found.append((label, f"{kind} {'without running statistics' if batch_always else 'in training mode'}",
                          "batch-always" if batch_always else "batch"))
    return found


def nondeterministic_modules(model: nn.Module, bn_mode: str = "eval") -> list[str]:
    """Names of the modules that, in the model's current modes, make H·v random or batch-dependent.

    Local and free: call it after the operator has set the modes (model.eval(), and BatchNorm in
    training mode for ``bn_mode = "train"``). It finds dropout-family modules, RReLU, and
    attention or recurrent layers with dropout still in training mode (a model whose
    ``train()``/``eval()`` does not reach its children), and, unless ``bn_mode`` is "train",
    BatchNorm layers in training mode or built without running statistics (which normalise with
    batch statistics in every mode). The root module is named ``(root)``. Randomness drawn in
    ``forward`` itself (``F.dropout(x, training=True)``, ``torch.randn_like``) is invisible
    here; :func:`check_operator` catches it.
    """
    return [name for name, _, _ in _offenders(model, bn_mode)]


def check_model_modes(model: nn.Module, bn_mode: str) -> None:
    """Raise :class:`InputError` naming the modules :func:`nondeterministic_modules` finds, and the fix."""
    offenders = _offenders(model, bn_mode)
    if not offenders:
        return
    kinds = {kind for _, _, kind in offenders}
    fixes = []
    if kinds & {"random", "batch"}:
        fixes.append("make the model's eval() reach them (does it override train()/eval()?)")
    if "random" in kinds:
        fixes.append("or remove the randomness")
    if "batch-always" in kinds:
        fixes.append("build BatchNorm with track_running_stats=True")
    if kinds & {"batch", "batch-always"}:
        fixes.append('or set hessian.bn_mode = "train" to use batch statistics on purpose')
    listed = ", ".join(f"'{name}' ({why})" for name, why, _ in offenders)
    raise InputError(f"modules that make H·v random or dependent on the batching: {listed} — {' '.join(fixes)}")


def check_operator_modes(op: HessianOperator) -> None:
    """:func:`check_model_modes` on the operator's model in the modes its products use
    (:meth:`HessianOperator.modes`; the model's own modes are restored afterwards). Local and free."""
    with op.modes():
        check_model_modes(op.model, op.bn_mode)
