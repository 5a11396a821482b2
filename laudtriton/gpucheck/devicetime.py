"""Three timings of one callable on a GPU, and the cost of a launch: what
``benchmarks/gpu_overhead.py`` measures beside gpucheck's eager ``do_bench``.

On a machine where a launch costs the host more time than the kernel runs on the device,
an eager timing measures the launches; the device time of the kernels (torch.profiler)
and a CUDA-graph replay say what the kernels themselves cost. Each function returns NaN
for what a CPU cannot measure, so the callers' plumbing runs in the CPU test suite.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch


def eager_us(fn: Callable[[], object], device: str) -> float:
    """Microseconds of one call of fn, as gpucheck times it (``tune.timing.median_time``:
    on CUDA the do_bench median), under no_grad."""
    from ..tune.timing import median_time

    with torch.no_grad():
        return median_time(fn, device) * 1e6


def device_us(fn: Callable[[], object], device: str, calls: int = 3) -> tuple[float, float]:
    """(device microseconds per call, kernels per call) of fn: the summed device time of
    every kernel, copy and fill that ``calls`` calls put on the device, over ``calls``
    (torch.profiler, after one untimed call). (nan, nan) on CPU; kernels nan where this
    torch lists device time on the host ops only (their self device times are summed)."""
    if device != "cuda":
        return math.nan, math.nan
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if not ev:
        total = sum(getattr(e, "self_device_time_total", 0.0) for e in prof.key_averages())
        return total / calls, math.nan
    return sum(e.time_range.elapsed_us() for e in ev) / calls, len(ev) / calls


def graph_us(fn: Callable[[], object], device: str) -> float:
    """Microseconds of one replay of fn captured in a CUDA graph (do_bench median; three
    warm-up calls on a side stream first, as PyTorch advises). nan on CPU.

    Raises:
        RuntimeError: (torch's) when fn cannot be captured, e.g. it syncs with the host.
    """
    if device != "cuda":
        return math.nan
    import triton.testing

    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        torch.cuda.synchronize()
        return triton.testing.do_bench(g.replay, warmup=25, rep=100,
                                       return_mode="median") * 1e3


def launch_costs(device: str, n: int = 2000) -> dict[str, float]:
    """Microseconds: ``torch_add_host_us``, the host time per call of a one-element torch
    add (mean of n back to back, then one sync); on CUDA also ``triton_empty_host_us``
    (an empty Triton kernel, alike) and ``torch_add_graph_device_us`` (the add's device
    time per kernel, 100 of them replayed from one CUDA graph)."""
    buf = torch.zeros(1, device=device)
    cuda = device == "cuda"

    def per_call(fn: Callable[[], object]) -> float:
        for _ in range(20):
            fn()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n * 1e6

    out = {"torch_add_host_us": per_call(lambda: buf.add_(1))}
    if cuda:
        import triton

        @triton.jit
        def _noop_kernel(p):
            pass

        out["triton_empty_host_us"] = per_call(lambda: _noop_kernel[(1,)](buf))

        def hundred_adds():
            for _ in range(100):
                buf.add_(1)

        out["torch_add_graph_device_us"] = graph_us(hundred_adds, device) / 100
    return out
