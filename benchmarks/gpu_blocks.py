"""Parts 2 and 5 of ``gpu_overhead.py``: per block, the static dense block against each
CUDA variant (eager, device, graph), and the tile sweep of ``masked`` and
``channel_gemm`` (graph replays of every config, each checked first)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch

from laudtriton.gpucheck.devicetime import device_us, eager_us, graph_us
from laudtriton.gpucheck.record import TableRun

# Variants that never sync with the host, so a CUDA graph can hold them (the ops modules'
# descriptions say so). A field on ``ops.registry.Variant`` would keep the two together,
# but an edit there changes every variant's source hash and hides the shipped timings.
CAPTURABLE = ("masked", "channel_gemm")
# Part 5: tiles beyond the config spaces, with block_k 64 (none in the spaces). Session
# 38's H200 run: 64x128x64 (4 warps, 3 stages) took `masked` on the S=2 blocks at batch 64
# from 1.23-1.47 of dense (the space's first config) to 0.92-0.97.
EXTRA_TILES = {
    "masked": [dict(block_m=m, block_n=n, block_k=64, num_warps=w, num_stages=st)
               for m, n, w, st in ((64, 128, 4, 3), (128, 64, 4, 4), (128, 128, 8, 3),
                                   (256, 128, 8, 3))],
    "channel_gemm": [dict(block_p=pp, block_n=n, block_k=64, num_warps=w, num_stages=st)
                     for pp, n, w, st in ((64, 128, 4, 3), (128, 128, 8, 3),
                                          (256, 128, 8, 3))],
}


def timeboxed(rec: TableRun, items: Iterable, end: float, what: str) -> Iterator:
    """The items, until ``time.perf_counter()`` passes ``end`` or CUDA broke
    (``rec.broken``); then records the rest as skipped, and stops."""
    import time

    for item in items:
        if rec.broken is not None or time.perf_counter() > end:
            why = f"CUDA broke at {rec.broken}" if rec.broken else "time box"
            rec.skip(f"the rest of {what}", why)
            return
        yield item


def measured(rec: TableRun, name: str, fn: Callable[[], object], dev: str,
             graph: bool) -> dict[str, float]:
    """fn's ``eager_us``, ``device_us`` and ``kernels`` and, with ``graph`` (and CUDA still
    working), ``graph_us``: each measured on its own (``rec.attempt``, items named
    "<name>: eager" ...), in that order, as the graph capture is the one that may fail;
    nan where one failed or was not tried."""
    e = rec.attempt(f"{name}: eager", lambda: eager_us(fn, dev))
    dk = rec.attempt(f"{name}: device", lambda: device_us(fn, dev))
    g = rec.attempt(f"{name}: graph", lambda: graph_us(fn, dev)) \
        if graph and rec.broken is None else None
    d, k = dk if dk is not None else (math.nan, math.nan)
    return {"eager_us": math.nan if e is None else e, "device_us": d, "kernels": k,
            "graph_us": math.nan if g is None else g}


def short_config(cfg: dict) -> str:
    """A config in a few characters: its (first conv's) tile, m or p x n x k, warps w,
    stages s; "" for a variant without config."""
    c = cfg.get("conv1", cfg)  # a spatial config names its three convs
    if not c:
        return ""
    return (f"{c.get('block_m', c.get('block_p', ''))}x{c.get('block_n', '')}x"
            f"{c.get('block_k', '')}w{c.get('num_warps', '')}s{c.get('num_stages', '')}")


def _listed(input_size: int):
    from laudtriton.gpucheck.blocks import distinct_blocks

    return distinct_blocks(["laud_resnet50", "laud_resnet101"], input_size).values()


def _block_input(block, spec, dt: torch.dtype, dev: str):
    """(folded block, a ReLU'd random input in channels_last, masks at rate 0.5)."""
    from laudtriton.ops import fold_block
    from laudtriton.ops.synthetic import synthetic_masks

    fb = fold_block(block, dt, dev)
    x = torch.randn(spec.batch, spec.in_channels, *spec.in_hw).relu().to(
        dev, dt).contiguous(memory_format=torch.channels_last)
    return fb, x, synthetic_masks(spec, 0.5, seed=1, device=dev)


def _static_dense(fb, x) -> Callable[[], torch.Tensor]:
    """The static dense block on x, out of place (gpucheck times it in place on a
    scratch copy; out of place adds one output allocation)."""
    from laudtriton.baseline import NO_MASKS
    from laudtriton.ops.dense import dense_block

    return lambda: dense_block(fb, x, NO_MASKS)


def blocks(rec: TableRun, batches: list[int], input_size: int, dev: str, end: float) -> None:
    """Part 2: every distinct block at rate 0.5, in float16 on CUDA and float32 on CPU (the
    rows' spec, ``BlockSpec.short``, names the dtype when not float32): the static dense
    block and each variant's first config, eager and device time first, then (static dense
    and ``CAPTURABLE``) a graph replay; each measurement recorded on its own, a failure
    too."""
    import itertools

    from laudtriton.ops import variants_for

    dt = torch.float16 if dev == "cuda" else torch.float32
    items = itertools.product(batches, _listed(input_size))
    for batch, (mode, block, spec1, _) in timeboxed(rec, items, end, "blocks"):
        spec = spec1.with_(batch=batch, dtype=str(dt).removeprefix("torch."))
        made = rec.attempt(f"block {spec.short()} inputs",
                           lambda block=block, spec=spec: _block_input(block, spec, dt, dev))
        if made is None:
            continue
        fb, x, masks = made
        todo = [("static dense", _static_dense(fb, x), True)]
        for v in variants_for(spec, "cuda" if dev == "cuda" else "cpu"):
            cfg = v.configs(spec)[0]
            todo.append((" ".join(filter(None, (v.name, short_config(cfg)))),
                         lambda v=v, cfg=cfg: v.run(fb, x, masks, cfg), v.name in CAPTURABLE))
        for what, fn, capturable in todo:
            rec.row(part="block", mode=mode, spec=spec.short(), batch=batch, what=what,
                    **measured(rec, f"{spec.short()} {what}", fn, dev, capturable))
        rec.write()


def tile_configs(v, spec) -> list[tuple[dict, bool]]:
    """Part 5's configs of variant ``v`` (``ops.registry.Variant``) on ``spec``, each as
    ``v.run`` takes it, with whether it is an extra tile: its config space, then
    ``EXTRA_TILES[v.name]`` (one tile for all three convs of a spatial variant, whose
    configs name them)."""
    extras = EXTRA_TILES[v.name]
    if v.name == "masked":
        extras = [{st: c for st in ("conv1", "conv2", "conv3")} for c in extras]
    return [(c, False) for c in v.configs(spec)] + [(c, True) for c in extras]


def tiles(rec: TableRun, batches: list[int], input_size: int, dev: str, end: float) -> None:
    """Part 5: ``masked`` and ``channel_gemm`` with each config (``tile_configs``) on every
    distinct spatial and channel block at rate 0.5, each config's output checked against
    the float32 dense block on the same masks, then timed as a CUDA-graph replay beside
    the static dense block's. CUDA only (recorded as skipped elsewhere)."""
    if dev != "cuda":
        rec.skip("tiles", "CUDA only")
        return
    import itertools
    import time

    from laudtriton.kernelchecks import exact_fp32
    from laudtriton.ops import fold_block, get_variant
    from laudtriton.ops.dense import dense_block
    from laudtriton.testing import TOLERANCE, assert_close

    items = [(b, m) for b, m in itertools.product(batches, _listed(input_size))
             if m[0] in ("spatial", "channel")]
    for batch, (mode, block, spec1, _) in timeboxed(rec, items, end, "tiles"):
        spec = spec1.with_(batch=batch)
        v = get_variant("masked" if mode == "spatial" else "channel_gemm")
        if not v.supports(spec):
            rec.skip(f"tiles {spec.short()}", f"{v.name} does not run it")
            continue

        def inputs(block=block, spec=spec):
            fb, x, masks = _block_input(block, spec, torch.float16, dev)
            with torch.no_grad(), exact_fp32():
                ref = dense_block(fold_block(block, torch.float32, dev), x.float(), masks)
            return fb, x, masks, ref

        made = rec.attempt(f"tiles {spec.short()} inputs", inputs)
        if made is None:
            continue
        fb, x, masks, ref = made
        g = rec.attempt(f"tiles {spec.short()} static dense",
                        lambda fb=fb, x=x: graph_us(_static_dense(fb, x), dev))
        base = dict(part="tiles", mode=mode, spec=spec.short(), batch=batch)
        rec.row(**base, what="static dense", graph_us=math.nan if g is None else g)
        for cfg, extra in tile_configs(v, spec):
            if rec.broken is not None or time.perf_counter() > end:
                rec.skip(f"tiles {spec.short()}: the rest of the configs",
                         "CUDA broke" if rec.broken else "time box")
                break

            def one(cfg=cfg, fb=fb, x=x, masks=masks, ref=ref, v=v):
                with torch.no_grad():
                    out = v.run(fb, x, masks, cfg)
                torch.cuda.synchronize()
                assert_close(out.float(), ref.float(), TOLERANCE[torch.float16],
                             f"{v.name} {cfg}")
                return graph_us(lambda: v.run(fb, x, masks, cfg), dev)

            what = f"{v.name} {short_config(cfg)}"
            t = rec.attempt(f"tiles {spec.short()} {what}", one)
            note = "extra " if extra else ""
            if t is not None and g:
                note += f"ratio {t / g:.2f}"
            rec.row(**base, what=what, graph_us=math.nan if t is None else t, note=note)
        rec.write()
