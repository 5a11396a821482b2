"""Where the time of a compiled LAUD model goes on a GPU: launch overhead, kernel time and
CUDA-graph replay, next to the static dense network's.

``laudtriton gpucheck`` times each block and network with CUDA events around eager calls
(``do_bench``). On a machine where launching a kernel costs more host time than the
kernel runs on the device (small blocks at batch 1), that measures the launches. This
script measures, in one run (``laudtriton.gpucheck.devicetime`` says how, and how the
three timings see the L2 cache):

1. the host time of one launch (an empty Triton kernel, a one-element torch op) and the
   device time per kernel of that op replayed from a CUDA graph;
2. for each distinct block of LAUD-ResNet-50/-101 (spatial 4-4-2-1, channel, layer) at
   rate 0.5 and each batch: the static dense block (out of place) and every variant
   (first config): ``eager`` (gpucheck's timing), ``device`` (the summed device time of
   the kernels, copies and fills of one call, torch.profiler, mean of 3 calls),
   ``kernels`` (their number per call) and, for the static dense block and the variants
   that never sync with the host (``gpu_blocks.CAPTURABLE``), ``graph`` (one CUDA-graph
   replay);
3. whole LAUD-ResNet-101 at rate 0.5 per mode and batch: the dense network (channels_last)
   and the compiled model (the shipped cache), eager and device time and kernels per call,
   then the dense network's graph replay;
4. the same networks compiled with ``dispatch="static"`` and only the variants that do not
   sync, eager and device, then their graph replay if the capture succeeds;
5. tiles: ``masked`` and ``channel_gemm`` with every config of their space plus larger
   tiles (``gpu_blocks.EXTRA_TILES``) on the distinct spatial and channel blocks, each
   checked against the float32 dense block first, timed as graph replays (CUDA only);
6. (only when asked) torch.profiler's tables of the ops with the most device time in the
   dense network and the compiled model, per mode and batch, into DIR/kernels.txt.

The parts run in the order 1, 3, 2, 4, 5, 6 (the whole networks first, the tiles' untested
configs late), each until its share of ``--budget`` (``SHARES``, over the parts asked
for) is spent; what a time box or a broken CUDA context leaves out is recorded as
skipped. Every measurement that fails is recorded as an error and the run goes on; after
one that leaves CUDA unusable it stops.

Run on a GPU from the source tree: ``PYTHONPATH=. python benchmarks/gpu_overhead.py --out
DIR``; writes DIR/overhead.csv (one row per measurement), DIR/overhead.json (launch
figures, errors, skips) and DIR/overhead.log after each item (an earlier run's outputs
there, kernels.txt included, are removed first). Parts 2-4 run float16 on CUDA;
``--device cpu`` runs the plumbing on CPU in float32 (no device time, no graphs, no
Triton variants) for the tests. Part 2's spec column names the dtype when not float32.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import sys
from collections import Counter
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (ROOT, HERE):  # run as a script from anywhere, or loaded by the tests
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from gpu_blocks import blocks, measured, tiles, timeboxed  # noqa: E402 - after the path

from laudtriton.gpucheck.devicetime import launch_costs, profiled  # noqa: E402
from laudtriton.gpucheck.record import TableRun  # noqa: E402
from laudtriton.tune.numbers import ascii_float, ascii_int  # noqa: E402

FIELDS = ("part", "mode", "spec", "batch", "what", "eager_us", "device_us", "kernels",
          "graph_us", "note")
# Each part's share of --budget (normalised over the parts asked for), in run order: on
# the H200 (session 38) parts 1-4 took 116 s in all and part 5 about 90 s at two batches.
SHARES = {1: 0.03, 3: 0.25, 2: 0.3, 4: 0.12, 5: 0.2, 6: 0.1}
OUTPUTS = ("overhead.csv", "overhead.json", "overhead.log", "kernels.txt")  # removed first


class Recorder(TableRun):
    """The run's rows (``FIELDS``), errors and skips; each row is printed as it comes."""

    def __init__(self, out: Path, budget: float, device: str) -> None:
        super().__init__(out, budget, device, FIELDS, "overhead")

    def row(self, **kw: object) -> None:
        """Append a row of ``FIELDS`` (missing ones empty) and print it."""
        r = {k: kw.get(k, "") for k in FIELDS}
        self.rows.append(r)
        self.say(f"{r['part']:<6} {r['mode']:<8} b{r['batch']:<3} {str(r['spec'])[:44]:<44} "
                 f"{r['what']:<22} eager {_us(r['eager_us'])} device {_us(r['device_us'])} "
                 f"kernels {r['kernels']!s:>4} graph {_us(r['graph_us'])} {r['note']}")


def _us(v: object) -> str:
    return f"{v:8.1f}us" if isinstance(v, float) and math.isfinite(v) else f"{'-':>10}"


# -- 1. launches ------------------------------------------------------------------------------
def launches(rec: Recorder, dev: str) -> None:
    """Part 1: ``devicetime.launch_costs`` into ``rec.info``."""
    costs = rec.attempt("launch costs", lambda: launch_costs(dev))
    if costs:
        rec.info.update(costs)
        rec.say("launch: " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()
                                       if isinstance(v, float)))


# -- 3, 4. whole networks ---------------------------------------------------------------------
def whole(rec: Recorder, batches: list[int], input_size: int, dev: str, end: float,
          static_graphs: bool) -> None:
    """Part 3 (static_graphs False) or 4 (True): whole LAUD-ResNet-101 at rate 0.5, each
    item's eager and device timings before its graph capture."""
    import laudtriton
    from laudtriton.gpucheck.blocks import MODES
    from laudtriton.gpucheck.whole import build_network, dense_model

    dt = torch.float16 if dev == "cuda" else torch.float32
    part = 4 if static_graphs else 3
    for batch, (mode, gran) in timeboxed(rec, itertools.product(batches, MODES), end,
                                         f"part {part}"):
        made = rec.attempt(f"whole {mode} b{batch} network",
                           lambda mode=mode, gran=gran, batch=batch: build_network(
                               mode, gran, batch, input_size, dev))
        if made is None:
            continue
        model, x = made
        xc = x.to(dt)
        base = dict(part="whole", mode=mode, spec="laud_resnet101", batch=batch)
        opts = dict(backend="cuda" if dev == "cuda" else "cpu", tune="cached",
                    cache_dir=ROOT / "autotune_cache", dtype=dt)
        if static_graphs:
            items = [("compiled static", lambda: laudtriton.compile(
                model, x, dispatch="static", variants=["dense", "masked", "channel_gemm"],
                **opts), True)]
        else:
            items = [("dense network", lambda: dense_model(model, dev, dt), True),
                     ("compiled", lambda: laudtriton.compile(model, x, **opts), False)]
        for what, build, graph in items:
            net = rec.attempt(f"whole {mode} b{batch} {what}: build", build)
            if net is None:
                continue
            rec.row(**base, what=what, **measured(rec, f"whole {mode} b{batch} {what}",
                                                   lambda net=net: net(xc), dev, graph),
                    note=_ran(net))
        rec.write()


def _ran(net: object) -> str:
    """The variants a compiled model's blocks ran in its last forward, counted ("" for
    another module)."""
    stats = getattr(net, "last_stats", None) or []
    return " ".join(f"{k} x{v}" for k, v in Counter(run.variant for run in stats).items())


# -- 6. profiler tables -----------------------------------------------------------------------
def kernels(rec: Recorder, batches: list[int], input_size: int, dev: str, end: float,
            rows: int = 25) -> None:
    """Part 6: per mode and batch, the ``rows`` ops of the dense network and of the
    compiled model (shipped cache) with the most self time on the device (on CPU: on the
    host) over 3 calls after 2, torch.profiler's tables, appended to ``kernels.txt``."""
    import laudtriton
    from laudtriton.gpucheck.blocks import MODES
    from laudtriton.gpucheck.whole import build_network, dense_model

    cuda = dev == "cuda"
    dt = torch.float16 if cuda else torch.float32
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    path = rec.out / "kernels.txt"
    path.write_text("")

    def table(fn) -> str:
        prof = profiled(fn, dev, calls=3, warmup=2)
        try:
            return prof.key_averages().table(sort_by=key, row_limit=rows,
                                             max_name_column_width=70)
        except (AttributeError, KeyError):  # an older torch's name for the column
            return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows,
                                             max_name_column_width=70)

    for batch, (mode, gran) in timeboxed(rec, itertools.product(batches, MODES), end,
                                         "part 6"):

        def one(batch=batch, mode=mode, gran=gran):
            model, x = build_network(mode, gran, batch, input_size, dev)
            xc = x.to(dt)
            dm = dense_model(model, dev, dt)
            cm = laudtriton.compile(model, x, backend="cuda" if cuda else "cpu",
                                    tune="cached", cache_dir=ROOT / "autotune_cache",
                                    dtype=dt)
            for name, fn in (("dense network", lambda: dm(xc)), ("compiled", lambda: cm(xc))):
                text = table(fn)
                ran = f"; blocks ran {_ran(cm)}" if name == "compiled" else ""
                with open(path, "a") as f:
                    f.write(f"== {mode} b{batch} {name} (3 calls{ran}) ==\n{text}\n\n")
            rec.say(f"kernels: {mode} b{batch} written")

        rec.attempt(f"kernels {mode} b{batch}", one)
        rec.write()


# -- the command ------------------------------------------------------------------------------
def _ints(p: argparse.ArgumentParser, flag: str, text: str, accepted: str, ok) -> list[int]:
    """The comma-separated ints of ``text`` (given with ``flag``), or an argparse error
    naming the flag, the value and what is accepted."""
    try:
        vals = [ascii_int(t) for t in text.split(",")]
    except ValueError:
        vals = []
    if not vals or not all(ok(v) for v in vals) or len(set(vals)) != len(vals):
        p.error(f"{flag} {text!r}: accepted {accepted}, comma-separated, each once")
    return vals


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (None: sys.argv[1:]), run the parts asked for and write the results;
    returns 0, or 2 with one line on stderr when ``--device cuda`` finds no GPU. A bad
    option, an ``--out`` that cannot be made or written included, exits through argparse
    (code 2) before any work."""
    from laudtriton.tune.keys import check_dir
    from laudtriton.tune.options import check_input_size
    from laudtriton.tune.paths import make_writable_dir

    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--out", required=True, help="the output folder")
    p.add_argument("--budget", type=ascii_float, default=300.0, help="seconds (default 300)")
    p.add_argument("--batches", default="1,64", help="batch sizes (default 1,64)")
    p.add_argument("--input-size", type=ascii_int, default=224, help="image size (default 224)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--parts", default="1,2,3,4,5",
                   help="which parts to run, among 1-6 (default 1,2,3,4,5)")
    args = p.parse_args(argv)
    batches = _ints(p, "--batches", args.batches, "ints >= 1", lambda b: b >= 1)
    parts = set(_ints(p, "--parts", args.parts, "parts 1 to 6", lambda q: q in SHARES))
    if not (math.isfinite(args.budget) and args.budget > 0):
        p.error(f"--budget {args.budget:g}: accepted a number of seconds > 0")
    try:
        check_input_size(args.input_size)
        check_dir(args.out, "--out")
    except ValueError as e:
        p.error(str(e))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_overhead: error: no CUDA device", file=sys.stderr)
        return 2
    try:  # made and written to before any work (check_dir passes /proc/x: mkdir fails)
        make_writable_dir(args.out, "--out")
    except ValueError as e:
        p.error(str(e))
    rec = Recorder(Path(args.out).expanduser(), args.budget, args.device)
    # an earlier run's outputs in --out: its log was appended to, its kernels.txt (part 6
    # not asked for or not reached) and, until this run's first write, its CSV and JSON
    # were left as if this run's
    for name in OUTPUTS:
        with contextlib.suppress(FileNotFoundError):
            (rec.out / name).unlink()
    rec.info["torch"] = torch.__version__
    if args.device == "cuda":
        rec.info["gpu"] = torch.cuda.get_device_name()
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = args.device == "cuda" or benchmark  # dense's best
    run = {1: lambda end: launches(rec, args.device),
           3: lambda end: whole(rec, batches, args.input_size, args.device, end, False),
           2: lambda end: blocks(rec, batches, args.input_size, args.device, end),
           4: lambda end: whole(rec, batches, args.input_size, args.device, end, True),
           5: lambda end: tiles(rec, batches, args.input_size, args.device, end),
           6: lambda end: kernels(rec, batches, args.input_size, args.device, end)}
    total = sum(SHARES[q] for q in parts)
    end = rec.t0
    try:
        for q in (q for q in SHARES if q in parts):  # SHARES lists the run order
            end += args.budget * SHARES[q] / total
            if rec.broken is not None:
                rec.skip(f"part {q}", f"CUDA broke at {rec.broken}")
                continue
            rec.attempt(f"part {q}", lambda q=q, end=end: run[q](end))
            rec.write()
    finally:
        torch.backends.cudnn.benchmark = benchmark
    rec.write()
    rec.say(f"done; {len(rec.rows)} rows, {len(rec.errors)} errors, {len(rec.skipped)} "
            f"skipped -> {rec.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
