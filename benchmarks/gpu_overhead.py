"""Where the time of a compiled LAUD model goes on a GPU: launch overhead, kernel time and
CUDA-graph replay, next to the static dense network's.

``laudtriton gpucheck`` times each block and network with CUDA events around eager calls
(``do_bench``). On a machine where launching a kernel costs more host time than the
kernel runs on the device (small blocks at batch 1), that measures the launches. This
script measures, in one run:

1. the host time of one launch: an empty Triton kernel, a one-element torch op, and the
   device time per kernel of the same op replayed from a CUDA graph;
2. for each distinct block of LAUD-ResNet-50/-101 (spatial 4-4-2-1, channel, layer) at
   rate 0.5 and each batch: the static dense block and every CUDA variant (first config):
   ``eager`` (do_bench median, as gpucheck), ``device`` (the sum of the device time of
   the kernels one call launches, torch.profiler, mean of 3 calls), ``kernels`` (their
   number per call) and, for the static dense block and the variants that never sync
   with the host (``masked``, ``channel_gemm``), ``graph`` (do_bench median of one
   CUDA-graph replay);
3. whole LAUD-ResNet-101 at rate 0.5 per mode and batch: the dense network (float16,
   channels_last) and the compiled model (the shipped cache), eager and device time and
   kernels per call, the dense network's graph replay;
4. the same networks compiled with ``dispatch="static"`` and only the variants that do
   not sync, and their graph replay if the capture succeeds (an error is recorded, not
   fatal; last, as a failed capture might leave CUDA unusable);
5. tiles: on the distinct spatial and channel blocks at rate 0.5 and each batch, ``masked``
   and ``channel_gemm`` with every config of their space plus larger tiles
   (``EXTRA_TILES``), each config's output checked against the float32 dense block on
   the same masks first, then timed as a CUDA-graph replay next to the static dense
   block's: what the kernels cost on the device with each tile (gpucheck times two
   configs, eager);
6. kernels (only when asked, ``--parts 6``): torch.profiler's tables of the ops with the
   most device time in the dense network and the compiled model, per mode and batch,
   into DIR/kernels.txt.

Run on a GPU from the source tree: ``PYTHONPATH=. python benchmarks/gpu_overhead.py --out
DIR``; writes DIR/overhead.csv (one row per measurement) and DIR/overhead.json (the
launch figures and any errors) after each item. ``--device cpu`` runs the plumbing on CPU
(no graphs, no Triton variants, small input) for the tests.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from laudtriton.gpucheck.devicetime import (  # noqa: E402 - after the path above
    device_us,
    eager_us,
    graph_us,
    launch_costs,
)

CAPTURABLE = ("masked", "channel_gemm")  # variants with no host sync (ops docstrings)
# part 5: tiles beyond the config spaces (larger, for batch 64 on an H100/H200)
EXTRA_TILES = {
    "masked": [dict(block_m=m, block_n=n, block_k=64, num_warps=w, num_stages=st)
               for m, n, w, st in ((64, 128, 4, 3), (128, 64, 4, 4), (128, 128, 8, 3),
                                   (256, 128, 8, 3))],
    "channel_gemm": [dict(block_p=pp, block_n=n, block_k=64, num_warps=w, num_stages=st)
                     for pp, n, w, st in ((64, 128, 4, 3), (128, 128, 8, 3),
                                          (256, 128, 8, 3))],
}
FIELDS = ("part", "mode", "spec", "batch", "what", "eager_us", "device_us", "kernels",
          "graph_us", "note")


class Recorder:
    """Rows and errors of one run, written to ``out`` after each item."""

    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.rows, self.info, self.errors = out, [], {}, []
        self.t0, self.budget = time.perf_counter(), budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {text}", flush=True)

    def row(self, **kw) -> None:
        self.rows.append({k: kw.get(k, "") for k in FIELDS})
        r = self.rows[-1]
        self.say(f"{r['part']:<6} {r['mode']:<8} b{r['batch']:<3} {r['spec'][:44]:<44} "
                 f"{r['what']:<22} eager {_us(r['eager_us'])} device {_us(r['device_us'])} "
                 f"kernels {r['kernels']!s:>4} graph {_us(r['graph_us'])} {r['note']}")

    def attempt(self, name: str, fn) -> object:
        """fn(), or None with its error recorded (the run goes on)."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - a diagnostic run keeps going
            line = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            self.errors.append({"item": name, "error": line,
                                "traceback": traceback.format_exc().splitlines()[-12:]})
            self.say(f"ERROR {name}: {line}")
            return None

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "overhead.csv", "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            w.writerows(self.rows)
        (self.out / "overhead.json").write_text(json.dumps(
            {"info": self.info, "errors": self.errors,
             "seconds": time.perf_counter() - self.t0}, indent=1, default=str))


def _timeboxed(rec: Recorder, items, end: float, what: str):
    """The items, until ``time.perf_counter()`` passes ``end``; then says so and stops."""
    for item in items:
        if time.perf_counter() > end:
            rec.say(f"time box: {what} stop here")
            return
        yield item


def _us(v) -> str:
    return f"{v:8.1f}us" if isinstance(v, float) and math.isfinite(v) else f"{'-':>10}"


# -- 1. launches ---------------------------------------------------------------------------
def launch_overhead(rec: Recorder, dev: str) -> None:
    """Part 1: ``devicetime.launch_costs`` into ``rec.info``."""
    rec.info.update(launch_costs(dev))
    rec.say("launch: " + ", ".join(f"{k} {v:.2f}" for k, v in rec.info.items()
                                   if isinstance(v, float)))


# -- blocks ---------------------------------------------------------------------------------
def blocks(rec: Recorder, batches: list[int], input_size: int, dev: str,
           end: float) -> None:
    """Part 2: every distinct block at rate 0.5: static dense and each variant."""
    from laudtriton.baseline import NO_MASKS
    from laudtriton.gpucheck.blocks import distinct_blocks
    from laudtriton.ops import fold_block, variants_for
    from laudtriton.ops.dense import dense_block
    from laudtriton.ops.synthetic import synthetic_masks

    dt = torch.float16 if dev == "cuda" else torch.float32
    listed = distinct_blocks(["laud_resnet50", "laud_resnet101"], input_size)
    items = itertools.product(batches, listed.values())
    for batch, (mode, block, spec1, _) in _timeboxed(rec, items, end, "blocks"):
        spec = spec1.with_(batch=batch)

        def one(mode=mode, block=block, spec=spec):
            fb = fold_block(block, dt, dev)
            x = torch.randn(spec.batch, spec.in_channels, *spec.in_hw).relu().to(
                dev, dt).contiguous(memory_format=torch.channels_last)
            masks = synthetic_masks(spec, 0.5, seed=1, device=dev)
            todo = [("static dense", lambda: dense_block(fb, x, NO_MASKS), True)]
            for v in variants_for(spec, "cuda" if dev == "cuda" else "cpu"):
                cfg = v.configs(spec)[0]
                todo.append((f"{v.name} {_short(cfg)}",
                             lambda v=v, cfg=cfg: v.run(fb, x, masks, cfg),
                             v.name in CAPTURABLE))
            for what, fn, capturable in todo:
                e = eager_us(fn, dev)
                d, k = device_us(fn, dev)
                g = rec.attempt(f"graph {spec.short()} {what}",
                                lambda fn=fn: graph_us(fn, dev)) if capturable else None
                rec.row(part="block", mode=mode, spec=spec.short(), batch=spec.batch,
                        what=what, eager_us=e, device_us=d, kernels=k,
                        graph_us=math.nan if g is None else g)

        rec.attempt(f"block {spec.short()}", one)
        rec.save()


def _short(cfg: dict) -> str:
    """A config in a few characters: its first conv's tile (m x n x k, warps, stages)."""
    c = cfg.get("conv1", cfg)  # a spatial config names its three convs
    if not c:
        return ""
    return (f"{c.get('block_m', c.get('block_p', ''))}x{c.get('block_n', '')}x"
            f"{c.get('block_k', '')}"
            f"w{c.get('num_warps', '')}s{c.get('num_stages', '')}")


# -- tiles ----------------------------------------------------------------------------------
def tiles(rec: Recorder, batches: list[int], input_size: int, dev: str, end: float) -> None:
    """Part 5: ``masked`` and ``channel_gemm`` with each config (their space, then
    ``EXTRA_TILES``) on every distinct spatial and channel block at rate 0.5, checked, then
    timed as CUDA-graph replays beside the static dense block's. CUDA only."""
    if dev != "cuda":
        rec.say("tiles: CUDA only, skipped")
        return
    from laudtriton.baseline import NO_MASKS
    from laudtriton.gpucheck.blocks import distinct_blocks
    from laudtriton.kernelchecks import exact_fp32
    from laudtriton.ops import fold_block, get_variant
    from laudtriton.ops.dense import dense_block
    from laudtriton.ops.synthetic import synthetic_masks
    from laudtriton.testing import TOLERANCE, assert_close

    listed = distinct_blocks(["laud_resnet50", "laud_resnet101"], input_size)
    items = itertools.product(batches, listed.values())
    for batch, (mode, block, spec1, _) in _timeboxed(rec, items, end, "tiles"):
        if mode not in ("spatial", "channel"):
            continue

        def one_block(batch=batch, mode=mode, block=block, spec1=spec1):
            spec = spec1.with_(batch=batch)
            v = get_variant("masked" if mode == "spatial" else "channel_gemm")
            if not v.supports(spec):
                return
            fb = fold_block(block, torch.float16, dev)
            x = torch.randn(batch, spec.in_channels, *spec.in_hw).relu().to(
                dev, torch.float16).contiguous(memory_format=torch.channels_last)
            masks = synthetic_masks(spec, 0.5, seed=1, device=dev)
            with torch.no_grad(), exact_fp32():
                ref = dense_block(fold_block(block, torch.float32, dev), x.float(), masks)
            g = rec.attempt(f"tiles dense {spec.short()}",
                            lambda fb=fb, x=x: graph_us(lambda: dense_block(fb, x, NO_MASKS),
                                                         dev))
            base = dict(part="tiles", mode=mode, spec=spec.short(), batch=batch)
            rec.row(**base, what="static dense", graph_us=math.nan if g is None else g)
            for cfg, extra in tile_configs(v, spec):
                if time.perf_counter() > end:
                    break

                def one(cfg=cfg, fb=fb, x=x, masks=masks, ref=ref, v=v):
                    with torch.no_grad():
                        out = v.run(fb, x, masks, cfg)
                    torch.cuda.synchronize()
                    assert_close(out.float(), ref.float(), TOLERANCE[torch.float16],
                                 f"{v.name} {cfg}")
                    return graph_us(lambda: v.run(fb, x, masks, cfg), dev)

                t = rec.attempt(f"tiles {spec.short()} {v.name} {_short(cfg)}", one)
                note = "extra " if extra else ""
                if t is not None and g:
                    note += f"ratio {t / g:.2f}"
                rec.row(**base, what=f"{v.name} {_short(cfg)}",
                        graph_us=math.nan if t is None else t, note=note)

        rec.attempt(f"tiles {mode} {spec1.short()} b{batch}", one_block)
        rec.save()


def tile_configs(v, spec) -> list[tuple[dict, bool]]:
    """Part 5's configs of variant ``v`` on ``spec``, each as ``v.run`` takes it, with
    whether it is an extra tile: its config space, then ``EXTRA_TILES[v.name]`` (one tile
    for all three convs of a spatial variant, whose configs name them)."""
    extras = EXTRA_TILES[v.name]
    if v.name == "masked":
        extras = [{st: c for st in ("conv1", "conv2", "conv3")} for c in extras]
    return [(c, False) for c in v.configs(spec)] + [(c, True) for c in extras]


# -- whole model ----------------------------------------------------------------------------
def whole(rec: Recorder, batches: list[int], input_size: int, dev: str, end: float,
          static_graphs: bool) -> None:
    """Part 3 (static_graphs False) or 4 (True): whole LAUD-ResNet-101 at rate 0.5."""
    import laudtriton
    from laudtriton.gpucheck.blocks import MODES
    from laudtriton.gpucheck.whole import _dense_model

    backend = "cuda" if dev == "cuda" else "cpu"
    dt = torch.float16 if dev == "cuda" else torch.float32
    for batch, (mode, gran) in _timeboxed(rec, itertools.product(batches, MODES), end,
                                          "whole models"):

        def one(batch=batch, mode=mode, gran=gran):
            model, x, xc = _network(mode, gran, batch, input_size, dev, dt)
            base = dict(part="whole", mode=mode, spec="laud_resnet101", batch=batch)
            if not static_graphs:
                dm = _dense_model(model, dev, dt)
                fn = lambda: dm(xc)  # noqa: E731
                g = rec.attempt(f"graph dense {mode} b{batch}",
                                lambda: graph_us(fn, dev))
                rec.row(**base, what="dense network", eager_us=eager_us(fn, dev),
                        **_dk(fn, dev), graph_us=math.nan if g is None else g)
                cm = laudtriton.compile(model, x, backend=backend, tune="cached",
                                        cache_dir=ROOT / "autotune_cache", dtype=dt)
                fn = lambda: cm(xc)  # noqa: E731
                rec.row(**base, what="compiled", eager_us=eager_us(fn, dev),
                        **_dk(fn, dev), note=_plan(cm))
                return
            keep = ["dense"] + [v for v in CAPTURABLE]
            cm = laudtriton.compile(model, x, backend=backend, tune="cached",
                                    cache_dir=ROOT / "autotune_cache", dtype=dt,
                                    dispatch="static", variants=keep)
            fn = lambda: cm(xc)  # noqa: E731
            g = rec.attempt(f"graph compiled static {mode} b{batch}",
                            lambda: graph_us(fn, dev))
            rec.row(**base, what="compiled static", eager_us=eager_us(fn, dev),
                    **_dk(fn, dev), graph_us=math.nan if g is None else g,
                    note=_plan(cm))

        rec.attempt(f"whole {mode} b{batch} {'static' if static_graphs else ''}", one)
        rec.save()


def _network(mode: str, gran: str, batch: int, input_size: int, dev: str, dt):
    """(LAUD-ResNet-101 calibrated to rate 0.5 and kept within float16, its float32 input,
    that input in ``dt``), as gpucheck's part 4 builds them."""
    from laudtriton.bench import build_model
    from laudtriton.gpucheck.whole import _within_float16
    from laudtriton.kernelchecks import exact_fp32
    from laudtriton.nn import calibrate_rates

    model = _within_float16(build_model("laud_resnet101", mode, gran)).to(dev)
    x = torch.randn(batch, 3, input_size, input_size).to(dev)
    with exact_fp32():
        calibrate_rates(model, x, 0.5)
    return model, x, x.to(dt)


def kernels(rec: Recorder, batches: list[int], input_size: int, dev: str, end: float,
            rows: int = 25) -> None:
    """Part 6: per mode and batch, the ``rows`` ops of the dense network and of the
    compiled model (shipped cache) with the most self time on the device (on CPU: on the
    host) over 3 calls, torch.profiler's tables, into ``kernels.txt``."""
    from torch.profiler import ProfilerActivity, profile

    import laudtriton
    from laudtriton.gpucheck.blocks import MODES
    from laudtriton.gpucheck.whole import _dense_model

    cuda = dev == "cuda"
    dt = torch.float16 if cuda else torch.float32
    act = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    path = rec.out / "kernels.txt"
    rec.out.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    for batch, (mode, gran) in _timeboxed(rec, itertools.product(batches, MODES), end,
                                          "kernels"):

        def one(batch=batch, mode=mode, gran=gran):
            model, x, xc = _network(mode, gran, batch, input_size, dev, dt)
            dm = _dense_model(model, dev, dt)
            cm = laudtriton.compile(model, x, backend="cuda" if cuda else "cpu",
                                    tune="cached", cache_dir=ROOT / "autotune_cache",
                                    dtype=dt)
            for name, fn in (("dense network", lambda: dm(xc)),
                             ("compiled", lambda: cm(xc))):
                with torch.no_grad():
                    for _ in range(2):
                        fn()
                    if cuda:
                        torch.cuda.synchronize()
                    with profile(activities=[act]) as prof:
                        for _ in range(3):
                            fn()
                        if cuda:
                            torch.cuda.synchronize()
                try:
                    table = prof.key_averages().table(sort_by=key, row_limit=rows,
                                                      max_name_column_width=70)
                except (AttributeError, KeyError):  # an older torch's name for it
                    table = prof.key_averages().table(sort_by="self_cuda_time_total",
                                                      row_limit=rows,
                                                      max_name_column_width=70)
                with open(path, "a") as f:
                    ran = f"; blocks ran {_plan(cm)}" if name == "compiled" else ""
                    f.write(f"== {mode} b{batch} {name} (3 calls{ran}) ==\n{table}\n\n")
            rec.say(f"kernels: {mode} b{batch} written")

        rec.attempt(f"kernels {mode} b{batch}", one)


def _dk(fn, dev) -> dict:
    d, k = device_us(fn, dev)
    return {"device_us": d, "kernels": k}


def _plan(cm) -> str:
    """The variants a compiled model's blocks chose at its example's rate, counted."""
    from collections import Counter

    names = Counter(run.variant for run in cm.last_stats or [])
    return " ".join(f"{k} x{v}" for k, v in names.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=float, default=300.0, help="seconds (default 300)")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--parts", default="1,2,3,4,5",
                   help="which parts to run, among 1-6 (default 1,2,3,4,5)")
    args = p.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
        parts = {int(s) for s in args.parts.split(",")}
    except ValueError:
        p.error(f"--batches {args.batches!r} and --parts {args.parts!r} take comma-separated "
                "ints")
    if min(batches) < 1 or not parts <= {1, 2, 3, 4, 5, 6} or not args.budget > 0:
        p.error("--batches must be >= 1, --parts among 1-6, --budget > 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_overhead: error: no CUDA device", file=sys.stderr)
        return 2
    rec = Recorder(Path(args.out), args.budget)
    rec.info["torch"] = torch.__version__
    if args.device == "cuda":
        rec.info["gpu"] = torch.cuda.get_device_name()
    torch.backends.cudnn.benchmark = True
    end = rec.t0 + args.budget
    if 1 in parts:
        rec.attempt("launch overhead", lambda: launch_overhead(rec, args.device))
        rec.save()
    if 3 in parts:  # the whole networks first: the figures that matter most
        whole(rec, batches, args.input_size, args.device, rec.t0 + 0.45 * args.budget,
              static_graphs=False)
    if 2 in parts:
        blocks(rec, batches, args.input_size, args.device, rec.t0 + 0.85 * args.budget)
    if 5 in parts:
        tiles(rec, batches, args.input_size, args.device, end)
    if 6 in parts:
        kernels(rec, batches, args.input_size, args.device, end)
    if 4 in parts:  # last: a capture that fails might leave CUDA unusable
        whole(rec, batches, args.input_size, args.device, end, static_graphs=True)
    rec.save()
    rec.say(f"done; {len(rec.rows)} rows, {len(rec.errors)} errors -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
