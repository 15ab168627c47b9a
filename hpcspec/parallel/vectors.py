"""Where long vectors live: replicated on every rank, or sharded so each rank holds one slice.

A Krylov basis of m vectors of P float64 numbers is m·P·8 bytes; replicated on every rank it is
the memory wall of a large run (docs/performance.md, "Sharded vectors"). A :class:`Sharded` space gives rank r the contiguous
slice ``[lo, hi) = slice_bounds(P, r, R)`` of every long vector, so the basis costs m·P/R per rank.
Only the vector an operator is applied to is ever whole: the solver gathers it (one allgather of P
numbers), every rank multiplies it on its own data shard, and the partial products are
reduce-scattered, so each rank receives only its slice of ``H·q``. Inner products become a local
product over the slice plus one allreduce of the few resulting scalars.

:class:`Replicated` is the same interface with whole vectors and no communication: the solvers are
written once against :class:`VectorSpace`, and a replicated run gives bitwise the numbers it gave
before sharding existed. The checkpoint store uses the same :func:`slice_bounds`, so a sharded
solver's state is written by each rank without any gathering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .comm import Communicator
from .finite import check_operator_product, checked_apply


def slice_bounds(size: int, rank: int, ranks: int) -> tuple[int, int]:
    """The contiguous slice ``[lo, hi)`` of a length-``size`` vector that ``rank`` of ``ranks`` holds."""
    return rank * size // ranks, (rank + 1) * size // ranks


def all_bounds(size: int, ranks: int) -> list[tuple[int, int]]:
    """Every rank's slice of a length-``size`` vector, in rank order."""
    return [slice_bounds(size, rank, ranks) for rank in range(ranks)]


@dataclass(frozen=True)
class LocalSlice:
    """This rank's part ``[lo, hi)`` of a stack of long vectors of length ``size`` (last axis).

    A solver state holds one where its vectors are sharded; the checkpoint store then writes the
    values as they are, and reading back gives each rank its own slice (for the new rank count).
    """

    values: torch.Tensor
    lo: int
    hi: int
    size: int

    def __post_init__(self) -> None:
        if self.values.shape[-1] != self.hi - self.lo or not 0 <= self.lo <= self.hi <= self.size:
            raise ValueError(f"a slice [{self.lo}, {self.hi}) of {self.size} cannot hold values of shape "
                             f"{tuple(self.values.shape)}")


class Operator(Protocol):
    """The part of :class:`~hpcspec.solvers.operator.LinearOperator` a space needs."""

    size: int
    comm: Communicator
    num_matvecs: int
    checks_products: bool

    def apply(self, vectors: torch.Tensor) -> torch.Tensor: ...

    def apply_sharded(self, vectors: torch.Tensor, bounds: list[tuple[int, int]]) -> torch.Tensor: ...


class VectorSpace(Protocol):
    """How a solver stores, multiplies and measures long vectors (rows of the local slice)."""

    size: int
    lo: int
    hi: int
    sharded: bool

    @property
    def local_size(self) -> int: ...

    def local(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a full (P, ...) tensor."""

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The full (P, ...) tensor from every rank's rows (collective when sharded)."""

    def apply(self, op: Operator, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of ``op @ full`` for a whole (P,) vector or (P, k) block."""

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        """Sum over ranks of per-slice partial inner products (float64; identity when replicated)."""

    def norms(self, rows: torch.Tensor) -> torch.Tensor:
        """Euclidean norms of whole vectors stored as the rows (..., local_size) of a tensor."""

    def export(self, values: torch.Tensor) -> Any:
        """A state value for local vectors (..., local_size): the tensor, or a :class:`LocalSlice`."""

    def take(self, value: Any) -> torch.Tensor:
        """Local vectors (..., local_size) from a state value saved by either kind of space."""

    def signs(self, columns: torch.Tensor) -> torch.Tensor:
        """Per column of a local (n, k) block, the sign of the column's entry of largest magnitude."""


class Replicated:
    """Every rank holds whole vectors; no communication (the vectors are identical everywhere)."""

    sharded = False

    def __init__(self, size: int, comm: Communicator | None = None) -> None:
        self.size, self.lo, self.hi, self.comm = size, 0, size, comm

    @property
    def local_size(self) -> int:
        return self.size

    def local(self, full: torch.Tensor) -> torch.Tensor:
        return full

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        return local

    def apply(self, op: Operator, full: torch.Tensor) -> torch.Tensor:
        return checked_apply(op, full)

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        return partial

    def norms(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(rows, dim=-1)

    def export(self, values: torch.Tensor) -> Any:
        return values

    def take(self, value: Any) -> torch.Tensor:
        if not isinstance(value, LocalSlice):
            return value
        if (value.lo, value.hi) == (0, self.size):
            return value.values
        if self.comm is None:
            raise ValueError("a sharded state needs the communicator to be made whole again")
        # saved by a sharded run, resumed replicated: every rank contributes its slice
        rows = value.values.movedim(-1, 0).contiguous()
        return self.comm.allgather_rows(rows, all_bounds(self.size, self.comm.size)).movedim(0, -1).contiguous()

    def signs(self, columns: torch.Tensor) -> torch.Tensor:
        signs = torch.sign(columns.gather(0, columns.abs().argmax(dim=0, keepdim=True)))[0]
        return torch.where(signs == 0, torch.ones_like(signs), signs)


class Sharded:
    """Rank r holds rows ``bounds[r]`` of every long vector (see the module docstring): by default
    ``slice_bounds(P, r, R)``; a pipelined run passes its own (each rank's share of its stage's
    range, :func:`stage_bounds`), which must tile ``[0, P)`` in rank order."""

    sharded = True

    def __init__(self, comm: Communicator, size: int, bounds: list[tuple[int, int]] | None = None) -> None:
        self.comm, self.size = comm, size
        self.bounds = all_bounds(size, comm.size) if bounds is None else list(bounds)
        if len(self.bounds) != comm.size or any(a[1] != b[0] for a, b in zip(self.bounds, self.bounds[1:])) \
                or self.bounds[0][0] != 0 or self.bounds[-1][1] != size:
            raise ValueError(f"slices {self.bounds} do not tile [0, {size}) over {comm.size} ranks in rank order")
        self.lo, self.hi = self.bounds[comm.rank]

    @property
    def local_size(self) -> int:
        return self.hi - self.lo

    def local(self, full: torch.Tensor) -> torch.Tensor:
        return full[self.lo:self.hi]

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        return self.comm.allgather_rows(local.contiguous(), self.bounds)

    def apply(self, op: Operator, full: torch.Tensor) -> torch.Tensor:
        rows = op.apply_sharded(full, self.bounds)
        check_operator_product(op, full, rows, self.comm, shared=False)  # each rank holds other rows: agree
        return rows

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        return self.comm.allreduce_sum_(partial.contiguous())

    def norms(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.sum((rows * rows).sum(dim=-1)))

    def export(self, values: torch.Tensor) -> Any:
        return LocalSlice(values, self.lo, self.hi, self.size)

    def take(self, value: Any) -> torch.Tensor:
        if isinstance(value, LocalSlice):
            if (value.lo, value.hi, value.size) != (self.lo, self.hi, self.size):
                raise ValueError(f"state slice [{value.lo}, {value.hi}) of {value.size} given to rank "
                                 f"{self.comm.rank}, which holds [{self.lo}, {self.hi}) of {self.size}")
            return value.values
        return value[..., self.lo:self.hi].clone()  # a whole vector saved by a replicated run

    def signs(self, columns: torch.Tensor) -> torch.Tensor:
        """Ties between ranks go to the lowest rank, as argmax on the whole column would."""
        k = columns.shape[1]
        if len(columns):
            index = columns.abs().argmax(dim=0)
            best = columns.gather(0, index[None, :])[0]
            local = np.stack([best.abs().numpy(), torch.sign(best).numpy()])
        else:
            local = np.stack([np.full(k, -1.0), np.zeros(k)])
        found = np.stack(self.comm.allgather_object(local))  # (R, 2, k): tiny
        owner = np.argmax(found[:, 0, :], axis=0)  # first maximum = lowest rank
        signs = torch.from_numpy(found[owner, 1, np.arange(k)].copy())
        return torch.where(signs == 0, torch.ones_like(signs), signs)


def stage_bounds(offsets: list[int], shards: int) -> list[tuple[int, int]]:
    """Every rank's slice when stage s holds ``[offsets[s], offsets[s+1])`` of the flat vector and
    rank ``s·D + d`` the d-th of D pieces of it (:mod:`hpcspec.parallel.grid`): in rank order they
    tile ``[0, P)``."""
    return [(begin + lo, begin + hi) for begin, end in zip(offsets[:-1], offsets[1:])
            for lo, hi in all_bounds(end - begin, shards)]


def make_space(comm: Communicator, size: int, shard: bool) -> VectorSpace:
    """Sharded over ``comm`` when asked and there is more than one rank, else replicated."""
    return Sharded(comm, size) if shard and comm.size > 1 else Replicated(size, comm)
