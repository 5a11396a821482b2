import os

import torch

# Every Triton kernel test runs under the interpreter (GPU.md section 1), on CPU tensors,
# on a machine with a GPU too (there the kernels are checked on the device by
# ``laudtriton gpucheck``); the variable must be set before any kernel module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
