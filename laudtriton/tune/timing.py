"""Timing (DESIGN.md section 5): CUDA events via triton.testing.do_bench (median) on a
GPU; on CPU the median of repeated time.perf_counter runs after warm-up."""

from __future__ import annotations

import contextlib
import gc
import numbers
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

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
    On CPU: ``warmup`` untimed calls, then the median of ``reps`` timed calls, with
    Python's garbage collector paused (``interleaved_medians``; a collection inside a
    timed call, ~0.1 s with torch loaded, was that call's time, the whole result at
    reps=1).

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
    with _collector_paused():
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's garbage collector off inside (as ``timeit`` does), then back as it was,
    also when the body raises (no collection first: one takes ~0.1 s with torch loaded,
    and a sweep times many items)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _round_orders(n: int) -> list[list[int]]:
    """The orders of n functions' rounds, used cyclically: a Williams design (n rounds,
    2n for an odd n) in which each fn runs right after each other one equally often and
    takes each position equally often (exactly over whole cycles of them). n=2: [0, 1],
    [1, 0]; n=3: the rotations of [0, 1, 2], then of [2, 1, 0]."""
    first, lo, hi = [0], 1, n - 1  # 0, 1, n-1, 2, n-2, ...
    while len(first) < n:
        if len(first) % 2:
            first.append(lo)
            lo += 1
        else:
            first.append(hi)
            hi -= 1
    rows = [[(f + r) % n for f in first] for r in range(n)] if n else [[]]
    if n % 2 and n > 1:  # an odd n balances the pairs with the mirrored rounds
        rows += [row[::-1] for row in rows]
    return rows


def interleaved_medians(fns: Sequence[Callable[[], object]], warmup: int = 3,
                        reps: int = 20,
                        setup: Sequence[Callable[[], object] | None] | None = None
                        ) -> list[float]:
    """CPU: median seconds of each fn, timed round-robin so that drifts in machine load
    hit every candidate alike, the rounds in a balanced order (``_round_orders``: fn0 fn1
    fn2, fn1 fn2 fn0, fn2 fn0 fn1, fn2 fn1 fn0, ...: each fn runs right after each other
    one equally often, in the caches and freed memory it left; rotated rounds alone timed
    fn1 after fn0 in 2 of 3 rounds, and n-1 of n for n fns, so its median was its time
    after fn0), with Python's garbage collector paused (``_collector_paused``). Used for
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
    orders = _round_orders(len(fns))
    with _collector_paused():
        for r in range(reps):
            for i in orders[r % len(orders)]:
                if setup[i] is not None:
                    setup[i]()
                t0 = time.perf_counter()
                fns[i]()
                times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]
