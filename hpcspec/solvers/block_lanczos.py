"""Block Lanczos with thick restart, locking and a completeness check, for top-k eigenpairs that
stay right when eigenvalues repeat.

Why blocks. A Krylov space grown from one vector holds one direction of every eigenspace, so a
single-vector Lanczos run on an operator with a repeated eigenvalue λ (μ copies) converges to one
copy and reports the next distinct values as the following eigenvalues, with tiny residuals
(every reported pair *is* an eigenpair; the list just has gaps). Grown from a random block of b
vectors, the space holds min(μ, b) directions of every eigenspace (Golub & Underwood 1977), so
multiplicities up to b are found by construction, and one data pass serves b products.

Why restarts. The basis is bounded by ``max_basis`` vectors (ARPACK's ``ncv``): when the next
block would not fit, the Rayleigh–Ritz pairs are computed, the converged wanted ones are *locked*
(kept, frozen, and deflated from every later vector), the best ``keep`` unconverged Ritz vectors
are kept, and the rest is discarded (thick restart: Wu & Simon 2000; Krylov–Schur: Stewart 2001).
The Krylov relation ``H Q = Q T + X R Eᵀ`` survives the restart with T diagonal on the kept part
plus the coupling of the pending block X, so the projected matrix T is kept dense and symmetric
(its upper part holds the computed coefficients ``Qᵀ H X`` of each block; Saad, *Numerical Methods
for Large Eigenvalue Problems*, 2nd ed., §5.3 and ch. on deflation). Memory per rank stays
``max_basis · P / R`` whatever k and however many restarts.

Why a completeness check. A missed copy is invisible: the wanted pairs converge with small
residuals whether or not a copy is missing, so once the k wanted pairs are locked, fresh seeded
blocks deflated against them (and against the search's nearly converged Ritz vectors, which keep
every missed copy while removing the resolved spectrum: :mod:`hpcspec.solvers.block_rows`) look for
more until a round finds nothing beyond the k-th value (:mod:`hpcspec.solvers.block_check`); no
round runs when no copy could change the reported values (top-1); copies within tol of the k-th
value are locked too, and when they fill the basis (at a loose tol) the check stops, incomplete. Guarantee: multiplicity ≤ b is
found in exact arithmetic from any start block in general position; higher multiplicity is found
with high probability.

Convergence is judged by Ritz residuals ``‖R S_{last, i}‖ = ‖H y_i − θ_i y_i‖`` (exact arithmetic),
relative to ``scale = max |θ|``. New blocks are orthonormalised against every held vector
(:mod:`hpcspec.solvers.block_basis`). Probes depend only on ``(seed, index)``, never on the rank count.

SPMD: every rank runs the loop; rank 0's projected matrix and Ritz decomposition are broadcast,
so all ranks take the same decisions. Vectors live in the operator's space (:mod:`hpcspec.parallel.vectors`):
replicated, or sharded so that each rank holds only its slice of every basis vector.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .base import IterativeSolver, LinearOperator, State, as_operator, check_tol, resolve_tol
from .block_basis import BasisBuffer, as_block, checked_sizes, fresh_block, next_block, one_thread, orthogonalise
from .block_check import (beyond, check_which, copy_limits, full_residuals, guarantee, restart_priority, round_clear,
                          wanted_indices)
from .block_rows import BasisRows
from .lanczos import LanczosResult, check_request
from .probes import probe

STREAM = "block_lanczos"
#: Default block size: one vector per pass takes the fewest products (1.0–1.7x single-vector
#: Lanczos on the digits MLP, against 1.5–2.4x for 4; ``benchmarks/block_lanczos.py``), and
#: products are what a large model pays for; a wider block takes fewer data passes (what a GPU or
#: many ranks pay for) and finds multiplicity up to its width by construction.
DEFAULT_BLOCK_SIZE = 1
PHASES = ("search", "check")
#: A check pair whose compressed residual is below SPURIOUS · tol while its residual for H stays
#: above tol is no eigenpair of H: the round falls back to deflating the locked pairs only.
SPURIOUS = 1e-3
#: The solver's scalar state: checkpoint key → (attribute, type, default for a state saved without it).
COUNTERS: dict[str, tuple[str, type, object]] = {
    "locked": ("nl", int, None), "active": ("m", int, None), "pending": ("w", int, None), "phase": ("phase", str, None),
    "checks": ("checks", int, None), "round_passes": ("round_passes", int, None),
    "search_passes": ("search_passes", int, None), "restarts": ("restarts", int, None), "draws": ("draws", int, None),
    "num_matvecs": ("num_matvecs", int, None), "passes": ("passes", int, None), "scale": ("scale", float, None),
    "low": ("low", float, None), "high": ("high", float, None), "peak_rows": ("peak_rows", int, None),
    "converged": ("converged", bool, None), "complete": ("complete", bool, None), "done": ("done", bool, None),
    "deflation": ("nd", int, 0), "deflated": ("deflated", bool, False), "breakdowns": ("breakdowns", int, 0),
    "needless": ("needless", bool, False)}


class BlockLanczos(BasisRows, IterativeSolver[LanczosResult]):
    """Block Lanczos with thick restart, locking and a completeness check, as a resumable solver.

    One :meth:`step` is one data pass: the operator applied to one block of up to ``block_size``
    vectors. See :func:`block_lanczos` for the arguments. The state holds the locked vectors, the
    active basis and the pending block (at most ``max_basis`` rows of P numbers, sliced per rank when
    vectors are sharded), the projected matrix T, the locked values and the counters.
    """

    kind = "block_lanczos"

    def __init__(self, op: LinearOperator, k: int = 5, *, which: str = "largest", tol: float | None = None,
                 block_size: int = DEFAULT_BLOCK_SIZE, max_basis: int | None = None, maxiter: int | None = None,
                 seed: int = 0, v0: torch.Tensor | None = None, check: bool = True, check_size: int = 1,
                 callback: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> None:
        op = as_operator(op)
        n = op.size
        check_request(n, k, which)
        tol = resolve_tol(tol, op)
        b, basis, self.maxiter = checked_sizes(n, k, tol, block_size, max_basis, check_size, maxiter)
        self.op, self.k, self.which, self.tol, self.seed = op, k, which, float(tol), seed
        self.block_size, self.max_basis, self.check, self.callback = b, basis, check, callback
        self.check_size = check_size
        self.space = op.space
        self.buffer = BasisBuffer(self.space.local_size, basis, 2 * b + k)
        self.peak_rows = 0  # the most vectors ever held (locked + active + pending): ≤ max_basis
        self.nl = self.m = self.w = 0  # locked, active and pending rows of the buffer, in that order
        self.nd = 0  # in a check round, the search's basis rows held between the locked and active rows
        self.coupling = np.zeros((0, 0))  # (nd, m): those rows' coefficients of H times each active row
        self.deflated = False  # whether the last check round was deflated against the search basis
        self.needless = False  # whether no copy could change the reported values (no check then needed)
        self.breakdowns = 0  # search passes that drew a fresh probe: the basis is then no single Krylov space
        self.T = np.zeros((0, 0))  # projected matrix on the active rows
        self.locked_values = np.zeros(0)
        self.locked_residuals = np.zeros(0)
        self.phase, self.checks, self.restarts, self.draws = "search", 0, 0, 0
        self.round_passes = 0  # passes of the current check round
        self.search_passes = 0  # passes the search took (the longest a check round needs)
        self.num_matvecs = self.passes = 0
        self.scale = 0.0  # largest ‖H x‖ seen: the yardstick of a vanishing column
        self.low, self.high = math.inf, -math.inf  # the extreme Ritz values ever seen: the spectrum's span
        self.converged = self.complete = self.done = False
        self._final: tuple[np.ndarray, np.ndarray, torch.Tensor] | None = None
        start = [] if v0 is None else list(self.space.local(as_block(v0, n)).T.clone())
        with one_thread():
            self._place(self._fresh(min(b, n), [], start))

    def _width(self) -> int:
        """Columns of the next block: ``block_size`` in the search, ``check_size`` in a check round."""
        return self.block_size if self.phase == "search" else self.check_size

    # ------------------------------------------------------------------------------ orthogonality
    def _draw(self) -> torch.Tensor:
        """This rank's rows of the next Gaussian probe of the stream (depends on (seed, index) only)."""
        vector = self.space.local(probe(self.op.size, self.seed, STREAM, self.draws, "gaussian")).clone()
        self.draws += 1
        return vector

    def _fresh(self, width: int, held: list[torch.Tensor], start: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Up to ``width`` orthonormal rows orthogonal to every ``held`` tensor: ``start``, then probes."""
        return fresh_block(self.space, width, held, self._draw, start)

    def _next_block(self, w: torch.Tensor, width: int) -> tuple[torch.Tensor, np.ndarray]:
        """The next block X and its coupling R (``w ≈ Rᵀ X``), orthogonal to the locked and active rows."""
        return next_block(self.space, w, width, self._rows[: self._held + self.m], self.scale, self._draw)

    # ---------------------------------------------------------------------------------- one pass
    def step(self) -> None:
        start = self._held + self.m
        x = self._rows[start: start + self.w]
        space = self.space
        product = space.apply(self.op, space.gather(x.T.contiguous()))  # this rank's rows of H X
        with one_thread():
            self._absorb(product, x.shape[0])

    def _absorb(self, product: torch.Tensor, width: int) -> None:
        """Everything of a pass after the product: the projected matrix, the next block, the decisions."""
        space, n, nl, held = self.space, self.op.size, self.nl, self._held
        # row-major strides whatever the operator returned: a BLAS product picks its summation
        # order from the strides, and the bits must not depend on the backend or the operator
        w = (product[:, None] if product.ndim == 1 else product).T.clone(memory_format=torch.contiguous_format)
        self.num_matvecs += width
        self.passes += 1
        self.m, self.w = self.m + width, 0  # X joins the active basis
        m = self.m
        self.scale = max(self.scale, float(space.norms(w).max()))
        everything = orthogonalise(space, w, self._rows[: held + m]).numpy()  # the locked part: deflated
        coefficients = everything[held:]  # (m, width)
        self.coupling = np.concatenate([self.coupling.reshape(self.nd, m - width), everything[nl:held]], axis=1)
        t = np.zeros((m, m))
        t[: m - width, : m - width] = self.T
        t[:, m - width:] = coefficients
        t[m - width:, :] = coefficients.T
        diagonal = coefficients[m - width:]
        t[m - width:, m - width:] = (diagonal + diagonal.T) / 2
        draws = self.draws
        x_next, r = self._next_block(w, min(self._width(), n - held - m))
        self.breakdowns += int(self.phase == "search" and self.draws > draws)
        theta, s = np.linalg.eigh(t)
        compressed = np.linalg.norm(r @ s[m - width:], axis=0) if r.size else np.zeros(m)
        residuals = full_residuals(compressed, self.coupling, s)
        # rank 0's numbers for every rank: all take the same decisions from the same bits
        self.T, theta, s, residuals, compressed = self.op.comm.bcast_object((t, theta, s, residuals, compressed))
        self.low, self.high = min(self.low, float(theta[0])), max(self.high, float(theta[-1]))
        self._decide(theta, s, residuals, x_next, exhausted=x_next.shape[0] == 0, compressed=compressed)

    def _scale(self, theta: np.ndarray) -> float:
        """The yardstick of the relative tolerance: the largest |Ritz value| yet."""
        return float(np.concatenate([np.abs(theta), np.abs(self.locked_values), [np.finfo(float).tiny]]).max())

    def _tolerance(self, theta: np.ndarray) -> float:
        return self.tol * self._scale(theta)

    def _decide(self, theta: np.ndarray, s: np.ndarray, residuals: np.ndarray, x_next: torch.Tensor,
                exhausted: bool, compressed: np.ndarray) -> None:
        """Lock, restart, start a check round or finish, from this pass's Ritz pairs (``residuals``: for
        H; ``compressed``: for H compressed to the complement of the held rows, the same without them)."""
        tol = self._tolerance(theta)
        converged = (residuals <= tol) | (exhausted and self.nd == 0)
        values = np.concatenate([self.locked_values, theta])
        wanted = wanted_indices(values, self.k, self.which)
        active_wanted = wanted[wanted >= self.nl] - self.nl
        if self.callback is not None:
            self.callback(self.passes, values[wanted], np.concatenate([self.locked_residuals, residuals])[wanted])
        if self.phase == "search":
            if len(wanted) == self.k and bool(np.all(converged[active_wanted])):
                reported = np.concatenate([self.locked_values, theta[active_wanted]])
                self.needless = not copy_limits(reported, self.k, self.which, tol)
                if self.check and not exhausted and self.nl + len(active_wanted) < self.op.size and not self.needless:
                    bound = math.sqrt(tol * self._scale(theta))  # √tol · scale: nearly converged
                    self._keep_search_basis(theta, s, residuals, active_wanted, bound=bound)
                    self._start_check()
                else:
                    self._recombine(theta, s, residuals, lock=active_wanted, keep=np.zeros(0, dtype=int))
                    complete = exhausted or self.nl == self.op.size or (self.check and self.needless)
                    self._finish(converged=True, complete=complete)
                return
            lock = active_wanted[converged[active_wanted]]
        else:
            self.round_passes += 1
            ahead = beyond(theta, self.locked_values, self.k, self.which, tol)
            if self.nd and bool(np.any(ahead & (compressed <= SPURIOUS * tol) & (residuals > tol))):
                # the compressed operator has a pair ahead that is no eigenpair of H (a missed copy's
                # residual for H falls with its compressed one): check without the search basis
                self.nd, self.coupling = 0, np.zeros((0, 0))
                self._start_check()
                return
            missed = np.flatnonzero(converged & ahead)
            if len(missed):  # a copy the search did not see: lock it, then check again from scratch
                self._recombine(theta, s, residuals, lock=missed, keep=np.zeros(0, dtype=int))
                self._drop_unwanted(tol)
                self.needless = not copy_limits(self.locked_values, self.k, self.which, tol)
                if exhausted or self.nl >= self.op.size or self.needless:
                    self._finish(converged=True, complete=True)
                elif self._full():  # copies within tol of the k-th value fill the basis: no room to check on
                    self._finish(converged=True, complete=False)
                else:
                    self._start_check()
                return
            if exhausted or round_clear(theta, compressed, tol, locked=self.locked_values, k=self.k,
                                        which=self.which, size=self.op.size, check_size=self.check_size,
                                        low=self.low, high=self.high, round_passes=self.round_passes,
                                        search_passes=self.search_passes):
                self._finish(converged=True, complete=True)
                return
            lock = missed
        if self.num_matvecs >= self.maxiter:
            self._finish_partial(theta, s, residuals)
            return
        if self._held + self.m + x_next.shape[0] > self.max_basis:
            if self._full(len(lock)):  # locked pairs fill the basis
                self._finish_partial(theta, s, residuals)
                return
            self._restart(theta, s, residuals, lock)
        self._place(x_next)

    def _full(self, locking: int = 0) -> bool:
        """Whether the locked pairs, with ``locking`` more, leave less than two blocks of the basis:
        too little for a search or a check round to grow past its next restart. At a loose tol every
        pair within tol of the k-th value counts as a copy and is locked, so this bounds the locking."""
        return self.nl + locking + 2 * self.block_size > self.max_basis

    def _restart(self, theta: np.ndarray, s: np.ndarray, residuals: np.ndarray, lock: np.ndarray) -> None:
        """Thick restart: lock ``lock``, keep the best unconverged Ritz vectors, drop the rest."""
        free = self.max_basis - self._held - len(lock)
        remaining = max(self.k - self.nl - len(lock), 0)
        keep_count = min(free - 2 * self.block_size, max(remaining + self.block_size, free // 2))
        order = restart_priority(theta, self.which if self.phase == "search" else check_which(self.which))
        locked = set(lock.tolist())
        keep = np.array([i for i in order if i not in locked][:max(keep_count, 0)], dtype=int)
        self._recombine(theta, s, residuals, lock=lock, keep=keep)
        self.restarts += 1

    def _start_check(self) -> None:
        """A completeness round: a fresh seeded block deflated against the locked pairs and the
        deflation rows the search left (at most half the free basis, so the round has room to grow)."""
        if self.phase == "search":
            self.search_passes = self.passes
        self.phase, self.checks, self.round_passes = "check", self.checks + 1, 0
        self.nd = min(self.nd, max((self.max_basis - self.nl) // 2, 0))
        self.m, self.w, self.T, self.coupling = 0, 0, np.zeros((0, 0)), np.zeros((self.nd, 0))
        fresh = self._fresh(min(self._width(), self.op.size - self._held), [self._rows[: self._held]])
        if fresh.shape[0] == 0 and self.nd:  # the held rows span the space: check against the locked only
            self.nd, self.coupling = 0, np.zeros((0, 0))
            fresh = self._fresh(min(self._width(), self.op.size - self.nl), [self._rows[: self.nl]])
        self.deflated = self.nd > 0
        if fresh.shape[0] == 0:  # the locked vectors span the space (to working precision)
            self._finish(converged=True, complete=True)
            return
        self._place(fresh)

    # ------------------------------------------------------------------------------------ finish
    def _finish(self, *, converged: bool, complete: bool) -> None:
        wanted = wanted_indices(self.locked_values, self.k, self.which)
        vectors = self._rows[wanted].T.contiguous()
        self._end(self.locked_values[wanted], self.locked_residuals[wanted], vectors, converged, complete)

    def _finish_partial(self, theta: np.ndarray, s: np.ndarray, residuals: np.ndarray) -> None:
        """Out of budget: the best k of the locked and active pairs, residuals as they stand."""
        values = np.concatenate([self.locked_values, theta])
        wanted = wanted_indices(values, self.k, self.which)
        active = self._rows[self._held:self._held + self.m]
        columns = [self._rows[i] if i < self.nl else torch.from_numpy(np.ascontiguousarray(s[:, i - self.nl])) @ active
                   for i in wanted]
        vectors = torch.stack(columns, dim=1)
        all_residuals = np.concatenate([self.locked_residuals, residuals])
        self._end(values[wanted], all_residuals[wanted], vectors, self.phase == "check", False)

    def _end(self, values: np.ndarray, residuals: np.ndarray, vectors: torch.Tensor, converged: bool,
             complete: bool) -> None:
        vectors = vectors * self.space.signs(vectors)
        self._final = (values.copy(), residuals.copy(), vectors)
        self.converged, self.complete, self.done = converged, complete, True
        self.buffer.data = self._rows[:0].clone()  # the basis is no longer needed: free it for the next task
        self.nl = self.m = self.w = self.nd = 0
        self.T, self.coupling = np.zeros((0, 0)), np.zeros((0, 0))

    # ------------------------------------------------------------------------------ checkpoints
    def planned_matvecs(self) -> tuple[int, bool]:
        """At most ``maxiter`` products and the rest of the pass that reaches it; usually far fewer."""
        return self.maxiter + self.block_size - 1, True

    def state_dict(self) -> State:
        space = self.space
        state: State = {"kind": self.kind, "rows": space.export(self._rows[: self._held + self.m + self.w].clone()),
                        "T": self.T.copy(), "locked_values": self.locked_values.copy(),
                        "locked_residuals": self.locked_residuals.copy(), "coupling": self.coupling.ravel().copy()}
        state.update({key: getattr(self, name) for key, (name, _, _) in COUNTERS.items()})
        if self._final is not None:
            values, residuals, vectors = self._final
            state.update({"values": values, "residuals": residuals, "vectors": space.export(vectors.T.contiguous())})
        return state

    def load_state_dict(self, state: State) -> None:
        self._check_kind(state)
        space = self.space
        rows = space.take(state["rows"])
        if rows.shape[0] > self.max_basis:  # saved by a solver with a larger basis
            raise ValueError(f"the block Lanczos state holds {rows.shape[0]} basis vectors, more than max_basis = "
                             f"{self.max_basis}: resume with max_basis >= {rows.shape[0]}, as the saved run had")
        if str(state["phase"]) not in PHASES:
            raise ValueError(f"block Lanczos state has phase {state['phase']!r}, not one of {', '.join(PHASES)}")
        self.buffer.data = torch.empty(0, space.local_size, dtype=torch.float64)
        self.nl = self.m = self.w = self.nd = 0
        if rows.shape[0]:
            self._ensure(rows.shape[0])
            self._rows[: rows.shape[0]] = rows
        for key, (name, cast, default) in COUNTERS.items():  # a state saved before a key existed: its default
            setattr(self, name, cast(state[key] if key in state or default is None else default))
        self.coupling = np.array(state.get("coupling", np.zeros(0)), dtype=np.float64).reshape(self.nd, self.m)
        self.T = np.array(state["T"], dtype=np.float64).reshape(self.m, self.m)
        self.locked_values = np.array(state["locked_values"], dtype=np.float64)
        self.locked_residuals = np.array(state["locked_residuals"], dtype=np.float64)
        self._final = None
        if "vectors" in state:
            self._final = (np.array(state["values"], dtype=np.float64), np.array(state["residuals"], dtype=np.float64),
                           space.take(state["vectors"]).T.contiguous())

    def result(self) -> LanczosResult:
        if self._final is None:
            raise RuntimeError("the block Lanczos solver has not finished")
        values, residuals, vectors = self._final
        return LanczosResult(eigenvalues=values.copy(), eigenvectors=vectors.clone(), residuals=residuals.copy(),
                             converged=self.converged, iterations=self.passes, num_matvecs=self.num_matvecs,
                             alpha=np.zeros(0), beta=np.zeros(0),
                             rows=(self.space.lo, self.space.hi) if self.space.sharded else None,
                             method="block", block_size=self.block_size, data_passes=self.passes,
                             restarts=self.restarts, locked=len(self.locked_values),
                             checks=self.checks, complete=self.complete, max_basis=self.max_basis,
                             peak_basis=self.peak_rows,
                             guarantee=guarantee(self.block_size, self.checks, self.complete, self.deflated,
                                                 self.needless))


def block_lanczos(op: LinearOperator, k: int = 5, *, which: str = "largest", tol: float | None = None,
                  block_size: int = DEFAULT_BLOCK_SIZE, max_basis: int | None = None, maxiter: int | None = None,
                  seed: int = 0, v0: torch.Tensor | None = None, check: bool = True, check_size: int = 1,
                  callback: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> LanczosResult:
    """k extreme eigenpairs of the symmetric operator ``op``, right when eigenvalues repeat.

    Block Lanczos with full reorthogonalisation, thick restart with locking, and a completeness
    check (module docstring).

    Args:
        op: symmetric operator on float64 vectors of length ``op.size``; ``op.comm`` carries the
            ranks' decisions.
        k: number of eigenpairs wanted.
        which: ``largest`` (algebraic, default), ``smallest``, ``largest_magnitude`` or
            ``both_ends`` (⌈k/2⌉ largest and ⌊k/2⌋ smallest).
        tol: a pair is converged when its Ritz residual ≤ ``tol · max|θ|``; the same margin
            separates a missed copy from the k-th value in a check round. None: the default for
            the operator's compute dtype (:data:`~hpcspec.choices.DEFAULT_TOL`).
        block_size: vectors per data pass (b): multiplicity ≤ b is found by construction.
        max_basis: most vectors held at once, locked ones included (ARPACK's ``ncv``; default
            ``max(64, 2k + 4b)``, at least ``k + 3b``); memory per rank ``max_basis · P / R``.
        maxiter: most products (default ``max(1000, 100 k)``); the partial pairs are returned if
            it runs out, with ``converged`` or ``complete`` False.
        seed: seeds the start block and every fresh probe ((seed, index) only, never the ranks).
        v0: start vector or (P, j) block instead of random columns (completed with probes).
        check: run the completeness check (default); False stops once the k pairs converge.
        check_size: vectors per pass of a check round (default 1: a check costs at most the
            search's passes in products, not b times that).
        callback: ``callback(data_pass, wanted_values, residuals)`` after each pass.

    Returns:
        :class:`~hpcspec.solvers.lanczos.LanczosResult` with ``block_size``, ``data_passes``,
        ``restarts``, ``locked``, ``checks``, ``complete`` and ``guarantee`` filled in.
    """
    check_tol(tol)
    return BlockLanczos(op, k, which=which, tol=tol, block_size=block_size, max_basis=max_basis, maxiter=maxiter,
                        seed=seed, v0=v0, check=check, check_size=check_size, callback=callback).run()
