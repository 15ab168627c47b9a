"""Run under mpirun by test_block_lanczos.py: the block solver on linear MSE models (repeated
eigenvalues) over a data set sharded unevenly across ranks, sharded and replicated vectors.

Usage: python mpi_block.py OUT.json (one JSON line per rank, appended in rank order).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from helpers import dense_hessian, regression_data  # noqa: E402

from hpcspec.curvature.operator import HessianOperator  # noqa: E402
from hpcspec.parallel.comm import world  # noqa: E402
from hpcspec.problem.data import shard_range  # noqa: E402
from hpcspec.solvers.block_lanczos import BlockLanczos  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    comm = world("mpi")
    cases = []
    for outputs, bias, shard in [(3, True, True), (3, False, False), (2, True, True)]:
        x, y = regression_data(n=43, features=5, outputs=outputs)
        torch.manual_seed(1)
        model = nn.Linear(5, outputs, bias=bias).double()
        matrix = dense_hessian(model, "mse", x, y)
        values, vectors = torch.linalg.eigh(matrix)
        exact = values.numpy()[::-1]
        lo, hi = shard_range(len(x), comm.rank, comm.size)
        op = HessianOperator(model, "mse", (x[lo:hi], y[lo:hi]), comm=comm, batch_size=8, method="double_backward",
                             shard_vectors=shard)
        k = 2 * outputs
        solver = BlockLanczos(op, k, block_size=2, max_basis=k + 6, tol=1e-10)
        result = solver.run()
        space = op.space
        top = vectors[:, (values - float(exact[0])).abs() <= 1e-7 * float(exact[0])][space.lo:space.hi]
        found = result.eigenvectors[:, :outputs]
        found = found if result.rows is not None else found[space.lo:space.hi]
        # principal angle from slices: ‖(I − UUᵀ)V‖ with the inner products summed over ranks
        q = space.gather(found.contiguous())
        q, _ = torch.linalg.qr(q)
        u = space.gather(top.contiguous())
        sin = float(torch.linalg.matrix_norm(q - u @ (u.T @ q), ord=2))
        cases.append({"outputs": outputs, "bias": bias, "sharded": shard,
                      "eigen_error": float(np.max(np.abs(result.eigenvalues - exact[:k]) / exact[:k])),
                      "sin_angle": sin, "complete": bool(result.complete), "max_basis": solver.max_basis,
                      "peak_basis": result.peak_basis, "rows_held": list(result.eigenvectors.shape[:1]),
                      "slice": [space.hi - space.lo] if result.rows is not None else [op.size]})
    lines = comm.allgather_object(json.dumps({"rank": comm.rank, "cases": cases}))
    if comm.rank == 0:
        out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
