"""Timing (DESIGN.md section 5): CUDA events via triton.testing.do_bench (median) on a
GPU; on CPU the median of repeated time.perf_counter runs after warm-up."""

from __future__ import annotations

import contextlib
import gc
import numbers
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from .keys import cpu_or_cuda


def check_runs(warmup: int, reps: int) -> None:
    """A ValueError unless reps >= 1 and warmup >= 0 are ints, not bools (a median needs
    a run; 2.5 or "3" raised a TypeError from ``range`` or the comparison)."""
    ints = all(isinstance(n, numbers.Integral) and not isinstance(n, bool)
               for n in (warmup, reps))
    if not ints or reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0 (ints), got reps={reps!r}, "
                         f"warmup={warmup!r}")


def median_time(fn: Callable[[], object], device: str | torch.device = "cpu",
                warmup: int = 3, reps: int = 20) -> float:
    """Median seconds of one call of ``fn``.

    On CUDA: ``triton.testing.do_bench`` (CUDA events; ms converted to s), which sizes
    its own warm-up and repetitions by time (25 ms, 100 ms): ``warmup`` and ``reps`` are
    not used there. It runs with ``device`` current (``torch.cuda.device``): its events
    and synchronisations are the current device's, and 'cuda:1' timed from cuda:0 read
    cuda:0's idle stream (the launch time alone, not the kernels' on cuda:1).
    On CPU: ``warmup`` untimed calls, then the median of ``reps`` timed calls.

    Raises:
        ValueError: if reps < 1 or warmup < 0, or either is not an int; if ``device`` is
            not a CPU or CUDA device ('mps', 'meta' were timed as CPU calls: an
            asynchronous device's launch time alone).
    """
    check_runs(warmup, reps)
    dev = cpu_or_cuda(device)
    if dev.type == "cuda":
        import triton.testing

        # ('cuda' alone: the current device already)
        with torch.cuda.device(dev) if dev.index is not None else contextlib.nullcontext():
            return triton.testing.do_bench(fn, warmup=25, rep=100,
                                           return_mode="median") / 1e3
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: Sequence[Callable[[], object]], warmup: int = 3,
                        reps: int = 20,
                        setup: Sequence[Callable[[], object] | None] | None = None
                        ) -> list[float]:
    """CPU: median seconds of each fn, timed round-robin so that drifts in machine load
    hit every candidate alike, each round starting one fn later (fn0 fn1 fn2, fn1 fn2 fn0,
    ...: no fn always runs right after the same other one, in the caches and freed memory
    it left), with Python's garbage collector paused (as ``timeit`` does; no collection
    first: one takes ~0.1 s with torch loaded, and a sweep calls this per item). Used for
    side-by-side ratios.

    setup: one callable (or None) per fn, run untimed before each call of its fn (e.g. to
    restore an input that the fn overwrites).

    Raises:
        ValueError: if reps < 1 or warmup < 0, or either is not an int, or setup does not
            give one entry per fn.
    """
    check_runs(warmup, reps)
    setup = list(setup) if setup is not None else [None] * len(fns)
    if len(setup) != len(fns):
        raise ValueError(f"setup has {len(setup)} entries for {len(fns)} functions")
    for _ in range(warmup):
        for f, prep in zip(fns, setup):
            if prep is not None:
                prep()
            f()
    times: list[list[float]] = [[] for _ in fns]
    n = len(fns)
    paused = gc.isenabled()
    gc.disable()
    try:
        for r in range(reps):
            for i in [(r + j) % n for j in range(n)]:
                if setup[i] is not None:
                    setup[i]()
                t0 = time.perf_counter()
                fns[i]()
                times[i].append(time.perf_counter() - t0)
    finally:
        if paused:
            gc.enable()
    return [statistics.median(t) for t in times]
