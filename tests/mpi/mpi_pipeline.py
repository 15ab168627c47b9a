"""Run under mpirun by test_pipeline.py: the pipelined operator (model.stages = S over S·D ranks)
against the single-rank operator on the whole data, for an MLP, a transformer and a ResNet.

Every rank builds the whole model from the seed, keeps its stage, and takes data shard d (uneven
shards, micro-batches of 3 with a short last one). Each rank also builds the one-rank
:class:`HessianOperator` on the whole data set (small models) as the reference, and compares its
own slice of H·v (one vector, a block of two), the gradient, and the top-k / trace / SLQ numbers.

Usage: python mpi_pipeline.py OUT.json STAGES[:PLACEMENT] [save DIR | load DIR | torch]

PLACEMENT (``model.placement``, default pipe): which launcher rank takes which (stage, shard).

``torch``: the products and the solvers of the MLP and the transformer on the torch.distributed
backend (gloo on CPU; launched by torchrun): its ``new_group`` sub-communicators and ``send``/``recv``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from hpcspec.checkpoint.store import CheckpointStore
from hpcspec.curvature.operator import HessianOperator
from hpcspec.curvature.pipeline import pipelined
from hpcspec.parallel.comm import SingleProcess, world
from hpcspec.parallel.grid import make_grid
from hpcspec.parallel.vectors import slice_bounds
from hpcspec.problem.models.mlp import MLP
from hpcspec.problem.models.resnet import ResNet
from hpcspec.problem.models.transformer import TransformerLM
from hpcspec.solvers.density import SLQ
from hpcspec.solvers.lanczos import Lanczos
from hpcspec.solvers.trace import TraceEstimator


def problem(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A small float64 model and its data (the same on every rank: seeded)."""
    torch.manual_seed(3)
    if name == "mlp":
        model = MLP(5, 3, (6, 5, 4), "tanh")
        x, y = torch.randn(13, 5), torch.randint(0, 3, (13,))
    elif name == "transformer":
        model = TransformerLM(7, 6, embed=8, layers=2, heads=2)
        x, y = torch.randint(0, 7, (11, 6)), torch.randint(0, 7, (11, 6))
    else:
        model = ResNet(1, in_channels=2, num_classes=3, width=2)
        x, y = torch.randn(9, 2, 5, 5), torch.randint(0, 3, (9,))
    return model.double(), x.double() if x.dtype.is_floating_point else x, y


def shard(x: torch.Tensor, y: torch.Tensor, d: int, shards: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Data shard d of D: the first shard one sample short of an even split (uneven on purpose)."""
    cuts = [0] + [max(0, (i * len(y)) // shards - (1 if i < shards else 0)) for i in range(1, shards)] + [len(y)]
    lo, hi = cuts[d], cuts[d + 1]
    return x[lo:hi], y[lo:hi]


def main() -> None:
    out, (stages, _, placement) = Path(sys.argv[1]), sys.argv[2].partition(":")
    stages, placement = int(stages), placement or "pipe"
    mode = sys.argv[3] if len(sys.argv) > 3 else "products"
    comm = world("torch" if mode == "torch" else "mpi")
    grid = make_grid(comm, stages, placement)
    record: dict = {"rank": comm.rank, "stage": grid.stage, "shard": grid.shard, "order": grid.world.rank,
                    "communicator": comm.description}
    if mode in ("products", "torch"):
        for name in ("mlp", "transformer", "resnet") if mode == "products" else ("mlp", "transformer"):
            model, x, y = problem(name)
            reference = HessianOperator(model, "cross_entropy", (x, y), SingleProcess(), batch_size=4,
                                        method="double_backward")
            op = pipelined(model, grid, "cross_entropy", shard(x, y, grid.shard, grid.shards), batch_size=3)
            lo, hi = op.space.lo, op.space.hi
            gen = torch.Generator().manual_seed(11)
            vectors = torch.randn(op.size, 2, generator=gen, dtype=torch.float64)
            exact = reference.apply(vectors)
            scale = float(exact.abs().max())
            one = op.space.apply(op, vectors[:, 0].contiguous())
            block = op.space.apply(op, vectors)
            record[f"{name}_hv"] = float((one - exact[lo:hi, 0]).abs().max()) / scale
            record[f"{name}_block"] = float((block - exact[lo:hi]).abs().max()) / scale
            record[f"{name}_whole"] = float((op.apply(vectors) - exact).abs().max()) / scale
            loss, gradient = op.loss_and_gradient()
            loss_ref, gradient_ref = reference.loss_and_gradient()
            record[f"{name}_loss"] = abs(loss - loss_ref)
            record[f"{name}_gradient"] = float((gradient - gradient_ref).abs().max())
            record[f"{name}_bubble"] = op.bubble
            if name == "mlp":  # the solvers on the pipelined space against the one-rank solvers
                top, top_ref = Lanczos(op, 3, tol=1e-13).run(), Lanczos(reference, 3, tol=1e-13).run()
                record["top_k"] = float(np.max(np.abs(top.eigenvalues - top_ref.eigenvalues)
                                               / np.abs(top_ref.eigenvalues)))
                trace = TraceEstimator(op, method="hutchinson", matvecs=6).run()
                trace_ref = TraceEstimator(reference, method="hutchinson", matvecs=6).run()
                record["trace"] = abs(trace.estimate - trace_ref.estimate) / abs(trace_ref.estimate)
                slq, slq_ref = SLQ(op, probes=2, steps=12).run(), SLQ(reference, probes=2, steps=12).run()
                record["slq_alpha"] = float(np.max(np.abs(slq.alpha - slq_ref.alpha)) / np.max(np.abs(slq_ref.alpha)))
                record["slq_beta"] = float(np.max(np.abs(slq.beta - slq_ref.beta)) / np.max(np.abs(slq_ref.beta)))
                record["slice"] = [lo, hi]
                record["default_slice"] = list(slice_bounds(op.size, comm.rank, comm.size))
    else:  # stop a pipelined Lanczos halfway, resume it from the checkpoint on the same grid
        model, x, y = problem("transformer")
        op = pipelined(model, grid, "cross_entropy", shard(x, y, grid.shard, grid.shards), batch_size=3)
        store = CheckpointStore(Path(sys.argv[4]), comm)
        store.bounds = op.space.bounds
        solver = Lanczos(op, 3, tol=1e-13)
        if mode == "save":
            for _ in range(6):
                solver.step()
            store.save(solver.state_dict(), op.size, {})
        else:
            solver.load_state_dict(store.load().state)
        found = solver.run()
        record["values"] = found.eigenvalues.tolist()
        record["alpha"] = np.asarray(found.alpha).tolist()
    records = comm.allgather_object(record)
    if comm.rank == 0:
        out.write_text(json.dumps(records))
    if mode == "torch":
        comm.close()  # leave the gloo group together (see TorchDistributedCommunicator.close)


if __name__ == "__main__":
    main()
