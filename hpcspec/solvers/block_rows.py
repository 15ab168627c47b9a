"""The rows of a block Krylov solver's basis buffer and their layout: locked | deflation | active |
pending, in one allocation bounded by ``max_basis`` (:class:`~hpcspec.solvers.block_basis.BasisBuffer`).

Why a layout of its own. Every vector the solver makes is orthogonalised against the *held* rows
(the locked eigenvectors and, in a check round, the deflation rows the search left) and never
reaches the operator; the active rows carry the projected matrix T; the pending block is the next
to be applied. Locking, thick restarts and the hand-over from the search to the check rebuild
these rows in place, a chunk of columns at a time, so the memory per rank stays ``max_basis · P / R``.
"""

from __future__ import annotations

import numpy as np
import torch

from .block_basis import BasisBuffer, rotate_rows
from .block_check import beyond, restart_priority, wanted_indices

#: Columns of the basis recombined at a time (bounds the transient memory).
CHUNK = 1 << 16


class BasisRows:
    """The row layout of :class:`~hpcspec.solvers.block_lanczos.BlockLanczos` (a mixin: the solver
    owns the counters ``nl``, ``nd``, ``m``, ``w``, the projected matrix ``T``, the ``coupling`` of the
    active rows to the deflation rows, and the locked values and residuals)."""

    buffer: BasisBuffer
    nl: int
    nd: int
    m: int
    w: int
    k: int
    which: str
    max_basis: int
    peak_rows: int
    T: np.ndarray
    coupling: np.ndarray
    locked_values: np.ndarray
    locked_residuals: np.ndarray
    breakdowns: int

    @property
    def _rows(self) -> torch.Tensor:
        return self.buffer.data

    def _ensure(self, rows: int) -> None:
        """Room for ``rows`` vectors in the buffer (the held rows kept)."""
        self.buffer.ensure(rows, self._held + self.m + self.w)
        self.peak_rows = max(self.peak_rows, rows)

    @property
    def _held(self) -> int:
        """Rows every new vector is orthogonalised against and the operator never sees: locked and deflation."""
        return self.nl + self.nd

    @property
    def buffer_rows(self) -> int:
        """Rows allocated for the basis (what memory the solver holds; ≤ ``max_basis``)."""
        return self._rows.shape[0]

    def _place(self, block: torch.Tensor) -> None:
        """Make ``block`` (rows, local) the pending block, after the locked and active rows."""
        start = self._held + self.m
        self._ensure(start + block.shape[0])
        self._rows[start:start + block.shape[0]] = block
        self.w = block.shape[0]

    def _recombine(self, theta: np.ndarray, s: np.ndarray, residuals: np.ndarray, *, lock: np.ndarray,
                   keep: np.ndarray) -> None:
        """Replace the active rows by the Ritz vectors ``lock`` (appended to the locked rows, before
        any deflation rows) and ``keep`` (the new active rows, T = diag θ), in place, a chunk of
        columns at a time."""
        held, m = self._held, self.m
        chosen = np.concatenate([lock, keep]).astype(int)
        coefficients = torch.from_numpy(np.ascontiguousarray(s[:, chosen].T))  # (len(chosen), m)
        active = self._rows[held:held + m]
        for start in range(0, active.shape[1], CHUNK):
            columns = slice(start, start + CHUNK)
            self._rows[held:held + len(chosen), columns] = coefficients @ active[:, columns]
        rotate_rows(self._rows, self.nl, held + len(lock), self.nd, CHUNK)  # the new locked rows first
        self.coupling = self.coupling.reshape(self.nd, m) @ s[:, keep.astype(int)]
        self.locked_values = np.concatenate([self.locked_values, theta[lock]])
        self.locked_residuals = np.concatenate([self.locked_residuals, residuals[lock]])
        self.nl, self.m, self.w = self.nl + len(lock), len(keep), 0
        self.T = np.diag(theta[keep])

    def _keep_search_basis(self, theta: np.ndarray, s: np.ndarray, residuals: np.ndarray, lock: np.ndarray, *,
                           bound: float) -> None:
        """At the end of the search: lock ``lock`` and keep the search's most wanted other Ritz
        vectors whose residual is at most ``bound`` (up to half the free basis) as deflation rows for
        the check (none after a breakdown).

        Why. The Ritz vectors Y of the search's Krylov space satisfy ``H Y = Y Θ + X Rᵀ`` (X its next
        block), so for an eigenvector z of H orthogonal to that space (a missed copy), z stays an
        exact eigenvector of H compressed to the complement of Y: a check round deflated against Y
        keeps every missed copy, with its eigenvalue, while the part of the spectrum the search
        resolved is gone. So the compressed top lies far below the k-th value and the round's
        length, set by that gap, is short. Only nearly converged Ritz vectors are kept (``bound`` =
        √tol · scale: a missed copy then loses at most about tol of itself to them), and X is
        not deflated: a copy that rounding has begun to pull into the search's space lies along the
        newest, unconverged directions, and deflating those would bend it out of the compressed
        operator's eigenvectors. After a breakdown (a fresh probe joined the search) the basis is no
        single Krylov space: the check is deflated against the locked pairs only."""
        room = (self.max_basis - self.nl - len(lock)) // 2
        if self.breakdowns or room <= 0:
            self._recombine(theta, s, residuals, lock=lock, keep=np.zeros(0, dtype=int))
            return
        locked = set(lock.tolist())
        keep = np.array([i for i in restart_priority(theta, self.which) if i not in locked and residuals[i] <= bound]
                        [:room], dtype=int)
        self._recombine(theta, s, residuals, lock=lock, keep=keep)
        self.nd, self.m, self.w = self.m, 0, 0
        self.coupling = np.zeros((self.nd, 0))

    def _drop_unwanted(self, tol: float) -> None:
        """Unlock the locked pairs that a missed copy pushed clearly out of the wanted k."""
        wanted = wanted_indices(self.locked_values, self.k, self.which)
        keep = np.zeros(self.nl, dtype=bool)
        keep[wanted] = True
        keep |= beyond(self.locked_values, self.locked_values[wanted], self.k, self.which, tol)
        rows = [*np.flatnonzero(keep), *range(self.nl, self._held)]  # the deflation rows follow the locked
        for new, old in enumerate(rows):
            if new != old:
                self._rows[new] = self._rows[old]
        self.locked_values, self.locked_residuals = self.locked_values[keep], self.locked_residuals[keep]
        self.nl = int(keep.sum())
