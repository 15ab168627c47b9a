"""Run under mpirun by test_sharded.py: sharded Lanczos and SLQ against an operator with a known
spectrum, against the replicated solvers, and through a checkpoint written on another rank count.

Usage: python mpi_sharded.py OUT.json [save DIR | load DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from hpcspec.checkpoint.store import CheckpointStore
from hpcspec.parallel.comm import world
from hpcspec.solvers.density import SLQ
from hpcspec.solvers.lanczos import Lanczos
from hpcspec.solvers.matrix import MatrixOperator

SIZE, K, STEPS, PROBES = 301, 4, 30, 3


def known_spectrum() -> tuple[torch.Tensor, np.ndarray]:
    """Q diag(λ) Qᵀ with a few outliers over a bulk, as a trained network's Hessian has."""
    gen = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(SIZE, SIZE, generator=gen, dtype=torch.float64))
    values = np.concatenate([[50.0, 30.0, 20.0, 12.0], np.linspace(-1.0, 3.0, SIZE - 4)])
    return (q * torch.from_numpy(values)) @ q.T, np.sort(values)[::-1]


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "solve"
    comm = world("mpi")
    matrix, exact = known_spectrum()
    sharded = MatrixOperator(matrix, comm, shard_vectors=True)
    record: dict = {"rank": comm.rank, "size": comm.size, "lo": sharded.space.lo, "hi": sharded.space.hi}
    if mode == "solve":
        replicated = Lanczos(MatrixOperator(matrix), K, tol=1e-12).run()
        solver = Lanczos(sharded, K, tol=1e-12)
        found = solver.run()
        rows = found.eigenvectors if found.rows is not None else found.eigenvectors[sharded.space.lo:sharded.space.hi]
        record["eigen_error"] = float(np.max(np.abs(found.eigenvalues - exact[:K]) / exact[:K]))
        record["vector_difference"] = float((rows - replicated.eigenvectors[sharded.space.lo:sharded.space.hi]).abs().max())
        record["basis_rows"] = list(solver.basis.rows.shape)
        density = SLQ(sharded, probes=PROBES, steps=STEPS)
        reference = SLQ(MatrixOperator(matrix), probes=PROBES, steps=STEPS).run()
        result = density.run()
        record["alpha_difference"] = float(np.max(np.abs(result.alpha - reference.alpha)) / np.max(np.abs(reference.alpha)))
        record["beta_difference"] = float(np.max(np.abs(result.beta - reference.beta)) / np.max(np.abs(reference.beta)))
        record["slq_basis_shape"] = list(density.basis.shape)
    else:  # stop a sharded Lanczos halfway on one rank count, go on with another
        store = CheckpointStore(Path(sys.argv[3]), comm)
        solver = Lanczos(sharded, K, tol=1e-12)
        if mode == "save":
            for _ in range(8):  # well before convergence
                solver.step()
            assert not solver.done
            store.save(solver.state_dict(), SIZE, {})
        else:
            loaded = store.load()
            record["slice"] = [loaded.state["basis"].lo, loaded.state["basis"].hi]
            solver.load_state_dict(loaded.state)
            found = solver.run()
            uninterrupted = Lanczos(MatrixOperator(matrix), K, tol=1e-12).run()
            record["alpha_difference"] = float(np.max(np.abs(found.alpha - uninterrupted.alpha)) / np.max(np.abs(uninterrupted.alpha)))
            record["eigen_error"] = float(np.max(np.abs(found.eigenvalues - exact[:K]) / exact[:K]))
    records = comm.allgather_object(record)
    if comm.rank == 0:
        out.write_text(json.dumps(records))


if __name__ == "__main__":
    main()
