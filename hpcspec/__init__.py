"""hpcspec: Hessian spectra of deep neural networks, distributed over MPI ranks.

Library use, with or without MPI::

    from hpcspec import HessianOperator, lanczos, slq, trace
    op = HessianOperator(model, "cross_entropy", (x, y), comm=None, batch_size=256)
    op = HessianOperator(model, nn.CrossEntropyLoss(label_smoothing=0.1), dataloader)  # any criterion, any batches
    result = lanczos(op, k=5)            # top-5 eigenpairs
    estimate = trace(op, matvecs=100)    # trace with a standard error
    quadrature = slq(op, probes=4)       # spectral density by stochastic Lanczos quadrature
    ggn = GaussNewtonOperator(model, "cross_entropy", (x, y))   # the Gauss-Newton matrix, same solvers

PyHessian's calls (:mod:`hpcspec.analyses.pyhessian`)::

    h = hpcspec.hessian(model, criterion, dataloader=loader)   # or data=(x, y)
    eigenvalues, eigenvectors = h.eigenvalues(top_n=5)
    values = h.trace()                                         # mean(values) estimates tr(H)
    eigen_list_full, weight_list_full = h.density()
"""

from .errors import ConfigError, InputError
from .analyses.pyhessian import Hessian, hessian
from .curvature.base import BatchCurvature, CurvatureOperator
from .curvature.ggn import GaussNewtonOperator
from .curvature.operator import HessianOperator
from .parallel.comm import Communicator, SingleProcess, world
from .problem.data import Shard, load_shard, shard_range
from .problem.losses import Loss
from .problem.pairing import logits_of
from .problem.params import ParamLayout
from .solvers import (
    DensityResult,
    LanczosResult,
    PowerResult,
    TraceResult,
    block_lanczos,
    lanczos,
    power_iteration,
    slq,
    trace,
)
from .solvers.matrix import MatrixOperator
from .solvers.operator import LinearOperator
from .version import __version__

__all__ = ["__version__", "BatchCurvature", "Communicator", "ConfigError", "CurvatureOperator", "DensityResult",
           "GaussNewtonOperator", "Hessian", "HessianOperator", "InputError", "LanczosResult", "LinearOperator",
           "Loss", "MatrixOperator", "ParamLayout", "PowerResult", "Shard", "SingleProcess", "TraceResult", "block_lanczos", "hessian", "lanczos",
           "load_shard", "logits_of", "power_iteration", "shard_range", "slq", "trace", "world"]
