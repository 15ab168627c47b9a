"""Orthonormal blocks for block Lanczos: Gram–Schmidt against a held basis, fresh probes, and the
next block of the recurrence.

Every new block is orthogonalised against all held vectors twice (classical Gram–Schmidt, "twice
is enough"), then within itself column by column; a column that vanishes (an invariant subspace)
is replaced by a fresh probe. Vectors are this rank's rows of the operator's space
(:mod:`hpcspec.parallel.vectors`), so inner products are summed over ranks by ``space.sum``. The
dense algebra runs on one thread (:func:`one_thread`), so its bits do not depend on the thread count.
Also the basis and budget sizes a request gets by default.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from ..parallel.vectors import VectorSpace


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the solver's own dense algebra on one thread: a BLAS product splits its rows among the
    threads, and rows that fall to another kernel round differently, so the bits would depend on the
    thread count, which a resumed run may change. (The operator's products keep every thread.)"""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def orthogonalise(space: VectorSpace, vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Remove from the rows of ``vectors`` (in place) their components along the orthonormal rows
    of ``basis``, twice; return the summed coefficients (len(basis), len(vectors))."""
    total = torch.zeros(basis.shape[0], vectors.shape[0], dtype=torch.float64)
    if basis.shape[0] == 0:
        return total
    for _ in range(2):
        coefficients = space.sum(basis @ vectors.T)
        vectors -= coefficients.T @ basis
        total += coefficients
    return total


def fresh_block(space: VectorSpace, width: int, held: list[torch.Tensor], draw: Callable[[], torch.Tensor],
                start: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Up to ``width`` orthonormal rows orthogonal to the rows of every ``held`` tensor (each
    orthonormal, and orthogonal to the others; never concatenated, which would copy the basis):
    the ``start`` rows first, then probes from ``draw`` (this rank's rows of the next probe)."""
    block = torch.empty(width, space.local_size, dtype=torch.float64)
    count, candidates, attempts = 0, list(start or []), 0
    while count < width and attempts < 4 * width + 8:
        vector = candidates.pop(0) if candidates else draw()
        attempts += 1
        before = float(space.norms(vector))
        for basis in (*held, block[:count]):
            orthogonalise(space, vector[None], basis)
        norm = float(space.norms(vector))
        if norm > 1e-8 * before:
            block[count] = vector / norm
            count += 1
    return block[:count]


def next_block(space: VectorSpace, w: torch.Tensor, width: int, held: torch.Tensor, scale: float,
               draw: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, np.ndarray]:
    """Orthonormal rows X (``width`` of them) and R (width, len(w)) with ``w ≈ Rᵀ X``, for rows
    ``w`` already orthogonal to the ``held`` rows. A column that vanishes (below ``1e-12·scale``,
    an invariant subspace) is dropped and a fresh probe takes its place, with a zero row of R (no
    coupling)."""
    block = torch.empty(width, space.local_size, dtype=torch.float64)
    r = np.zeros((width, w.shape[0]))
    count = 0
    for j in range(w.shape[0]):
        if count == width:  # the whole space is spanned: what is left is rounding
            break
        vector = w[j].clone()
        before = float(space.norms(vector))
        r[:count, j] += orthogonalise(space, vector[None], block[:count])[:, 0].numpy()
        norm = float(space.norms(vector))
        if norm < 0.7 * before:  # cancellation: restore orthogonality to the held vectors too
            orthogonalise(space, vector[None], held)
            r[:count, j] += orthogonalise(space, vector[None], block[:count])[:, 0].numpy()
            norm = float(space.norms(vector))
        if norm > 1e-12 * max(scale, np.finfo(float).tiny):
            block[count] = vector / norm
            r[count, j] = norm
            count += 1
    if count < width:
        filler = fresh_block(space, width - count, [held, block[:count]], draw)
        block[count:count + filler.shape[0]] = filler
        count += filler.shape[0]
    return block[:count], r[:count]


def rotate_rows(rows: torch.Tensor, start: int, stop: int, shift: int, chunk: int = 1 << 16) -> None:
    """Rotate ``rows[start:stop]`` in place so that row ``start + shift`` comes first, a chunk of
    columns at a time (the transient copy stays ``(stop - start) × chunk`` numbers)."""
    if stop - start < 2 or shift % (stop - start) == 0:
        return
    for first in range(0, rows.shape[1], chunk):
        columns = slice(first, first + chunk)
        rows[start:stop, columns] = torch.roll(rows[start:stop, columns], -shift, dims=0)


# ------------------------------------------------------------------------------------ sizes
def default_max_basis(size: int, k: int, block_size: int) -> int:
    """``max_basis`` when none is given: at least 64 vectors and room for 2k + 4b (capped at P)."""
    return min(size, max(64, 2 * k + 4 * block_size))


def min_max_basis(size: int, k: int, block_size: int) -> int:
    """The smallest basis that can lock k pairs and still grow a check space of three blocks."""
    return min(size, k + 3 * block_size)


def default_maxiter(k: int) -> int:
    """Default product budget (products, not steps): generous, a safety net, not a tolerance."""
    return max(1000, 100 * k)


def checked_sizes(n: int, k: int, tol: float, block_size: int, max_basis: int | None, check_size: int,
                  maxiter: int | None) -> tuple[int, int, int]:
    """The block size, basis bound and product budget of a request on a size-``n`` operator, with
    the defaults filled in; ValueError for an argument that cannot work (checked in this order)."""
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if math.isnan(tol):
        raise ValueError("tol must be a number, got nan")
    b = min(block_size, n)
    floor = min_max_basis(n, k, b)
    basis = default_max_basis(n, k, b) if not max_basis else min(int(max_basis), n)
    if basis < floor:
        raise ValueError(f"max_basis = {max_basis} is too small for k = {k} and block_size = {b}: it must be at "
                         f"least k + 3 * block_size = {floor} (or 0 for the default {default_max_basis(n, k, b)})")
    if not isinstance(check_size, int) or not 1 <= check_size <= b:
        raise ValueError(f"check_size must be an integer between 1 and block_size = {b}, got {check_size!r}")
    budget = int(maxiter) if maxiter else default_maxiter(k)
    if budget < k:
        raise ValueError(f"maxiter ({budget}) must be at least k ({k})")
    return b, basis, budget


def as_block(v0: torch.Tensor, n: int) -> torch.Tensor:
    """A start vector (P,) or block (P, j) as a float64 (P, j) block; ValueError for another shape."""
    block = v0.to(torch.float64).reshape(n, -1) if v0.numel() % n == 0 else None
    if block is None or v0.shape[0] != n:
        raise ValueError(f"v0 must be a ({n},) vector or a ({n}, j) block, got shape {tuple(v0.shape)}")
    return block


class BasisBuffer:
    """The basis rows of a block solver (locked, active, pending) in one allocation that grows by
    doubling, from ``first`` rows up to ``max_basis``: memory per rank stays ``max_basis · P / R``."""

    def __init__(self, local_size: int, max_basis: int, first: int) -> None:
        self.data = torch.empty(0, local_size, dtype=torch.float64)
        self.max_basis, self.first = max_basis, first

    def ensure(self, rows: int, used: int) -> None:
        """Room for ``rows`` vectors, the first ``used`` kept; never beyond ``max_basis``."""
        if rows > self.max_basis:  # the solver sizes every block to fit: reaching this is a bug, not bad input
            raise RuntimeError(f"internal error: the basis would hold {rows} vectors, more than max_basis = "
                               f"{self.max_basis}")
        if rows > self.data.shape[0]:
            grown = torch.empty(min(max(rows, 2 * self.data.shape[0], self.first), self.max_basis),
                                self.data.shape[1], dtype=torch.float64)
            grown[:used] = self.data[:used]
            self.data = grown
