"""Three timings of one callable on a GPU, and the cost of a launch: what
``benchmarks/gpu_overhead.py`` measures beside gpucheck's eager ``do_bench``.

On a machine where a launch costs the host more time than the kernel runs on the device,
an eager timing measures the launches; the device time of the kernels (torch.profiler)
and a CUDA-graph replay say what the kernels themselves cost. Each function returns NaN
for what a CPU cannot measure, so the callers' plumbing runs in the CPU test suite.

The three see the caches differently: ``do_bench`` (eager and graph) zeroes a 256 MB
buffer before each timed call, which empties the L2 and lets the host run ahead while
the device clears it (so an eager figure of a launch-bound call understates its host
time by up to that clear's duration); the profiler's device time is taken over calls
back to back, with the L2 warm.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch


def _is_cuda(device: str | torch.device) -> bool:
    """Whether ``device`` names a CUDA device ("cuda", "cuda:N", or a torch.device).

    Raises:
        ValueError: naming ``device`` unless it is a CPU or CUDA device.
    """
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r}: accepted 'cpu', 'cuda' or 'cuda:N'") from e
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: accepted 'cpu', 'cuda' or 'cuda:N'")
    return kind == "cuda"


def eager_us(fn: Callable[[], object], device: str | torch.device) -> float:
    """Microseconds of one call of fn, as gpucheck times it (``tune.timing.median_time``:
    on CUDA the do_bench median), under no_grad."""
    from ..tune.timing import median_time

    _is_cuda(device)
    with torch.no_grad():
        return median_time(fn, device) * 1e6


def device_us(fn: Callable[[], object], device: str | torch.device,
              calls: int = 3) -> tuple[float, float]:
    """(device microseconds per call, device ops per call) of fn: the summed device time
    of every kernel, copy and fill that ``calls`` calls put on the device, over ``calls``
    (torch.profiler, after one untimed call). (nan, nan) on CPU; ops nan where this torch
    lists device time on the host ops only (their self device times are summed).

    Raises:
        ValueError: if calls < 1, or for a device other than CPU or CUDA.
    """
    if calls < 1:
        raise ValueError(f"calls={calls}: accepted an int >= 1")
    if not _is_cuda(device):
        return math.nan, math.nan
    prof = profiled(fn, device, calls)
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
          and not getattr(e, "is_user_annotation", False)]
    if not ev:
        total = sum(getattr(e, "self_device_time_total", 0.0) for e in prof.key_averages())
        return total / calls, math.nan
    return sum(e.time_range.elapsed_us() for e in ev) / calls, len(ev) / calls


def profiled(fn: Callable[[], object], device: str | torch.device, calls: int = 3,
             warmup: int = 1) -> torch.profiler.profile:
    """torch.profiler's record of ``calls`` calls of fn after ``warmup`` untimed ones,
    under no_grad: the device's activity on CUDA (synced before and after), the host's on
    CPU.

    Raises:
        ValueError: for a device other than CPU or CUDA.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = _is_cuda(device)
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]
                     ) as prof:
            for _ in range(calls):
                fn()
            if cuda:
                torch.cuda.synchronize(device)
    return prof


def graph_us(fn: Callable[[], object], device: str | torch.device) -> float:
    """Microseconds of one replay of fn captured in a CUDA graph (do_bench median; three
    warm-up calls on a side stream first, as PyTorch advises). nan on CPU.

    Raises:
        RuntimeError: (torch's) when fn cannot be captured, e.g. it syncs with the host.
        ValueError: for a device other than CPU or CUDA.
    """
    if not _is_cuda(device):
        return math.nan
    import triton.testing

    with torch.no_grad():
        s = torch.cuda.Stream(device)
        s.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(s):
            for _ in range(3):
                fn()
        torch.cuda.current_stream(device).wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        torch.cuda.synchronize(device)
        return triton.testing.do_bench(g.replay, warmup=25, rep=100,
                                       return_mode="median") * 1e3


def host_us(fn: Callable[[], object], device: str | torch.device, n: int = 2000) -> float:
    """Microseconds per call of fn over n calls back to back (20 untimed first), with one
    sync at the end on CUDA: the host's time per call where the device keeps up.

    Raises:
        ValueError: if n < 1, or for a device other than CPU or CUDA.
    """
    if n < 1:
        raise ValueError(f"n={n}: accepted an int >= 1")
    cuda = _is_cuda(device)
    for _ in range(20):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / n * 1e6


def launch_costs(device: str | torch.device, n: int = 2000) -> dict[str, float | str]:
    """Microseconds: ``torch_add_host_us``, the host time per one-element torch add
    (``host_us``); on CUDA also ``triton_empty_host_us`` (an empty Triton kernel, alike)
    and ``torch_add_graph_device_us`` (the add's device time per kernel, 100 of them
    replayed from one CUDA graph; nan, with ``graph_error``, if the capture fails).

    Raises:
        ValueError: if n < 1, or for a device other than CPU or CUDA.
    """
    cuda = _is_cuda(device)  # before anything is made on it
    buf = torch.zeros(1, device=device)
    out: dict[str, float | str] = {"torch_add_host_us": host_us(lambda: buf.add_(1), device, n)}
    if cuda:
        import triton

        @triton.jit
        def _noop_kernel(p):
            pass

        out["triton_empty_host_us"] = host_us(lambda: _noop_kernel[(1,)](buf), device, n)

        def hundred_adds():
            for _ in range(100):
                buf.add_(1)

        try:
            out["torch_add_graph_device_us"] = graph_us(hundred_adds, device) / 100
        except RuntimeError as e:  # the host figures stand without it
            out["torch_add_graph_device_us"] = math.nan
            out["graph_error"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
    return out
