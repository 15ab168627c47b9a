"""hpcspec: Hessian spectra of deep neural networks, distributed over MPI ranks.

Library use, with or without MPI::

    from hpcspec import HessianOperator, lanczos
    op = HessianOperator(model, "cross_entropy", (x, y), comm=None, batch_size=256)
    result = lanczos(op, k=5)
"""

__version__ = "0.1.0"

from .comm import Communicator, SingleProcess, world  # noqa: E402
from .data import Shard, load_shard, shard_range  # noqa: E402
from .errors import ConfigError, InputError  # noqa: E402
from .operator import HessianOperator, MatrixOperator  # noqa: E402
from .params import ParamLayout  # noqa: E402
from .solvers import LanczosResult, lanczos  # noqa: E402

__all__ = ["Communicator", "ConfigError", "HessianOperator", "InputError", "LanczosResult", "MatrixOperator",
           "ParamLayout", "Shard", "SingleProcess", "lanczos", "load_shard", "shard_range", "world"]
