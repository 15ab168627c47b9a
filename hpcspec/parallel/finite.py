"""Every product is finite, or every rank stops at it with the same one line.

A NaN or an infinity in one Hessian-vector product (NaN weights, an overflowing loss, a model whose
output turns NaN on one rank after some products) poisons every later number: orthogonalisation
spreads it through the basis, and the small eigenproblem then fails deep in LAPACK on whichever
rank computes it. So each product is checked where it is made, before it is reduced: a rank
whose share is not finite says so, the ranks agree (one allreduce of one flag per rank, or
none where every rank holds the same numbers), and every rank raises
:class:`NonFiniteProduct` at the same point, naming the products and the ranks. A driver that
checkpoints at step boundaries keeps its last checkpoint: the failing step never completes.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .agree import AgreedInputError
from .comm import Communicator


class NonFiniteProduct(AgreedInputError):
    """A product held NaN or infinite values (raised on every rank together)."""


def _message(what: str, first: int, count: int, where: str | None) -> str:
    numbers = f"product {first} is" if count == 1 else f"products {first}–{first + count - 1} (one block) are"
    on, data = (f" on {where}", f"the data of {where}") if where else ("", "the data")
    return (f"{what} {numbers} not finite (NaN or inf){on}: the weights, {data} or the model's arithmetic (an "
            "overflow in a low precision?) give NaN or inf at these parameters; fix the cause, no tolerance or check "
            "can skip it")


def check_product(comm: Communicator | None, share: torch.Tensor | Sequence[torch.Tensor], *, first: int,
                  count: int, shared: bool, what: str = "Hessian-vector") -> None:
    """Raise :class:`NonFiniteProduct` on every rank unless every rank's ``share`` is finite.

    Args:
        comm: the ranks that must agree (None or one rank: no communication).
        share: this rank's part of the products (its partial sum before a reduction, or its rows).
        first, count: the products' numbers (1-based) and how many ``share`` holds.
        shared: whether every rank holds the same ``share`` (then the verdict needs no collective).
        what: the operator's products in words.
    """
    shares = [share] if isinstance(share, torch.Tensor) else share
    bad = not all(bool(torch.isfinite(part).all()) for part in shares)
    if shared or comm is None or comm.size == 1:
        if bad:
            raise NonFiniteProduct(_message(what, first, count, None))
        return
    flags = torch.zeros(comm.size, dtype=torch.float64)
    flags[comm.rank] = float(bad)
    ranks = [rank for rank, flag in enumerate(comm.allreduce_sum_(flags).tolist()) if flag]
    if ranks:
        where = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
        raise NonFiniteProduct(_message(what, first, count, where))


def check_operator_product(op: Any, vectors: torch.Tensor, result: torch.Tensor, comm: Communicator | None, *,
                           shared: bool) -> None:
    """:func:`check_product` for the product ``result = op · vectors`` of any operator, numbered by
    its ``num_matvecs``; nothing for an operator that checks its own (``op.checks_products``)."""
    if op.checks_products:
        return
    count = 1 if vectors.ndim == 1 else vectors.shape[1]
    done = int(op.num_matvecs)
    check_product(comm, result, first=done - count + 1, count=count, shared=shared, what="operator")


def checked_apply(op: Any, vectors: torch.Tensor) -> torch.Tensor:
    """``op.apply(vectors)``: a whole product, the same on every rank, checked (no collective)."""
    result = op.apply(vectors)
    check_operator_product(op, vectors, result, op.comm, shared=True)
    return result
