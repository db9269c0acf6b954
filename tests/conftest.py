"""Shared test fixtures: the devices present, and the per-dtype tolerance table."""

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

# Every correctness test runs on each device present; CUDA ones skip cleanly without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Absolute / relative tolerance against a float64 reference, for outputs computed in float32 or
# float64 arithmetic. Half precision is judged against PyTorch eager in the same dtype instead
# (tests/helpers.py: assert_half_close).
TOLERANCE = {
    torch.float64: dict(atol=1e-12, rtol=1e-10),
    torch.float32: dict(atol=1e-6, rtol=2e-5),
}


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
