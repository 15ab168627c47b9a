"""The dense Hessian, built from an operator's products: ground truth for ``validate`` and tests.

``H = [H e_1, …, H e_P]``, the columns computed in blocks through the same distributed operator a
run uses (each rank contributes its shard's products; one reduction per block), so the dense matrix
is exactly the operator the estimators see. Only for models small enough: P² float64 numbers.
"""

from __future__ import annotations

import torch

from ..solvers.base import LinearOperator, ProgressHook

#: Largest P for which ``dense_hessian`` is allowed by default (P² float64 = 800 MB at 10,000).
MAX_DENSE_PARAMS = 10_000


def dense_hessian(op: LinearOperator, block_size: int = 128, max_params: int = MAX_DENSE_PARAMS,
                  progress: ProgressHook | None = None) -> torch.Tensor:
    """The symmetrised (P, P) float64 matrix of ``op`` (collective: every rank calls it);
    ``progress`` is called with the columns done after every block (P products in all).

    Symmetrised as (H + Hᵀ)/2: the products are exact up to rounding, so this removes only
    rounding asymmetry and gives ``numpy.linalg.eigh`` a symmetric input.
    """
    n = op.size
    if n > max_params:
        raise ValueError(f"a dense Hessian of {n:,} parameters needs {8 * n * n / 2**30:.1f} GiB; "
                         f"the limit is {max_params:,} parameters")
    matrix = torch.empty(n, n, dtype=torch.float64)
    for begin in range(0, n, block_size):
        end = min(n, begin + block_size)
        identity = torch.zeros(n, end - begin, dtype=torch.float64)
        identity[torch.arange(begin, end), torch.arange(end - begin)] = 1.0
        matrix[:, begin:end] = op.apply(identity)
        if progress is not None:
            progress(end)
    return (matrix + matrix.T) / 2
