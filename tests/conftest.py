import shutil
import tempfile

import pytest
import torch

from helpers import mpirun_available
from spawn import reap_children  # noqa: F401  (autouse: no launched process outlives its test)


def pytest_collection_modifyitems(config, items):
    if mpirun_available():
        return
    skip = pytest.mark.skip(reason="mpi4py or mpirun not installed")
    for item in items:
        if "mpi" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fixed_threads():
    """Tests compare bits; keep the thread count fixed within each test."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _own_launcher_tmpdir(monkeypatch):
    """Each test's launches keep their Open MPI session directories in a fresh folder.

    An mpirun that is SIGKILLed (the restart tests do it on purpose) leaves ``ompi.<host>.<pid>``
    with its PMIx socket behind; a later mpirun that gets the same PID cannot bind its socket and
    fails with "The PMIx server's listener thread failed to start" (exit 213) before any rank runs.
    The path stays short: a Unix socket path has a 108-byte limit."""
    folder = tempfile.mkdtemp(prefix="hs-")
    monkeypatch.setenv("TMPDIR", folder)
    yield
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def digits_problem():
    """The default job's trained digits MLP (3,466 parameters): its float64 operator, the dense
    Hessian built from that operator's products, and the exact eigenvalues (ascending).

    Session-scoped: building the dense matrix costs 3,466 products (about half a minute)."""
    import numpy as np

    from hpcspec.commands.demo import digits_mlp_operator
    from hpcspec.curvature.dense import dense_hessian

    torch.set_num_threads(1)
    op = digits_mlp_operator()
    matrix = dense_hessian(op)
    return op, matrix, np.linalg.eigvalsh(matrix.numpy())
