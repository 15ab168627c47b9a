"""hpcspec: Hessian spectra of deep neural networks, distributed over MPI ranks.

Library use, with or without MPI::

    from hpcspec import HessianOperator, lanczos, slq, trace
    op = HessianOperator(model, "cross_entropy", (x, y), comm=None, batch_size=256)
    result = lanczos(op, k=5)            # top-5 eigenpairs
    estimate = trace(op, matvecs=100)    # trace with a standard error
    quadrature = slq(op, probes=4)       # spectral density by stochastic Lanczos quadrature
"""

__version__ = "0.1.0"

from .errors import ConfigError, InputError  # noqa: E402
from .hessian.operator import HessianOperator  # noqa: E402
from .parallel.comm import Communicator, SingleProcess, world  # noqa: E402
from .problem.data import Shard, load_shard, shard_range  # noqa: E402
from .problem.params import ParamLayout  # noqa: E402
from .solvers import (  # noqa: E402
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
from .solvers.matrix import MatrixOperator  # noqa: E402

__all__ = ["Communicator", "ConfigError", "DensityResult", "HessianOperator", "InputError", "LanczosResult",
           "MatrixOperator", "ParamLayout", "PowerResult", "Shard", "SingleProcess", "TraceResult", "block_lanczos", "lanczos",
           "load_shard", "power_iteration", "shard_range", "slq", "trace", "world"]
