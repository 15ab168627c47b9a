"""``xtrace`` (Epperly, Tropp & Webber 2024, "XTrace")

s = matvecs/2 probes Ω serve as both sketch and test vectors. With ``Y = HΩ = QR`` and
``Q_(i)`` the orthonormal basis of Y without column i, each leave-one-out estimate
``tᵢ = tr(Q_(i)ᵀHQ_(i)) + ωᵢᵀ(I−Q_(i)Q_(i)ᵀ)H(I−Q_(i)Q_(i)ᵀ)ωᵢ`` is unbiased (ωᵢ is independent
of Q_(i)) and the estimate is their mean. ``samples``: ``tᵢ − tr(QᵀHQ)``; ``deflated``:
``tr(QᵀHQ)`` of the full sketch. The standard error treats the tᵢ as independent, which they
are not (they share s − 2 sketch vectors); it is the paper's error estimate, and it can be
optimistic (benchmarks/trace_accuracy.py measures its coverage).

How each ``tᵢ`` costs no extra product (derived here; the paper does the same with other algebra):
``range(Y_(−i)) = Q·range(R_(−i))`` and the vector of R^s orthogonal to the other columns of R is
``vᵢ = R^{−T} eᵢ`` (row i of R^{−1}), so ``Q_(i)Q_(i)ᵀ = QQᵀ − qᵢqᵢᵀ`` with ``qᵢ = Q sᵢ``,
``sᵢ = vᵢ/‖vᵢ‖``. With ``C = QᵀHQ``, ``xᵢ = Qᵀωᵢ``, ``cᵢ = sᵢᵀxᵢ`` and ``uᵢ = xᵢ − cᵢ sᵢ`` (so that
``(I−Q_(i)Q_(i)ᵀ)ωᵢ = ωᵢ − Q uᵢ``)::

    tᵢ = tr C − sᵢᵀ C sᵢ  +  ωᵢᵀHωᵢ − uᵢᵀ(QᵀHωᵢ + (HQ)ᵀωᵢ) + uᵢᵀ C uᵢ,

where ``ωᵢᵀHωᵢ = diag(ΩᵀY)ᵢ``, ``QᵀHΩ = R`` and ``(HQ)ᵀΩ = ZᵀΩ`` with ``Z = HQ`` (equal for a
symmetric H; using both keeps the form exact for a slightly asymmetric float32 operator). Only
s×s matrices are formed after the two passes. With Gaussian probes the residual vector
``(I−Q_(i)Q_(i)ᵀ)ωᵢ`` is Gaussian in an (n − s + 1)-dimensional space, so rescaling it to squared
norm n − s + 1 (a uniform direction on that sphere, still E[vvᵀ] = I − Q_(i)Q_(i)ᵀ) keeps the
estimate unbiased and lowers its variance; Rademacher probes are used as drawn.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..base import LinearOperator
from ..probes import probe_block
from .base import PROBE_STREAM, RANK_TOL


def xtrace_sketch(apply: Callable[[torch.Tensor], torch.Tensor], size: int, seed: int, s: int,
                  distribution: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first pass: ``Y = HΩ = QR`` for s probes Ω; returns Q, R and ``diag(ΩᵀY)`` (all the
    second pass needs of Y)."""
    omega = probe_block(size, seed, PROBE_STREAM, range(s), distribution)
    y = apply(omega)
    basis, r = torch.linalg.qr(y)
    return basis, r, (omega * y).sum(dim=0)       # ωᵢᵀHωᵢ: all the second pass needs of Y


def xtrace_estimates(op: LinearOperator, apply: Callable[[torch.Tensor], torch.Tensor], q: torch.Tensor,
                     r: torch.Tensor, diag: torch.Tensor, *, seed: int, s: int,
                     distribution: str) -> tuple[np.ndarray, float]:
    """The second pass: ``Z = HQ`` (one data pass of ``apply``) and the s leave-one-out estimates;
    returns the samples ``tᵢ − tr(QᵀHQ)`` and ``tr(QᵀHQ)`` (module docstring). The rank decision
    is rank 0's, broadcast."""
    n = op.size
    omega = probe_block(n, seed, PROBE_STREAM, range(s), distribution)
    z = apply(q)
    c = q.T @ z
    c = (c + c.T) / 2
    x = q.T @ omega                              # column i: Qᵀωᵢ
    cross = r + z.T @ omega                      # column i: QᵀHωᵢ + (HQ)ᵀωᵢ
    # sᵢ ∝ R^{−T} eᵢ: the direction of span(Q) that leaving ωᵢ out removes. R = UΣVᵀ gives
    # R^{−T} = U Σ^{−1} Vᵀ. If HΩ is rank deficient (rank H < s), every leave-one-out space still
    # contains range(HΩ) = range(H), and any null vector of Rᵀ is a valid choice for every i.
    u_r, sigma, vt_r = torch.linalg.svd(r)
    full_rank = bool(sigma[-1] > RANK_TOL * sigma[0])
    full_rank = op.comm.bcast_object(full_rank)
    if full_rank:
        directions = u_r @ (vt_r / sigma[:, None])
    else:
        directions = u_r[:, -1:].expand(s, s)
    directions = directions / torch.linalg.vector_norm(directions, dim=0)
    coefficient = (directions * x).sum(dim=0)    # cᵢ = sᵢᵀxᵢ
    u = x - directions * coefficient             # (I − Q_(i)Q_(i)ᵀ)ωᵢ = ωᵢ − Q uᵢ
    removed = (directions * (c @ directions)).sum(dim=0)
    residual = diag - (u * cross).sum(dim=0) + (u * (c @ u)).sum(dim=0)
    if distribution == "gaussian":
        norm2 = (omega * omega).sum(dim=0) - (x * x).sum(dim=0) + coefficient ** 2
        residual = residual * ((n - s + 1) / norm2.clamp_min(torch.finfo(torch.float64).tiny))
    return (residual - removed).numpy(), float(torch.trace(c))  # tᵢ − tr(C), tr(C)
