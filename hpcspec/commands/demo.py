"""The default job's problem as a library call: the digits MLP, briefly trained, and its operator.

Tests and benchmarks measure the estimators on exactly the network ``python -m hpcspec`` analyses
(hidden (32, 32), tanh, 3,466 parameters, 100 full-batch Adam steps at lr 0.01), so the figures in
the README and docs/ are reproducible from one function.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..curvature.fullbatch import train_full_batch
from ..curvature.operator import HessianOperator
from ..parallel.comm import Communicator, SingleProcess
from ..problem.data import load_shard
from ..problem.models import build_model


def digits_mlp_operator(comm: Communicator | None = None, *, dtype: torch.dtype = torch.float64,
                        train_steps: int = 100, lr: float = 0.01, seed: int = 0, hidden: tuple[int, ...] = (32, 32),
                        method: str = "double_backward", batch_size: int = 256) -> HessianOperator:
    """The Hessian operator of the default job's trained MLP on this rank's shard of digits.

    Training runs in float64 whatever ``dtype`` is, so the float32 operator is the same network
    rounded to float32 (what ``--dtype float32`` analyses after ``--train-steps``).
    """
    comm = comm or SingleProcess()
    shard = load_shard("digits", comm.rank, comm.size)
    model = build_model("mlp", input_shape=(1, 8, 8), output_dim=10,
                        cfg_model=ModelConfig(hidden=hidden, activation="tanh"), seed=seed)
    model = model.to(torch.float64)
    if train_steps:
        trainer = HessianOperator(model, "cross_entropy", shard, comm, batch_size=batch_size, method=method)
        train_full_batch(trainer, train_steps, lr)
    return HessianOperator(model.to(dtype), "cross_entropy", shard, comm, batch_size=batch_size, method=method)
