"""Which Ritz values block Lanczos wants, and the completeness check's tests.

Why a completeness check. A missed copy is invisible: the wanted pairs converge with small
residuals whether or not a copy is missing. So once the k wanted pairs are converged and locked,
the solver starts again from a *fresh* seeded block, deflated against the locked vectors, and runs
until the extreme Ritz pair(s) of that new space have converged. If one lies beyond the k-th
wanted value (with a margin of ``tol · scale``: :func:`beyond`), it was a missed copy; when a round
finds nothing beyond the k-th value (:func:`round_clear`), the answer is complete. Pure functions
of the Ritz values (numpy only): the solver (:mod:`hpcspec.solvers.block_lanczos`) holds the state.
"""

from __future__ import annotations

import math

import numpy as np

from .lanczos import select


def guarantee(block_size: int, checks: int, complete: bool, deflated: bool = False, needless: bool = False) -> str:
    """One line saying what a result guarantees about multiplicities (printed with it); ``deflated``:
    the last check round was also deflated against the search's Krylov basis; ``needless``: no copy
    could change the reported values (:func:`copy_limits`), so the run checked no further."""
    if complete and needless:
        found = (f"multiplicity <= {block_size} found by construction" +
                 (f"; higher multiplicity checked by {checks} round(s)" if checks else ""))
        return (f"{found}; no further check needed: a copy of a reported value would not change the reported "
                "values (none lies more than tol beyond the k-th)")
    if complete and checks == 0:
        return "the basis spanned the whole space: every eigenvalue found with its multiplicity"
    if not complete and checks == 0:
        return (f"multiplicity <= {block_size} found by the block; completeness NOT checked "
                "(stopped before a check round ran)")
    if not complete:
        return (f"multiplicity <= {block_size} found by the block; completeness NOT established: {checks} check "
                "round(s) ran and the last stopped unfinished (products or basis ran out)")
    against = "the locked pairs and the search's Krylov basis" if deflated else "the locked pairs"
    return (f"multiplicity <= {block_size} found by construction; higher multiplicity checked by {checks} "
            f"round(s) from a fresh seeded vector deflated against {against} (found with high probability)")


def full_residuals(residuals: np.ndarray, coupling: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Ritz residuals for H itself in a check round deflated against the search basis D:
    ``‖H y − θ y‖² = ‖(compressed residual)‖² + ‖Dᵀ H y‖²`` with ``Dᵀ H Y = coupling · s``."""
    if coupling.size == 0:
        return residuals
    return np.sqrt(residuals ** 2 + np.linalg.norm(coupling @ s, axis=0) ** 2)


def wanted_indices(values: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices into ``values`` (any order) of the k wanted ones, in reporting order."""
    order = np.argsort(values, kind="stable")
    return order[select(values[order], k, which)] if len(values) else np.zeros(0, dtype=int)


def restart_priority(theta: np.ndarray, which: str) -> np.ndarray:
    """Indices of ascending ``theta``, most wanted first (what a restart keeps)."""
    n = len(theta)
    if which == "largest":
        return np.arange(n)[::-1]
    if which == "smallest":
        return np.arange(n)
    if which == "largest_magnitude":
        return np.argsort(-np.abs(theta), kind="stable")
    alternate = [i for pair in zip(range(n - 1, -1, -1), range(n)) for i in pair]  # top, bottom, top, …
    return np.array(list(dict.fromkeys(alternate))[:n], dtype=int)


#: Probability that a Gaussian start block is so nearly orthogonal to a missed eigenvector that
#: a check round of the length :func:`round_clear` asks for would not reveal it.
FAILURE = 1e-6


def tan_squared(size: int, block: int) -> float:
    """tan² of the angle between a Gaussian (size, block) block and a fixed direction, exceeded with
    probability FAILURE: cos² ≈ χ²_b / P and P(χ²_b < x) ≈ (x/2)^{b/2} / Γ(b/2 + 1)."""
    x = 2.0 * math.exp((math.log(FAILURE) + math.lgamma(block / 2 + 1)) * 2 / block)
    return size / min(x, 1.0)


def thresholds(locked: np.ndarray, k: int, which: str) -> list[tuple[int, float]]:
    """Per side, ``(sign, t)``: a value v is beyond the k-th wanted one when ``sign · v > sign · t``.

    +1 is the top side, −1 the bottom; ``largest_magnitude`` has both, at ±(the k-th |value|)."""
    chosen = locked[wanted_indices(locked, k, which)]
    if which == "largest":
        return [(1, float(chosen.min()))]
    if which == "smallest":
        return [(-1, float(chosen.max()))]
    if which == "largest_magnitude":
        t = float(np.abs(chosen).min())
        return [(1, t), (-1, -t)]
    ordered = np.sort(locked)
    sides = [(1, float(ordered[len(ordered) - (k + 1) // 2:].min()))]
    return sides + ([(-1, float(ordered[: k // 2].max()))] if k // 2 else [])


def copy_limits(locked: np.ndarray, k: int, which: str, tol: float) -> list[tuple[int, float]]:
    """The sides a check round must search, as ``(sign, limit)``: a missed eigenvalue beyond
    ``limit`` (the side's k-th value, less tol) on a side is looked for.

    A missed copy repeats a reported value, and it changes the reported values only when that value
    lies more than tol beyond the side's k-th (a copy of the k-th itself leaves them as they are), so
    a side where no reported value does needs no check (top-1 never does). Where one does, the round
    still looks from the k-th value on: a copy's Ritz value climbs from below, and the lower limit
    sees it sooner."""
    chosen = locked[wanted_indices(locked, k, which)]
    return [(sign, threshold - sign * tol) for sign, threshold in thresholds(locked, k, which)
            if np.any(sign * chosen > sign * threshold + tol)]


def check_which(which: str) -> str:
    """The ``which`` a check round keeps at a restart: both ends where both can hold a missed copy."""
    return "both_ends" if which == "largest_magnitude" else which


def beyond(candidates: np.ndarray, locked: np.ndarray, k: int, which: str, margin: float) -> np.ndarray:
    """Which ``candidates`` would rank among the k wanted of ``locked`` (within ``margin``)."""
    candidates = np.asarray(candidates, dtype=np.float64)
    found = np.zeros(len(candidates), dtype=bool)
    if len(locked) < k:
        return ~found
    for sign, threshold in thresholds(locked, k, which):
        found |= sign * candidates > sign * threshold - margin
    return found


def round_clear(theta: np.ndarray, residuals: np.ndarray, tol: float, *, locked: np.ndarray, k: int, which: str,
                size: int, check_size: int, low: float, high: float, round_passes: int, search_passes: int) -> bool:
    """Whether a check round shows, with high probability, that no missed eigenvalue lies
    beyond the k-th wanted value of ``locked`` on a side that needs a check (:func:`copy_limits`;
    ``low``/``high``: the extreme Ritz values ever seen, the spectrum's span; ``size``: the operator's).

    On each side, the extreme Ritz value of the fresh space must stand clear of the limit
    (its residual interval too), and the round must have run long enough that a missed
    eigenvalue λ* at the threshold would already show: by the Kaniel–Paige–Saad bound,
    ``λ* − θ ≤ (λ* − λ_far) tan²Φ / T_{j−1}(1 + 2γ)²`` with γ the relative gap between λ* and the
    extreme Ritz value, so j passes suffice once ``T_{j−1}(1+2γ)² > tan²Φ (λ* − λ_far)/(λ* − θ)``;
    tan²Φ is bounded for a Gaussian start block with failure probability ``FAILURE``. The round
    never needs more passes than the search took: those sufficed to converge the k-th pair from
    a random start, and the deflated operator's spectrum beyond it is a subset of the original's.
    """
    far_low, far_high = low, high
    for sign, side_limit in copy_limits(locked, k, which, tol):
        index = int(np.argmax(sign * theta))
        extreme, far = sign * theta[index], sign * (far_low if sign > 0 else far_high)
        limit = sign * side_limit
        if extreme + residuals[index] >= limit:
            return False
        gap = limit - extreme
        chebyshev = math.sqrt(tan_squared(size, check_size) * (limit - far) / gap)
        spread = extreme - far
        needed = 1 if spread <= 0 else 1 + math.ceil(math.acosh(max(chebyshev, 1.0)) /
                                                     math.acosh(1 + 2 * min(gap / spread, 1e300)))
        if round_passes < min(needed, search_passes):
            return False
    return True
