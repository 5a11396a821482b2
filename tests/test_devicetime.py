"""laudtriton.gpucheck.devicetime: on CPU the eager and host timings are measured and
what needs CUDA is NaN; on a GPU (skipped without one) the CUDA paths (the GPU figures
are in BENCHMARKS.md, "GPU: NVIDIA H200")."""

import math

import pytest
import torch

from laudtriton.gpucheck import devicetime as dtm

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cpu_measures_eager_and_host_time_and_gives_nan_for_the_rest():
    x = torch.randn(64, 64)
    calls = []

    def fn():
        calls.append(torch.is_grad_enabled())
        return x @ x

    assert dtm.eager_us(fn, "cpu") > 0
    assert calls and not any(calls)  # timed under no_grad
    assert all(math.isnan(v) for v in dtm.device_us(fn, "cpu"))
    assert math.isnan(dtm.graph_us(fn, torch.device("cpu")))
    assert dtm.host_us(fn, "cpu", n=5) > 0
    costs = dtm.launch_costs("cpu", n=50)
    assert set(costs) == {"torch_add_host_us"} and costs["torch_add_host_us"] > 0


@pytest.mark.parametrize("call", [
    lambda: dtm.device_us(lambda: None, "meta"), lambda: dtm.graph_us(lambda: None, "gpu"),
    lambda: dtm.device_us(lambda: None, "cpu", calls=0),
    lambda: dtm.host_us(lambda: None, "cpu", n=0), lambda: dtm.launch_costs("xla:0")])
def test_bad_device_or_count_is_a_value_error(call):
    with pytest.raises(ValueError, match="accepted"):
        call()


@NEEDS_CUDA
def test_cuda_paths_time_the_kernels_and_refuse_a_capture_that_syncs():
    x = torch.zeros(1024, device="cuda")
    t, ops = dtm.device_us(lambda: x.add_(1), "cuda:0")
    assert t > 0 and ops == 1.0
    assert math.isfinite(dtm.graph_us(lambda: x.add_(1), "cuda"))
    with pytest.raises(RuntimeError):
        dtm.graph_us(lambda: x.sum().item(), "cuda")
    assert {"torch_add_host_us", "triton_empty_host_us",
            "torch_add_graph_device_us"} <= set(dtm.launch_costs("cuda", n=50))


def test_host_us_is_microseconds_per_call(monkeypatch):
    """host_us: the time of n calls back to back over n, in microseconds (20 untimed
    calls first)."""
    import types

    now, calls = [0.0], []

    def fn():  # each call takes 3 us on the stand-in clock
        calls.append(1)
        now[0] += 3e-6
    monkeypatch.setattr(dtm, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    assert dtm.host_us(fn, "cpu", n=50) == pytest.approx(3.0)
    assert len(calls) == 20 + 50
