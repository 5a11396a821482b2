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
block with its maskers); the whole-model row with the masks given, where no masker runs,
leaves the maskers' FLOPs out. efficiency = FLOPs ratio / time ratio.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Iterable
from dataclasses import replace

import torch

from . import runtime
from .baseline import NO_MASKS, DenseModel, dense_forms, nchw_dense_block, time_against_dense
from .bench_report import BenchRow, format_rows, rate_text
from .compile import compile
from .compiled import CompiledModel
from .nn import calibrate_rates, laud_resnet50, laud_resnet101
from .nn.calibrate import realised_rate
from .nn.resnet import LaudResNet
from .ops.dense import dense_block
from .planning import TUNE_MODES
from .progress import Progress
from .testing import assert_close, randomize_bn
from .tune.layout_options import layout_texts
from .tune.options import check_rates
from .tune.timing import interleaved_medians

CL = torch.channels_last

MODELS = {"laud_resnet50": laud_resnet50, "laud_resnet101": laud_resnet101}
# bench and demo say so when the calibrated masks realise, on average over the blocks or
# in a block, a rate this far from the asked one (a layer gate at batch 1 is on or off:
# 0.5 lands on 0, 0.75 on 1; ``calibration_note``)
RATE_SLACK = 0.05


def build_model(name: str, mode: str, granularity: str, channel_granularity: int | str = 1,
                seed: int = 0) -> LaudResNet:
    """A LAUD model with random weights and random (non-trivial) BN statistics, drawn
    from torch's generator seeded with ``seed`` (the same model for the same arguments),
    which is then restored: the caller's random numbers are as they were.

    Raises:
        ValueError: an unknown model name, or a mode or granularity the model refuses.
    """
    with torch.random.fork_rng(devices=[]):
        return _seeded_model(name, mode, granularity, channel_granularity, seed)


def _seeded_model(name: str, mode: str, granularity: str, channel_granularity: int | str,
                  seed: int) -> LaudResNet:
    """``build_model``'s model, leaving torch's generator seeded with ``seed`` and past
    the model's draws (``bench`` draws its input from there, inside its own fork)."""
    if name not in MODELS:
        raise ValueError(f"model {name!r} unknown; accepted: {', '.join(MODELS)}")
    torch.manual_seed(seed)
    model = MODELS[name](mode=mode, granularity=granularity,
                         channel_granularity=channel_granularity)
    return randomize_bn(model).eval()


def realised_rates(model: LaudResNet) -> list[float]:
    """Per dynamic block of ``model``, the rate its last forward's masks realised, as
    ``calibrate_rates`` reports it (``nn.calibrate.realised_rate``)."""
    return [realised_rate(b, s)
            for (_, b), s in zip(model.blocks(), model.last_stats.blocks, strict=True)]


def mean_rate(model: LaudResNet) -> float:
    """The mean over the blocks of ``realised_rates(model)``."""
    rates = realised_rates(model)
    return sum(rates) / len(rates)


def calibration_note(model: LaudResNet, realised: list[float], rate: float,
                     batch: int) -> str | None:
    """What bench and demo say when ``model``'s masks, just calibrated to ``rate`` on a
    batch of ``batch`` (``realised``: the rates ``calibrate_rates`` returned), realise
    another rate: on average over the blocks, or in some blocks (``rates_off``), more
    than ``RATE_SLACK`` from it; None when they do not."""
    mean = sum(realised) / len(realised)
    off = rates_off(model, realised, rate)
    why = ([f"the calibrated masks realise {mean:.3f} on average over the blocks"]
           if abs(mean - rate) > RATE_SLACK else [])
    if off:  # a stage of one grid cell or one channel group: all or nothing
        why.append(f"{len(off)} of the {len(realised)} blocks realise a rate more than "
                   f"{RATE_SLACK} from it ({', '.join(off[:4])}"
                   f"{', ...' if len(off) > 4 else ''})")
    if not why:
        return None
    return (f"rate {rate_text(rate)}: {'; '.join(why)} (each block lands on round(rate x N) "
            "of its N decisions: grid cells, channel groups, or for a layer gate the "
            f"batch's samples, {batch} here)")


def rates_off(model: LaudResNet, realised: list[float], rate: float) -> list[str]:
    """Per block of ``model`` just calibrated to ``rate`` (``realised``: the rates
    ``calibrate_rates`` returned), "<name> <rate>" where its masks realise a rate more than
    ``RATE_SLACK`` from ``rate``: the rate calibrate_rates reports (the spatial one, or the
    channel one in a channel block), and in a block with a spatial and a channel masker
    ("both") the channel rate too, read from the block's calibration forward, which
    calibrate_rates does not report (one channel group is all or nothing: at rate 0.5 it
    lands on 0); both are labelled there ("layer1.0 channel 0.000")."""
    out = []
    for (name, blk), r in zip(model.blocks(), realised, strict=True):
        both = blk.masker_spatial is not None and blk.masker_channel is not None
        found = []
        if abs(r - rate) > RATE_SLACK:
            found.append(("spatial " if both else "") + f"{r:.3f}")
        if both:
            c = float(blk.last_stats.channel_rate)
            if abs(c - rate) > RATE_SLACK:
                found.append(f"channel {c:.3f}")
        if found:
            out.append(f"{name} {' and '.join(found)}")
    return out


def _block_rows(model, cm: CompiledModel, x, meta: dict, reps: int,
                bar: Progress | None = None) -> list[BenchRow]:
    """Per block: dense (best format) vs the compiled block (maskers + chosen variant),
    each on the block's recorded input and out of place (a new output tensor); inside
    the whole model both run in place instead (the input is overwritten), which the
    whole-model rows time. bar: updated after each block."""
    rows = []
    inputs = {}
    hooks = [blk.register_forward_pre_hook(
        lambda m, a, i=i: inputs.__setitem__(i, a[0].detach().clone()))
        for i, blk in enumerate(cm.blocks)]
    with torch.no_grad():
        cm(x)
    for h in hooks:
        h.remove()
    model(x)  # reference stats (FLOPs ratios, rates) on the same input
    stats = model.last_stats.blocks
    realised = realised_rates(model)
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
        form = "nchw" if t_nchw <= t_cl else "channels_last"  # (dense_forms' names)
        # against the dense block without maskers, which dense_ms times (the official
        # per-block ratio, BlockStats.flops_ratio, divides by the block with its maskers)
        fr = float(stats[i].flops) / (stats[i].dense_flops - stats[i].masker_flops)
        ratio = t_sparse / dense
        rows.append(BenchRow(**meta, block=blk.name, spec=blk.spec.short(),
                             variant=blk.last_run.variant, dense_ms=dense * 1e3,
                             sparse_ms=t_sparse * 1e3, ratio=ratio, flops_ratio=fr,
                             efficiency=fr / ratio, realised_rate=realised[i],
                             dense_form=form))
        if bar is not None:
            bar.update(blk.name)
    return rows


# bench's models and inputs are drawn after build_model's seed 0, in a fork of torch's
# generator: the caller's is restored when bench returns or raises
@torch.random.fork_rng(devices=[])
def bench(model_name: str, mode: str, granularity: str, rates: Iterable[float], batch: int = 1,
          channel_granularity: int | str = 1, reps: int = 20, tune: str = "off",
          blocks: bool = True, repeat: int = 1, allocator: str = "default",
          log: Callable[[str], object] = print, progress: bool = True) -> list[BenchRow]:
    """Benchmark dense vs compiled for each rate; returns the rows (per block + 'model').

    rates: target rates in [0, 1], run in increasing order, each once (rounded to 6
    decimals and deduplicated, as ``--rates`` gives them: ``tune.options.check_rates``).
    allocator: "retain" calls ``runtime.retain_freed_memory()`` first (process-wide, for
    both the dense and the compiled model: at batch 8 glibc's default page-faults every
    forward's activations in again); "default" leaves the C allocator as it is, and
    refuses to run once this process retains. Each row records the setting in effect.
    repeat: how many times the whole-model rows are timed (same process, same compiled
    model); each such row is the run with the median ratio (for an even count the upper
    middle one, less favourable to compiled), with every run's ratio in ``runs``. The
    new-input rows of later repeats continue the stream, so the engine's per-pattern
    caches are warmer in them.
    The models and inputs are the same at every call (``build_model``'s seed 0; the
    input drawn after the model's weights); torch's generator is restored on return.
    progress: a bar on stderr per rate over its timings (each block, then per repeat the
    interleaved whole-model rows and the new-input row, each counted as the model's
    number of blocks, as it takes about as long as all of them): minutes at the default
    reps; False also silences compile's lines (``compile(progress=False)``).
    Threads: there is no threads argument (``bench --threads`` has one): it runs at the
    count torch has when called, which each row records; call ``torch.set_num_threads``
    first to choose it.

    Raises:
        ValueError: no rates, or one that is not a number in [0, 1]; repeat, reps or
            batch not an int >= 1, or reps x batch whose new inputs would take more than
            half this machine's memory (``check_fresh_inputs``); an unknown model, tune
            mode or allocator, allocator "default" once this process retains freed
            memory, or a mode or granularity the model refuses (each before anything is
            built or timed, and before the allocator changes).
        AssertionError: when the compiled logits are not the reference's (checked before
            anything is timed).
    """
    # before the allocator changes and the model is built (a rate of 1.5 failed at its
    # calibration, after the allocator changed and the rates before it ran; reps=2.5 at
    # the first timing, after the compile)
    for name, value in (("repeat", repeat), ("reps", reps), ("batch", batch)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    check_fresh_inputs(batch, reps, flags=False)  # (not after minutes of per-block rows)
    if tune not in TUNE_MODES:
        raise ValueError(f"tune {tune!r} unknown; accepted: {', '.join(TUNE_MODES)}")
    rates = check_rates(rates)  # Python floats: a tensor's reached the rows and the CSV
    _check_allocator(allocator)  # (it was checked after the first model's build)
    # building the first model validates the configuration before the allocator,
    # process-wide, changes
    first = _seeded_model(model_name, mode, granularity, channel_granularity, 0)
    texts = layout_texts(mode, granularity, channel_granularity)  # as the CLI writes them
    setting = _set_allocator(allocator, log)
    rows = []
    for i, rate in enumerate(rates):
        model = first if i == 0 else _seeded_model(model_name, mode, granularity,
                                                   channel_granularity, 0)
        x = torch.randn(batch, 3, 224, 224)
        realised = calibrate_rates(model, x, rate)
        note = calibration_note(model, realised, rate, batch)
        if note:
            log(f"note: {note}; the rows below are labelled with the asked rate, the CSV's "
                "realised_rate column holds the realised one")
        cm = compile(model, x, backend="cpu", tune=tune, progress=progress)
        meta = dict(model=model_name, **texts, batch=batch, rate=rate, allocator=setting,
                    threads=torch.get_num_threads(), tune=tune, reps=reps)
        _check_logits(model, cm, x)  # before anything is timed
        dense = dense_forms(model)
        # in blocks' timings: each whole-model step (the interleaved rows; the new-input
        # row) takes about as long as the per-block rows of every block together (16
        # blocks of ResNet-50 at reps 10: 0.09-0.28 s each, the two steps 3.8 and 4.1 s)
        n = len(cm.blocks)
        bar = Progress((n if blocks else 0) + 2 * n * repeat, progress,
                       desc=f"bench rate {rate_text(rate)}", unit="block")
        try:
            if blocks:
                rows += _block_rows(model, cm, x, meta, reps, bar)
            runs = []
            for i in range(repeat):
                run = f"run {i + 1} of {repeat}" if repeat > 1 else ""
                if run and not bar.enabled:  # (the bar names it)
                    log(f"rate {rate}: whole model, {run}")
                runs.append(_model_rows(model, cm, dense, x, meta, reps, bar, run))
        finally:
            bar.close()
        rows += [_median_run([r[k] for r in runs]) for k in range(len(runs[0]))]
        log(format_rows([r for r in rows if r.rate == rate]))
    return rows


def _check_allocator(allocator: str) -> None:
    """Raise ValueError unless ``bench`` can apply ``allocator``: "retain" or "default",
    and "default" only while this process does not retain freed memory."""
    if allocator not in runtime.SETTINGS:
        raise ValueError(f"allocator must be 'retain' or 'default', got {allocator!r}")
    if allocator == "default" and runtime.allocator_setting() != "default":
        raise ValueError("allocator 'default' asked, but this process already retains "
                         "freed memory (runtime.retain_freed_memory cannot be undone); "
                         "run the benchmark in a new process")


def _set_allocator(allocator: str, log: Callable[[str], object]) -> str:
    """Apply the ``allocator`` choice of ``bench``, which ``_check_allocator`` took;
    returns the setting in effect."""
    if allocator == "default":
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
                reps: int, bar: Progress | None = None, run: str = "") -> list[BenchRow]:
    """The whole-model rows: compiled on x repeated; the same with the masks of that
    input given (``CompiledModel.forward(x, masks)``: every block's variant runs, no
    masker does: the difference to the first row is what the maskers and the masks'
    construction cost); compiled on a new input every call; the official masked-dense
    reference. Each against the faster of the dense forms (``dense_forms``), both timed
    in the same interleaved run as the first, second and last rows.

    The logits are checked first, once (``_check_logits``); the masks given are timed
    unchecked (``check_masks=False``): the row times the variants. bar: updated after
    the interleaved rows and after the new-input row, by the model's block count each,
    its note naming ``run`` ("run 2 of 3") when given.
    """
    with torch.no_grad():
        cm(x)
        given = [blk.last_masks for blk in cm.blocks]
        fmt, t_dense, (t_comp, t_given, t_ref) = time_against_dense(
            {n: lambda m=m: m(x) for n, m in dense.items()},
            [lambda: cm(x), lambda: cm(x, masks=given, check_masks=False),
             lambda: model(x)], warmup=2, reps=reps)
        model(x)
    steps = len(cm.blocks)
    if bar is not None:
        bar.update(f"whole model {run}".rstrip(), n=steps)
    stats = model.last_stats
    fr = float(stats.flops_ratio)
    realised = mean_rate(model)
    # with the masks given no masker runs: their FLOPs are left out of that row's ratio
    fr_given = float(stats.flops - sum(b.masker_flops for b in stats.blocks)) / stats.dense_flops

    def row(spec, variant, t, fr=fr):
        return BenchRow(**meta, block="model", spec=spec, variant=variant,
                        dense_ms=t_dense * 1e3, sparse_ms=t * 1e3, ratio=t / t_dense,
                        flops_ratio=fr, efficiency=fr / (t / t_dense),
                        realised_rate=realised, dense_form=fmt)

    fresh = _fresh_row(model, cm, dense, x.shape[0], meta, reps)
    if bar is not None:
        bar.update(f"new input every call {run}".rstrip(), n=steps)
    return [row(f"dense={fmt}", "compiled", t_comp),
            row("masks given, no maskers run", "compiled", t_given, fr_given),
            fresh, row("official masked-dense reference", "reference", t_ref)]


def _median_run(rows: list[BenchRow]) -> BenchRow:
    """The row with the median ratio, all ratios in runs; for an even count the upper of
    the two middle ones (the one less favourable to the compiled model)."""
    mid = sorted(rows, key=lambda r: r.ratio)[len(rows) // 2]
    return replace(mid, runs=tuple(r.ratio for r in rows))


def check_fresh_inputs(batch: int, reps: int, flags: bool = True) -> None:
    """The whole-model row on a new input every call (``_fresh_row``) holds its 2 x reps
    inputs of ``batch`` images at once (made before the timing, outside it).

    flags: the error names the CLI's --reps and --batch; False, ``bench``'s arguments
    reps and batch.

    Raises:
        ValueError: naming reps and batch when they would take more than half this
            machine's memory (10000 reps at batch 1: 12 GB; the run failed after minutes
            of other rows, blaming --batch alone).
    """
    need = 2 * reps * batch * 3 * 224 * 224 * 4
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not known here: not checked
        return
    if need > total // 2:
        r, b = ("--reps", "--batch") if flags else ("reps", "batch")
        raise ValueError(f"{r} {reps} with {b} {batch}: the row on a new input every "
                         f"call holds 2 x {reps} inputs of {batch} image(s), "
                         f"{need / 2**30:.1f} GiB, more than half this machine's memory "
                         f"({total / 2**30:.1f} GiB); give fewer {r}")


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
        form, t_dense, (t_comp,) = time_against_dense(
            {n: stream(m) for n, m in dense.items()}, [stream(cm)], warmup=warmup, reps=reps)
        frs, rates = [], []
        for x in xs[warmup:]:
            model(x)
            frs.append(float(model.last_stats.flops_ratio))
            rates.append(mean_rate(model))
    fr = sum(frs) / len(frs)
    ratio = t_comp / t_dense
    return BenchRow(**meta, block="model", spec="fresh input every call", variant="compiled",
                    dense_ms=t_dense * 1e3, sparse_ms=t_comp * 1e3, ratio=ratio,
                    flops_ratio=fr, efficiency=fr / ratio,
                    realised_rate=sum(rates) / len(rates), dense_form=form)
