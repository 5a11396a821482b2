"""Side-by-side benchmarks: the honest dense baseline vs the compiled model, per block and
for the whole network, in one run, as ratios (``laudtriton bench``).

The dense baseline is the same network with the same folded weights, no maskers and no
masks, run in the faster of NCHW and channels_last (measured here, per block and for the
whole model). Times are medians of interleaved runs, dense and sparse alternating. The
whole model is timed three ways: on one input repeated (masks fixed), on that input with
its masks given (no maskers run), and on a new input at every call (masks change, as in a
stream of images); the official masked-dense reference is timed beside them.

FLOPs ratios count the compiled work with its maskers (the official accounting) over the
dense work without maskers, as the dense baseline runs: the whole network's
(``ModelStats.flops_ratio``), and per block the block's FLOPs over its dense FLOPs less
its maskers' (the official per-block ratio, ``BlockStats.flops_ratio``, divides by the
block with its maskers). efficiency = FLOPs ratio / time ratio.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from . import runtime
from .baseline import NO_MASKS, DenseModel, dense_forms, nchw_dense_block, time_against_dense
from .compile import compile
from .compiled import CompiledModel
from .nn import calibrate_rates, laud_resnet50, laud_resnet101
from .nn.resnet import LaudResNet
from .ops.dense import dense_block
from .testing import assert_close, randomize_bn
from .tune.timing import interleaved_medians

CL = torch.channels_last

MODELS = {"laud_resnet50": laud_resnet50, "laud_resnet101": laud_resnet101}
# set in the environment of the children of ``run_processes``: their --csv is a temporary
# file handed to the parent, which reports the rows itself
HANDOFF_ENV = "LAUDTRITON_BENCH_HANDOFF"


@dataclass
class BenchRow:
    """One row of the bench table (times in ms)."""

    model: str
    mode: str
    granularity: str
    batch: int
    rate: float
    block: str
    spec: str
    variant: str
    dense_ms: float
    sparse_ms: float
    ratio: float
    flops_ratio: float
    efficiency: float
    runs: tuple[float, ...] = ()  # whole-model rows: the ratio of every repeat, in order
    allocator: str = "default"  # runtime.allocator_setting() during the run
    process: int = 1  # which process of ``run_processes`` measured it
    # the run's other settings; "" and 0 in rows read from CSVs written before session 20
    channel_granularity: str = ""  # as given ("2", "2-2-4-4")
    threads: int = 0  # torch.get_num_threads() during the run
    tune: str = ""  # compile's tune mode
    reps: int = 0  # timed runs per median (0 in rows read from CSVs before session 26)


def build_model(name: str, mode: str, granularity: str, channel_granularity: int | str = 1,
                seed: int = 0) -> LaudResNet:
    """A LAUD model with random weights and random (non-trivial) BN statistics.

    Raises:
        ValueError: an unknown model name, or a mode or granularity the model refuses.
    """
    if name not in MODELS:
        raise ValueError(f"model {name!r} unknown; accepted: {', '.join(MODELS)}")
    torch.manual_seed(seed)
    model = MODELS[name](mode=mode, granularity=granularity,
                         channel_granularity=channel_granularity)
    return randomize_bn(model).eval()


def _block_rows(model, cm: CompiledModel, x, meta: dict, reps: int) -> list[BenchRow]:
    """Per block: dense (best format) vs the compiled block (maskers + chosen variant),
    each on the block's recorded input and out of place (a new output tensor); inside
    the whole model both run in place instead (the input is overwritten), which the
    whole-model rows time."""
    rows = []
    inputs = {}
    hooks = [blk.register_forward_pre_hook(
        lambda m, a, i=i: inputs.__setitem__(i, a[0].detach().clone()))
        for i, blk in enumerate(cm.blocks)]
    with torch.no_grad():
        cm(x)
    for h in hooks:
        h.remove()
    model(x)  # reference stats (FLOPs ratios) on the same input
    stats = model.last_stats.blocks
    for i, blk in enumerate(cm.blocks):
        xin = inputs[i]
        fb = blk.fb
        x_nchw = xin.contiguous()
        # the block as the model runs it, out of place: its maskers and chosen variant,
        # without the finiteness test a block called on its own makes of its input (the
        # model makes it once, of the image; the dense block makes none)
        fns = [lambda: nchw_dense_block(fb, x_nchw),
               lambda: dense_block(fb, xin, NO_MASKS),
               lambda: blk(xin, check_finite=False)]
        with torch.no_grad():
            t_nchw, t_cl, t_sparse = interleaved_medians(fns, warmup=2, reps=reps)
        dense = min(t_nchw, t_cl)
        # against the dense block without maskers, which dense_ms times (the official
        # per-block ratio, BlockStats.flops_ratio, divides by the block with its maskers)
        fr = float(stats[i].flops) / (stats[i].dense_flops - stats[i].masker_flops)
        ratio = t_sparse / dense
        rows.append(BenchRow(**meta, block=blk.name, spec=blk.spec.short(),
                             variant=blk.last_run.variant, dense_ms=dense * 1e3,
                             sparse_ms=t_sparse * 1e3, ratio=ratio, flops_ratio=fr,
                             efficiency=fr / ratio))
    return rows


def bench(model_name: str, mode: str, granularity: str, rates: Iterable[float], batch: int = 1,
          channel_granularity: int | str = 1, reps: int = 20, tune: str = "off",
          blocks: bool = True, repeat: int = 1, allocator: str = "default",
          log: Callable[[str], object] = print) -> list[BenchRow]:
    """Benchmark dense vs compiled for each rate; returns the rows (per block + 'model').

    allocator: "retain" calls ``runtime.retain_freed_memory()`` first (process-wide, for
    both the dense and the compiled model: at batch 8 glibc's default page-faults every
    forward's activations in again); "default" leaves the C allocator as it is, and
    refuses to run once this process retains. Each row records the setting in effect.
    repeat: how many times the whole-model rows are timed (same process, same compiled
    model); each such row is the run with the median ratio (for an even count the upper
    middle one, less favourable to compiled), with every run's ratio in ``runs``. The
    new-input rows of later repeats continue the stream, so the engine's per-pattern
    caches are warmer in them.

    Raises:
        ValueError: repeat < 1, an unknown model or allocator, allocator "default" once
            this process retains freed memory, or a mode or granularity the model refuses.
        AssertionError: when the compiled logits are not the reference's (checked before
            anything is timed).
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    # building the first model validates the configuration before the allocator,
    # process-wide, changes
    first = build_model(model_name, mode, granularity, channel_granularity)
    setting = _set_allocator(allocator, log)
    rows = []
    for i, rate in enumerate(rates):
        model = first if i == 0 else build_model(model_name, mode, granularity,
                                                 channel_granularity)
        x = torch.randn(batch, 3, 224, 224)
        calibrate_rates(model, x, rate)
        cm = compile(model, x, backend="cpu", tune=tune)
        meta = dict(model=model_name, mode=mode, granularity=str(granularity), batch=batch,
                    rate=rate, allocator=setting, channel_granularity=str(channel_granularity),
                    threads=torch.get_num_threads(), tune=tune, reps=reps)
        _check_logits(model, cm, x)  # before anything is timed
        dense = dense_forms(model)
        if blocks:
            rows += _block_rows(model, cm, x, meta, reps)
        runs = []
        for i in range(repeat):
            if repeat > 1:
                log(f"rate {rate}: whole model, run {i + 1} of {repeat}")
            runs.append(_model_rows(model, cm, dense, x, meta, reps))
        rows += [_median_run([r[k] for r in runs]) for k in range(len(runs[0]))]
        log(format_rows([r for r in rows if r.rate == rate]))
    return rows


def _set_allocator(allocator: str, log) -> str:
    """Apply the ``allocator`` choice of ``bench``; returns the setting in effect."""
    if allocator not in runtime.SETTINGS:
        raise ValueError(f"allocator must be 'retain' or 'default', got {allocator!r}")
    if allocator == "default":
        if runtime.allocator_setting() != "default":
            raise ValueError("allocator 'default' asked, but this process already retains "
                             "freed memory (runtime.retain_freed_memory cannot be undone); "
                             "run the benchmark in a new process")
        log("allocator: the C library's default")
        return "default"
    if runtime.retain_freed_memory():
        log("allocator: glibc keeps freed blocks up to 32 MiB (runtime.retain_freed_memory)")
        return "retain"
    log("allocator: not glibc, left at its default (retain asked)")
    return "default"


def _check_logits(model, cm: CompiledModel, x) -> None:
    """Raise AssertionError unless the compiled logits on x, with its maskers and with
    the masks they gave (``CompiledModel.forward(x, masks)``), are the reference's
    (``testing.assert_close``): ``bench`` times nothing before this passes."""
    with torch.no_grad():
        ref = model(x)
        assert_close(cm(x), ref, name="compiled logits (bench)")
        given = [blk.last_masks for blk in cm.blocks]
        assert_close(cm(x, masks=given), ref, name="compiled logits, masks given (bench)")


def _model_rows(model, cm: CompiledModel, dense: dict[str, DenseModel], x, meta: dict,
                reps: int) -> list[BenchRow]:
    """The whole-model rows: compiled on x repeated; the same with the masks of that
    input given (``CompiledModel.forward(x, masks)``: every block's variant runs, no
    masker does: the difference to the first row is what the maskers and the masks'
    construction cost); compiled on a new input every call; the official masked-dense
    reference. Each against the faster of the dense forms (``dense_forms``), both timed
    in the same interleaved run as the first, second and last rows.

    The logits are checked first, once (``_check_logits``); the masks given are timed
    unchecked (``check_masks=False``): the row times the variants.
    """
    with torch.no_grad():
        cm(x)
        given = [blk.last_masks for blk in cm.blocks]
        fmt, t_dense, (t_comp, t_given, t_ref) = time_against_dense(
            {n: lambda m=m: m(x) for n, m in dense.items()},
            [lambda: cm(x), lambda: cm(x, masks=given, check_masks=False),
             lambda: model(x)], warmup=2, reps=reps)
        model(x)
    stats = model.last_stats
    fr = float(stats.flops_ratio)
    # with the masks given no masker runs: their FLOPs are left out of that row's ratio
    fr_given = float(stats.flops - sum(b.masker_flops for b in stats.blocks)) / stats.dense_flops

    def row(spec, variant, t, fr=fr):
        return BenchRow(**meta, block="model", spec=spec, variant=variant,
                        dense_ms=t_dense * 1e3, sparse_ms=t * 1e3, ratio=t / t_dense,
                        flops_ratio=fr, efficiency=fr / (t / t_dense))

    return [row(f"dense={fmt}", "compiled", t_comp),
            row("masks given, no maskers run", "compiled", t_given, fr_given),
            _fresh_row(model, cm, dense, x.shape[0], meta, reps),
            row("official masked-dense reference", "reference", t_ref)]


def _median_run(rows: list[BenchRow]) -> BenchRow:
    """The row with the median ratio, all ratios in runs; for an even count the upper of
    the two middle ones (the one less favourable to the compiled model)."""
    mid = sorted(rows, key=lambda r: r.ratio)[len(rows) // 2]
    return replace(mid, runs=tuple(r.ratio for r in rows))


def _fresh_row(model, cm: CompiledModel, dense: dict[str, DenseModel], batch: int,
               meta: dict, reps: int) -> BenchRow:
    """The whole model on a new random input at every call (dense and compiled get the
    same sequence), as in a stream of images: masks change between calls, so per-pattern
    state (the ``slice`` variant's sliced and packed weights, packings per row count) is
    built in the timed call when the pattern is new. ``reps`` untimed calls on other new
    inputs come first (the stream's warm-up: the row counts' packings, mostly; spatial
    LAUD-ResNet-50 at rate 0.5 measured 1.29 / 1.21 / 1.19x dense after 2 / 20 / 60 of
    them). Dense: the faster of its forms (``dense_forms``) on the same sequence. FLOPs
    ratio: mean over the timed inputs."""
    warmup = reps
    xs = [torch.randn(batch, 3, 224, 224) for _ in range(warmup + reps)]

    def stream(f):  # f on the next input of its own pass over xs
        it = iter(xs)
        return lambda: f(next(it))

    with torch.no_grad():
        _, t_dense, (t_comp,) = time_against_dense(
            {n: stream(m) for n, m in dense.items()}, [stream(cm)], warmup=warmup, reps=reps)
        frs = []
        for x in xs[warmup:]:
            model(x)
            frs.append(float(model.last_stats.flops_ratio))
    fr = sum(frs) / len(frs)
    ratio = t_comp / t_dense
    return BenchRow(**meta, block="model", spec="fresh input every call", variant="compiled",
                    dense_ms=t_dense * 1e3, sparse_ms=t_comp * 1e3, ratio=ratio,
                    flops_ratio=fr, efficiency=fr / ratio)


def rate_text(rate: float) -> str:
    """A rate as the tables print it: two decimals (0.50), more where two would round it
    (0.125, not 0.12)."""
    two = f"{rate:.2f}"
    return two if float(two) == rate else f"{rate:g}"


def format_rows(rows: list[BenchRow]) -> str:
    """The bench table of ``rows``: a header, a rule, then one line per row (times in ms,
    the rate as ``rate_text`` prints it, the spec column as wide as the longest spec and
    at least 34); a row of more than one run ends with the ratio of every run."""
    w = max([34, *(len(r.spec) for r in rows)])  # the whole spec, as the CSV has it
    head = (f"{'rate':>5} {'block':<10} {'spec':<{w}} {'variant':<10} {'dense ms':>9} "
            f"{'sparse ms':>9} {'ratio':>6} {'FLOPs':>6} {'eff':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{rate_text(r.rate):>5} {r.block:<10} {r.spec:<{w}} {r.variant:<10} "
                     f"{r.dense_ms:>9.3f} {r.sparse_ms:>9.3f} {r.ratio:>6.3f} "
                     f"{r.flops_ratio:>6.3f} {r.efficiency:>5.2f}"
                     + (f"  runs {', '.join(f'{v:.3f}' for v in r.runs)}"
                        if len(r.runs) > 1 else ""))
    return "\n".join(lines)


def write_csv(rows: list[BenchRow], path: str | Path) -> None:
    """Write ``rows`` to the CSV file ``path`` (replaced if it exists): a column per
    BenchRow field, ``runs`` joined by ';' (``read_csv`` reads it back); no rows, the
    header alone."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(BenchRow)])
        w.writeheader()
        for r in rows:
            w.writerow({**asdict(r), "runs": ";".join(repr(v) for v in r.runs)})


def read_csv(path: str | Path) -> list[BenchRow]:
    """The rows ``write_csv`` wrote to ``path`` (a column a CSV lacks, from before it
    existed, reads as its default: ``process`` 1, ``channel_granularity`` "", ``threads``
    0, ``tune`` "", ``reps`` 0)."""
    out = []
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            kw = {}
            for fd in fields(BenchRow):  # fd.type is the annotation's text
                v = rec.get(fd.name)
                if v is None:
                    continue
                if fd.name == "runs":
                    kw["runs"] = tuple(float(t) for t in v.split(";") if t)
                else:
                    kw[fd.name] = {"int": int, "float": float, "str": str}[fd.type](v)
            out.append(BenchRow(**kw))
    return out


# -- several processes ---------------------------------------------------------------
# On the shared 2-core VM of BENCHMARKS.md one process's whole-model ratios can sit
# apart from the next one's (spatial ResNet-101 at rate 0.5: 1.01 in some processes,
# 1.09 in others, each within 0.02), so a figure worth quoting comes from several.

class ProcessFailed(RuntimeError):
    """A child ``laudtriton bench`` process of ``run_processes`` exited with an error."""


def run_processes(argv: list[str], processes: int, log: Callable[[str], object] = print,
                  python: str = sys.executable, verbose: bool = False) -> list[BenchRow]:
    """``laudtriton bench <argv>`` in ``processes`` fresh Python processes, one after
    another (their output goes to this process's stdout); per-block rows come from the
    first one only (the others run ``--model-only``). Returns every process's rows, each
    with ``process`` set (1-based).

    argv: bench's options without ``--csv`` and ``--processes``. verbose: the children
    log at INFO level (``laudtriton -v``).

    Raises:
        ValueError: processes < 1, or argv holds --csv or --processes.
        ProcessFailed: a child exits with a non-zero status.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    bad = [a for a in argv if a.split("=")[0] in ("--csv", "--processes")]
    if bad:
        raise ValueError(f"argv must not hold {bad[0].split('=')[0]}: run_processes sets it")
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="laudtriton-bench-") as tmp:
        for i in range(1, processes + 1):
            path = Path(tmp) / f"process{i}.csv"
            cmd = [python, "-m", "laudtriton", *(["-v"] if verbose else []), "bench", *argv,
                   "--csv", str(path)]
            if i > 1 and "--model-only" not in argv:
                cmd.append("--model-only")
            log(f"== process {i} of {processes}")
            sys.stdout.flush()
            rc = subprocess.run(cmd, env={**os.environ, HANDOFF_ENV: "1"}).returncode
            if rc != 0:
                raise ProcessFailed(f"process {i} of {processes} exited with status {rc} "
                                    "(its output is above)")
            rows += [replace(r, process=i) for r in read_csv(path)]
    return rows


def process_summary(rows: list[BenchRow]) -> str:
    """The whole-model rows of several processes: per (rate, row), the median of every
    run's ratio over all processes (for an even count the upper of the two middle runs,
    as ``_median_run``: a measured run, the one less favourable to the compiled model),
    their range and count, and each process's reported (median-run) ratio in process
    order."""
    groups: dict[tuple[float, str], list[BenchRow]] = {}
    for r in rows:
        if r.block == "model":  # "dense=<format>": the format may differ by process
            groups.setdefault((r.rate, r.spec.split("=")[0]), []).append(r)
    procs = sorted({r.process for r in rows})
    lines = [f"whole model over {len(procs)} processes: the median of every run's ratio "
             "(range, runs), then each process's median run",
             f"{'rate':>5} {'row':<34} {'median (range, runs)':<26} per process"]
    for (rate, prefix), rs in groups.items():
        rs = sorted(rs, key=lambda r: r.process)
        every = [v for r in rs for v in (r.runs or (r.ratio,))]
        mid = (f"{sorted(every)[len(every) // 2]:.3f} ({min(every):.3f}-{max(every):.3f}, "
               f"{len(every)})")
        labels = list(dict.fromkeys(r.spec for r in rs))  # the dense forms the processes
        label = labels[0] if len(labels) == 1 else (  # timed against, each named
            prefix + "=" + "/".join(lb.split("=", 1)[1] for lb in labels))
        lines.append(f"{rate_text(rate):>5} {label:<34} {mid:<26} "
                     + " ".join(f"{r.ratio:.3f}" for r in rs))
    return "\n".join(lines)
