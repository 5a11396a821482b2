"""laudtriton.gpucheck.devicetime on CPU: the eager timing is measured, what needs CUDA is
NaN (the GPU figures are in BENCHMARKS.md, "GPU: NVIDIA H200")."""

import math

import pytest
import torch

from laudtriton.gpucheck import devicetime as dtm


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU answers")
def test_cpu_measures_eager_and_launches_and_gives_nan_for_the_rest():
    x = torch.randn(64, 64)
    calls = []

    def fn():
        calls.append(torch.is_grad_enabled())
        return x @ x

    assert dtm.eager_us(fn, "cpu") > 0
    assert calls and not any(calls)  # timed under no_grad
    assert all(math.isnan(v) for v in dtm.device_us(fn, "cpu"))
    assert math.isnan(dtm.graph_us(fn, "cpu"))
    costs = dtm.launch_costs("cpu", n=50)
    assert set(costs) == {"torch_add_host_us"} and costs["torch_add_host_us"] > 0
