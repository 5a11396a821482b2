"""Where a compiled LAUD-ResNet's forward spends its time: the blocks' maskers (the pooling
of each block's input, ``pooling.mean_rows`` as ``compiled_block`` calls it, and the
gates) against their variants, beside the dense network (channels_last, the same folded
weights), in one process. Wall-clock timers are wrapped around the compiled blocks'
methods, so this is a profile, not a benchmark figure: ``laudtriton bench`` gives those
(interleaved medians). The first line names ``--rate`` and the mean over the blocks of
the rate the calibrated masks realise on the input (round(rate * N) / N of each masker's N
decisions: at batch 1 a layer gate is on or off, and rate 0.5 turns every one off).
The lines below it do not overlap, except the indented "of which" lines, which are parts
of the line above them: the maskers' pooling and gates (in the layer path the pooling and
gates run outside the maskers, and their lines are not indented).

    python benchmarks/masker_share.py --mode channel --batch 1

``--ops`` adds a second profile, by operator (``torch.profiler``, over another ``--reps``
forwards of each model, outside the timers above): per group of operators (``OP_GROUPS``:
GEMMs and convolutions, row gathers and scatters, pooling, the rest), the milliseconds a
forward that the dense and the compiled network spend in them, and the time outside every
operator (Python, dispatch and the profiler's own cost). Beside it, the FLOPs ratio of
the compiled forward: how far the compiled GEMMs and convolutions are from it, against
what the other lines add.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import laudtriton
from laudtriton import compiled_block
from laudtriton.baseline import DenseModel
from laudtriton.bench import build_model
from laudtriton.compiled_block import CompiledBlock
from laudtriton.nn import calibrate_rates
from laudtriton.ops.masks import Gates
from laudtriton.tune.numbers import ascii_float, ascii_int


def timed(totals: dict[str, float], name: str, fn: Callable) -> Callable:
    """``fn`` adding its wall-clock seconds to ``totals[name]`` at each call, or, called
    inside other timed functions, to ``totals["<outer name>/.../<name>"]``: the maskers
    pool and gate inside their own timer, and their parts must not be added to it again."""
    def wrapper(*args, **kwargs):
        key = "/".join([*_ACTIVE, name])
        _ACTIVE.append(name)
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t
            _ACTIVE.pop()
            totals[key] = totals.get(key, 0.0) + dt
    return wrapper


_ACTIVE: list[str] = []  # the names of the timed calls under way, outermost first


def profile_lines(totals: dict[str, float], reps: int) -> list[str]:
    """One line per timer, ms a forward over ``reps`` forwards: the top-level ones (which
    do not overlap: their sum is the time they cover), each followed by the parts timed
    inside it, indented and marked "of which"."""
    lines = []
    for top in (k for k in totals if "/" not in k):
        for key in [top, *(k for k in totals if k.startswith(f"{top}/"))]:
            depth = key.count("/")
            label = key if depth == 0 else "of which " + key.rsplit("/", 1)[1]
            lines.append(f"{'  ' * (depth + 1)}{label:<{32 - 2 * (depth + 1)}} "
                         f"{totals[key] / reps * 1e3:9.2f} ms a forward")
    return lines


# (label, operator-name prefixes); an operator in none of them counts as "other operators"
OP_GROUPS = (
    ("GEMMs and convolutions", ("mkldnn::", "aten::addmm", "aten::mm", "aten::bmm",
                                "aten::mkldnn_convolution", "aten::convolution",
                                "aten::_convolution", "aten::linear")),
    ("row gathers and scatters", ("aten::index_select", "aten::index_add_",
                                  "aten::scatter_add_", "aten::index", "aten::gather",
                                  "aten::cat")),
    ("pooling", ("aten::avg_pool2d", "aten::adaptive_avg_pool2d", "aten::max_pool2d",
                 "aten::mean", "aten::sum")),
)


def op_ms(fn: Callable[[], object], reps: int) -> dict[str, float]:
    """Milliseconds a call of fn spends per group of ``OP_GROUPS`` (operators' self CPU
    time, which sums to the time inside operators), in "other operators", and "outside
    operators" (the wall time of the profiled calls less all of that), over ``reps``
    calls under ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        wall_us = (time.perf_counter() - t) * 1e6
    out = {label: 0.0 for label, _ in OP_GROUPS} | {"other operators": 0.0}
    for e in prof.key_averages():
        label = next((g for g, prefixes in OP_GROUPS if e.key.startswith(prefixes)),
                     "other operators")
        out[label] += e.self_cpu_time_total
    out["outside operators"] = wall_us - sum(out.values())
    return {k: v / reps / 1e3 for k, v in out.items()}


def op_lines(dense: dict[str, float], compiled: dict[str, float], flops_ratio: float
             ) -> list[str]:
    """The ``op_ms`` profiles of both networks side by side, ms a forward."""
    lines = [f"by operator (torch.profiler), FLOPs ratio {flops_ratio:.3f}:"
             f"{'dense':>12} {'compiled':>9} {'ratio':>6}"]
    for key in dense:
        d, c = dense[key], compiled[key]
        ratio = f"{c / d:6.3f}" if d > 0 else f"{'-':>6}"
        lines.append(f"  {key:<44}{d:9.2f} {c:9.2f} {ratio}")
    return lines


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """The median of ``reps`` timed calls of fn, in milliseconds."""
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[reps // 2] * 1e3


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (None: sys.argv[1:]), compile, time and print the profile. A bad
    option exits through argparse (code 2, one line naming it) before any compiling."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="laud_resnet101")
    p.add_argument("--mode", default="channel")
    p.add_argument("--granularity", default="4-4-2-1")
    p.add_argument("--channel-granularity", default="2")
    p.add_argument("--batch", type=ascii_int, default=1, help="batch size, >= 1 (default 1)")
    p.add_argument("--rate", type=ascii_float, default=0.5,
                   help="rate the maskers are calibrated to, in [0, 1] (default 0.5)")
    p.add_argument("--reps", type=ascii_int, default=10, help="timed forwards, >= 1 (default 10)")
    p.add_argument("--ops", action="store_true",
                   help="also profile by operator (torch.profiler), dense and compiled")
    args = p.parse_args(argv)
    # checked here: --reps 0 failed with an IndexError after compiling and warming up
    for flag, value in (("--batch", args.batch), ("--reps", args.reps)):
        if value < 1:
            p.error(f"{flag} {value}: accepted an int >= 1")
    if not 0.0 <= args.rate <= 1.0:  # (nan too)
        p.error(f"--rate {args.rate:g}: accepted a number in [0, 1]")
    try:
        model = build_model(args.model, args.mode, args.granularity,
                            args.channel_granularity)
    except ValueError as e:  # names the model, mode or granularity and what is accepted
        p.error(str(e))
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    # printed beside --rate: the masks realise round(rate * N) / N of each masker's N
    # decisions (at batch 1 and rate 0.5 every layer gate is off); mean over the blocks
    rates = calibrate_rates(model, x, args.rate)
    achieved = sum(rates) / len(rates)
    cm = laudtriton.compile(model, x, backend="cpu", tune="cached")
    dense = DenseModel(model, torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    totals: dict[str, float] = {}
    CompiledBlock._masks = timed(totals, "maskers", CompiledBlock._masks)
    CompiledBlock._run = timed(totals, "variants", CompiledBlock._run)
    Gates.__call__ = timed(totals, "gates", Gates.__call__)
    compiled_block.mean_rows = timed(totals, "pooling (mean_rows)", compiled_block.mean_rows)
    with torch.no_grad():
        for _ in range(3):
            dense(xc)
            cm(x)
        dense_ms = median_ms(lambda: dense(xc), args.reps)
        totals.clear()
        compiled_ms = median_ms(lambda: cm(x), args.reps)
    print(f"{args.model} {args.mode} batch {args.batch} rate {args.rate:g} (achieved "
          f"{achieved:.3f}), "
          f"{torch.get_num_threads()} threads: dense {dense_ms:.2f} ms, compiled "
          f"{compiled_ms:.2f} ms ({compiled_ms / dense_ms:.3f} of dense)")
    # the maskers' pooling and gates are printed under them ("of which"); the layer path
    # pools and gates in its own step, outside the maskers: those lines are top-level
    print("\n".join(profile_lines(totals, args.reps)))
    if args.ops:
        with torch.no_grad():
            model(x)  # the reference's FLOPs on the same input and masks
            fr = float(model.last_stats.flops_ratio)
            lines = op_lines(op_ms(lambda: dense(xc), args.reps),
                             op_ms(lambda: cm(x), args.reps), fr)
        print("\n".join(lines))


if __name__ == "__main__":
    main()
