import pytest
import torch

from helpers import mpirun_available


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
