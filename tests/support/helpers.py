"""Ground truth for the tests: dense float64 Hessians and small problems with known answers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import spawn
import torch
from torch import nn
from torch.func import functional_call

from hpcspec.problem.losses import get_loss
from hpcspec.problem.params import ParamLayout

REPO = Path(__file__).resolve().parents[2]


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def dense_hessian(model: nn.Module, loss_name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇² of ``criterion(model(X), Y)`` with reduction="mean" over the whole data set at once,
    by ``torch.func.hessian`` — independent of hpcspec's batching, sums and reductions."""
    layout = ParamLayout.of(model)
    criterion = {"cross_entropy": nn.functional.cross_entropy,
                 "mse": lambda out, t: nn.functional.mse_loss(out, t.reshape(out.shape))}[loss_name]

    def mean_loss(flat: torch.Tensor) -> torch.Tensor:
        params = dict(zip(layout.names, layout.split(flat)))
        return criterion(functional_call(model, params, (x,)), y)

    assert get_loss(loss_name)  # the name is one hpcspec knows
    return torch.func.hessian(mean_loss)(flat_params(model).double())


def dense_ggn(model: nn.Module, loss_name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Jᵀ H_out J / C over the whole data set, from torch's dense Jacobian and output Hessian."""
    loss = get_loss(loss_name)
    params = [p for p in model.parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    shapes = [p.shape for p in params]

    def output(vector: torch.Tensor) -> torch.Tensor:
        pieces, begin = {}, 0
        for (name, p), shape in zip(model.named_parameters(), shapes):
            pieces[name] = vector[begin:begin + p.numel()].reshape(shape)
            begin += p.numel()
        return torch.func.functional_call(model, pieces, (x,))

    z = output(flat).detach()
    jacobian = torch.autograd.functional.jacobian(output, flat).reshape(z.numel(), -1)
    h_out = torch.autograd.functional.hessian(lambda out: loss.sum(out.reshape(z.shape), y), z.reshape(-1))
    return jacobian.T @ h_out @ jacobian / float(loss.count(y))


def mlp(seed: int = 0, sizes: tuple[int, ...] = (5, 7, 3)) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers).double()


def classification_data(n: int = 37, features: int = 5, classes: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=gen)
    return x, y


def regression_data(n: int = 41, features: int = 6, outputs: int = 2, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen, dtype=torch.float64)
    y = torch.randn(n, outputs, generator=gen, dtype=torch.float64)
    return x, y


def top_eigenvalues(matrix: torch.Tensor, k: int) -> np.ndarray:
    return np.linalg.eigvalsh(matrix.numpy())[::-1][:k].copy()


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.maximum(np.abs(np.asarray(b)), 1e-300)))


def mpirun_available() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return shutil.which("mpirun") is not None


def mpirun(n: int, args: list[str], cwd: Path, timeout: float = 120,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``mpirun -n n python ARGS`` with one thread per rank and a timeout, so a deadlock fails the
    test instead of hanging; the timeout (or any interruption) kills the ranks too (:mod:`spawn`)."""
    env = spawn.one_thread_env(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",
               PYTHONPATH=os.pathsep.join([str(REPO), str(cwd), os.environ.get("PYTHONPATH", "")]), **(env or {}))
    command = ["mpirun", "--oversubscribe", "-n", str(n), sys.executable, *args]
    return spawn.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
