"""pytest hooks: CUDA-marked tests skip cleanly where no GPU is present, and every test starts
from the same seed. The shared constants (devices, dtypes, tolerances) live in helpers.py, so
that test modules import them by a name no other conftest.py shadows."""

import pytest
import torch
from helpers import HAS_CUDA


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is present")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
