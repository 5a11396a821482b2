"""``laudtriton predict | calibrate | design``: latency tables, calibration, co-design.

Each ``add_*_parser(subparsers)`` adds its subcommand; each ``run_*(args)`` returns the exit
code and raises ValueError for a user error (the CLI prints it on stderr, exit 2).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

from ..tune.options import CHANNEL_GRANULARITY, GRANULARITY
from .calibration import measured_here, predictor_for, timings_cache
from .hardware import HardwareSpec, get_hardware, known_hardware

log = logging.getLogger("laudtriton")
DESIGN_GRANULARITIES = "1,2,4,8"  # design's --granularities: the S a search ranks

# predict's options that only its latency table reads. The parser sets them to None (not
# given), so that --validate, which reads every cached timing of the device, can refuse
# them when given rather than ignore them; their declared defaults are filled in after.
TABLE_OPTIONS = ("model", "mode", "granularity", "rates", "variants", "batch", "dtype",
                 "input_size", "channel_granularity", "no_fit")


def layout_text(mode: str, granularity: str, channel_granularity: str) -> str:
    """The layout options that apply to ``mode`` (one mode, or one per stage:
    "spatial-channel-layer-both"), as the table's header names them (" S 4-4-2-1" where a
    stage skips pixels, " channel granularity 2" where one skips channels, "" for
    "layer"): the others do not reach the model, so echoing them would misdescribe it."""
    stages = set(str(mode).split("-"))
    text = ""
    if stages & {"spatial", "both"}:
        text += f" S {granularity}"
    if stages & {"channel", "both"}:
        text += f" channel granularity {channel_granularity}"
    return text


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _peak_note(hw, dtype: str) -> str:
    """A line saying that ``hw`` has no peak of its own for ``dtype`` (a CPU calibration
    measures float32 only), or ''."""
    if dtype in dict(hw.peak):
        return ""
    why = " (a CPU calibration measures float32 only)" if hw.name == "cpu" else ""
    return f"\nnote: {hw.name} has no {dtype} peak of its own{why}: its float32 rate is used"


def _list(text: str, flag: str, noun: str, accepted: str) -> list[str]:
    """The items of the comma list ``text`` given with ``flag``; a ValueError naming it if
    there are none (',' or '' would otherwise silently mean "nothing" or "everything") or
    an item is empty (``comma_items``)."""
    from ..tune.options import comma_items

    items = comma_items(text, flag, accepted)
    if not items:
        raise ValueError(f"{flag} {text!r} names no {noun}; give {accepted}")
    return items


def _check_common(args) -> None:
    """The options of ``_common`` that every run reads, before any work: a ValueError
    naming the first bad one."""
    from ..tune.options import check_batch, check_input_size, parse_stages
    from ..tune.paths import check_cache_dir

    check_batch(args.batch)  # per-sample mask tables grow with it
    check_input_size(args.input_size)
    parse_stages(args.channel_granularity, "--channel-granularity")
    check_cache_dir(args.cache_dir, read=True)


def _predictor(args, command: str) -> tuple[HardwareSpec, dict | None, str]:
    """``predictor_for`` the options of ``command`` (predict, design). A preset hardware
    (v100, ...) has no calibration or timings here, so --cache-dir and --no-fit change
    nothing for it: a warning on stderr says so rather than let them pass for read."""
    hw, factors, note = predictor_for(args.hardware, args.cache_dir, fit=not args.no_fit)
    ignored = [flag for flag, given in (("--cache-dir", args.cache_dir is not None),
                                        ("--no-fit", args.no_fit)) if given]
    if ignored and not measured_here(hw):
        print(f"laudtriton {command}: warning: {' and '.join(ignored)} read nothing with "
              f"--hardware {args.hardware} (a preset: its factors are the defaults; "
              "cpu and cuda read the calibration and timings of this machine)",
              file=sys.stderr, flush=True)
    return hw, factors, note


def _rates(text: str) -> list[float]:
    from ..tune.options import parse_rates

    return parse_rates(text)


def _common(p: argparse.ArgumentParser, model_default: str = "laud_resnet101") -> None:
    p.add_argument("--model", default=model_default,
                   help=f"laud_resnet50 | laud_resnet101 (default {model_default})")
    p.add_argument("--hardware", default="cpu",
                   help=f"one of {', '.join(known_hardware())} (default cpu)")
    p.add_argument("--batch", type=int, default=1, help="images per batch (default 1)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="float32 | float16 | bfloat16 (default: float32 on cpu, else float16)")
    p.add_argument("--input-size", type=int, default=224,
                   help="input height and width in pixels (default 224)")
    p.add_argument("--channel-granularity", default=CHANNEL_GRANULARITY,
                   help="channels per channel-mask group: one int or per stage 'a-b-c-d' "
                        f"(default {CHANNEL_GRANULARITY}; read by channel and both stages)")
    p.add_argument("--cache-dir", default=None,
                   help="autotune cache / calibration directory (read with --hardware cpu "
                        "or cuda)")
    p.add_argument("--no-fit", action="store_true",
                   help="use default efficiency factors, not ones fitted on cached timings "
                        "(a preset --hardware always uses the defaults)")


def add_predict_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``predict``; returns its parser."""
    p = subparsers.add_parser(
        "predict", help="predicted block and model latency; --validate: error on the cache",
        description="Latency predictor: per distinct block and for the whole model, dense "
                    "vs each variant vs the best (compile's pick: the fastest, but dense "
                    "unless another beats it by more than 5%), at each mean rate "
                    "(expected time: masks switch whole cells, channel groups or samples, "
                    "so a rate between two "
                    "whole counts is predicted linearly between them). With --validate: "
                    "predicted "
                    "vs measured on cached timings held out by block shape (last line "
                    "'MAPE <number>%'); it reads every cached timing of --hardware, so it "
                    "takes only --hardware, --cache-dir and --include-stale and refuses "
                    "the options of the table.")
    _common(p)
    p.add_argument("--mode", default="spatial",
                   help="spatial|channel|layer|both or 'a-b-c-d' (default spatial)")
    p.add_argument("--granularity", default=GRANULARITY,
                   help=f"S per stage (default '{GRANULARITY}'; read by spatial and both "
                        "stages)")
    p.add_argument("--rates", default="0.25,0.5,0.75",
                   help="'0.25,0.5' or 'start:stop:step' (default '0.25,0.5,0.75')")
    p.add_argument("--variants", default=None,
                   help="comma list to restrict the variants (default: all)")
    p.add_argument("--validate", action="store_true",
                   help="predicted vs measured on every cached timing of --hardware, held "
                        "out by block shape; with --cache-dir and --include-stale only")
    p.add_argument("--include-stale", action="store_true",
                   help="only with --validate: also timings of other laudtriton/kernel "
                        "versions")
    declared = {d: p.get_default(d) for d in TABLE_OPTIONS}
    p.set_defaults(func=run_predict, table_defaults=declared,
                   **dict.fromkeys(TABLE_OPTIONS))  # None: not given
    return p


def _check_predict_options(args) -> None:
    """Refuse what the mode (table or --validate) does not read, then fill the table's
    defaults in ``args``: a ValueError naming the first option refused."""
    given = [_flag(d) for d in TABLE_OPTIONS if getattr(args, d) is not None]
    if args.validate and given:
        raise ValueError(f"{', '.join(given)}: not used by --validate, which validates on "
                         "every cached timing of --hardware; give only --hardware, "
                         "--cache-dir, --include-stale")
    if args.include_stale and not args.validate:
        raise ValueError("--include-stale is used only with --validate")
    for dest, default in args.table_defaults.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)


def run_validate(args: argparse.Namespace, hw: HardwareSpec) -> int:
    """``laudtriton predict --validate``: leave-one-block-shape-out validation of the latency
    model (``fit.validate``) on the autotune cache's timings of ``hw`` (those of other
    laudtriton/kernel versions too with --include-stale), printed as its MAPE table after
    the hardware line. Returns 0.

    Raises:
        ValueError: ``hw`` has no timings here (only "cpu" and a calibrated "cuda" do),
            the cache is disabled ($LAUDTRITON_CACHE), it holds no timings of this device,
            or none usable or fewer than 2 block shapes (``fit.validate``).
    """
    from .fit import validate

    cache = timings_cache(hw, args.cache_dir)
    if cache is None:
        raise ValueError(f"--validate needs measured timings of --hardware {hw.name!r}; only "
                         "'cpu' (or 'cuda', a calibrated local GPU) has them here")
    if not cache.enabled:
        from ..tune.keys import disabled_by

        raise ValueError(f"--validate reads the autotune cache, which {disabled_by()} "
                         "disables")
    entries = cache.entries(include_stale=args.include_stale)
    if not entries:
        which = "" if args.include_stale else (
            " for the current versions (--include-stale also reads those of other versions)")
        raise ValueError(f"the autotune cache {cache.path} holds no timings of this device"
                         f"{which}; run `laudtriton calibrate` and `laudtriton sweep` first")
    print(f"hardware: {hw.describe()}", flush=True)
    print(f"fitting on {len(entries)} cached timings (the fastest config of each block, "
          "rate and variant counts), each block shape held out in turn", file=sys.stderr,
          flush=True)
    print(validate(entries, hw).format())
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Run ``laudtriton predict``. Returns the exit code.

    Raises:
        ValueError: naming the bad option and its value (``laudtriton`` prints it in one
            line and exits with code 2).
    """
    from ..ops.registry import variants_for
    from ..schedule import compile_pick
    from ..tune.options import check_layout_options
    from .model import (
        predict_expected,
        predict_static_dense,
        predict_stem_head,
        resolve_variant,
    )
    from .network import model_specs

    _check_predict_options(args)
    _check_common(args)
    if args.validate:
        return run_validate(args, get_hardware(args.hardware, args.cache_dir))
    # every option checked before the hardware is read (it may warn)
    rates = _rates(args.rates)
    check_layout_options(args)  # the model's layout, as bench and sweep check theirs
    only = None
    if args.variants is not None:
        listed = _list(args.variants, "--variants", "variant",
                       "a comma list, or leave it out for all")
        try:
            only = [resolve_variant(v).name for v in listed]
        except ValueError as e:
            raise ValueError(f"--variants: {e}") from None
    hw, factors, note = _predictor(args, "predict")
    dtype = args.dtype or hw.default_dtype
    specs = model_specs(args.model, args.mode, args.granularity, args.batch, args.input_size,
                        dtype, args.channel_granularity)
    groups: dict = {}
    for name, spec in specs:
        groups.setdefault(spec, []).append(name)
    names = sorted({v.name for s in groups for v in variants_for(s, hw.backend)} - {"dense"},
                   key=str)
    if only is not None:
        idle = sorted(set(only) - set(names) - {"dense"})
        if idle:
            raise ValueError(f"--variants {', '.join(idle)}: no block of this model and mode "
                             f"runs it on {hw.backend}")
        names = [n for n in names if n in only]
    print(f"hardware: {hw.describe()}\n{note}{_peak_note(hw, dtype)}")
    print(f"{args.model} mode {args.mode}"
          f"{layout_text(args.mode, args.granularity, args.channel_granularity)} "
          f"batch {args.batch} {dtype}")
    # every cell after its own space: columns stay apart when a number outgrows its width
    head = "".join(f" {n + ' ms':>13}" for n in ["dense", *names])
    print(f"\n{'block (x count)':<64} {'rate':>7}{head}  best")
    best_total = dict.fromkeys(rates, 0.0)
    static = sum(predict_static_dense(s, hw, factors) * len(m) for s, m in groups.items())
    for spec, members in groups.items():
        cands = {v.name for v in variants_for(spec, hw.backend)}
        for r in rates:
            row = {"dense": predict_expected(spec, r, "dense", hw, factors)}
            for n in names:
                if n in cands:
                    row[n] = predict_expected(spec, r, n, hw, factors)
            best = compile_pick(row)
            cells = "".join(f" {row[n] * 1e3:>13.3f}" if n in row else f" {'-':>13}"
                            for n in ["dense", *names])
            label = f"{members[0]} {spec.short()} x{len(members)}"
            print(f"{label:<64} {_rate_label(r):>7}{cells}  {best}")
            best_total[r] += row[best] * len(members)
    stem = predict_stem_head(args.input_size, args.batch, dtype, hw, factors)
    print(f"\nmodel (blocks + dense stem/head {stem * 1e3:.3f} ms); dense ms: the static "
          "network, every block dense without masks or maskers"
          + ("\n(not the dense column above: on blocks with channel masks that runs their "
             "masked path)" if any(s.mode in ("channel", "both") for s in groups) else ""))
    print(f"{'rate':>8} {'dense ms':>11} {'best ms':>11} {'x dense':>8} {'ms/img':>9}")
    d = static + stem  # the static network: the same at every rate
    for r in rates:
        b = best_total[r] + stem
        print(f"{_rate_label(r):>8} {d * 1e3:>11.3f} {b * 1e3:>11.3f} {b / d:>8.3f}"
              f" {b * 1e3 / args.batch:>9.4f}")
    return 0


def _rate_label(rate: float) -> str:
    """A rate as given (``--rates`` rounds to 6 decimals), at least 2 decimals: distinct
    rates print apart (0.125 and 0.126, 0.001 and 0.002)."""
    text = f"{rate:.6f}".rstrip("0")
    return text if len(text.split(".")[1]) >= 2 else f"{rate:.2f}"


def add_calibrate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``calibrate``; returns its parser."""
    p = subparsers.add_parser(
        "calibrate", help="measure GEMM peak, copy bandwidth and dispatch cost of this machine",
        description="Measure this machine (< 30 s) and store it beside the autotune cache; "
                    "--hardware cpu (with --device cuda: --hardware cuda) then uses it.")
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | cuda:N")
    p.add_argument("--cache-dir", default=None,
                   help="where the calibration file is written (default: the cache "
                        "directory `laudtriton env` shows)")
    p.add_argument("--quick", action="store_true", help="< 5 s, noisier")
    p.set_defaults(func=run_calibrate)
    return p


def run_calibrate(args: argparse.Namespace) -> int:
    """Run ``laudtriton calibrate``. Returns the exit code.

    Raises:
        ValueError: naming the bad option and its value (``laudtriton`` prints it in one
            line and exits with code 2).
    """
    from ..tune.options import check_device
    from ..tune.paths import check_cache_dir, make_writable_dir
    from .calibration import calibrate, calibration_path, save_calibration

    check_device(args.device)
    check_cache_dir(args.cache_dir)
    target = calibration_path(args.cache_dir, args.device)
    try:  # before measuring: the numbers are only kept in that file (written beside it
        make_writable_dir(str(target.parent), "the calibration's directory")  # and moved)
    except ValueError as e:
        raise ValueError(f"{e}; give a writable --cache-dir (or LAUDTRITON_CACHE_DIR)"
                         ) from None
    if target.is_dir():  # (the file itself: a directory of its name failed at the end)
        raise ValueError(f"the calibration file {str(target)!r} is a directory; remove it "
                         "or give another --cache-dir (or LAUDTRITON_CACHE_DIR)")
    cal = calibrate(args.device, quick=args.quick,
                    progress=lambda line: print(line, file=sys.stderr, flush=True))
    path = save_calibration(cal, args.cache_dir, args.device)
    for d, p in sorted(cal.peak.items()):
        print(f"GEMM peak {d:<9} {p / 1e9:10.2f} GMAC/s")
    print(f"copy bandwidth     {cal.bandwidth / 1e9:10.2f} GB/s")
    print(f"dispatch overhead  {cal.overhead * 1e6:10.2f} us/op")
    print(f"device {cal.fingerprint}; saved {path}")
    return 0


def add_design_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``design``; returns its parser."""
    from ..codesign import MAX_DESIGNS

    p = subparsers.add_parser(
        "design", help="rank per-stage mode x granularity by predicted latency",
        description="Latency-guided co-design: every per-stage (mode, S) configuration at "
                    "the target FLOPs ratio, ranked by predicted latency (at most "
                    f"{MAX_DESIGNS} configurations: the product of the options per stage).")
    _common(p)
    p.add_argument("--target-rate", type=float, required=True,
                   help="target FLOPs ratio of the residual blocks, in (0, 1]")
    p.add_argument("--modes", default="spatial,channel,layer",
                   help="comma list of the modes a stage may take, of spatial, channel, "
                        "layer, both (default spatial,channel,layer)")
    p.add_argument("--granularities", default=DESIGN_GRANULARITIES,
                   help="comma list of the S a spatial (or both) stage may take, each at "
                        f"most its map (default {DESIGN_GRANULARITIES})")
    p.add_argument("--top", type=int, default=5,
                   help="configurations printed, fastest first (default 5)")
    p.set_defaults(func=run_design)
    return p


def _flops_floor(args) -> float:
    """The model's FLOPs ratio with every block at rate 0 (only the dense downsample
    convolutions left): no design goes below it."""
    from .network import flops_ratio, model_specs

    specs = [s for _, s in model_specs(args.model, "layer", 1, args.batch, args.input_size)]
    return (sum(flops_ratio(s, 0.0) * s.dense_flops() for s in specs)
            / sum(s.dense_flops() for s in specs))


def run_design(args: argparse.Namespace) -> int:
    """Run ``laudtriton design``. Returns the exit code.

    Raises:
        ValueError: naming the bad option and its value, or when no configuration has a
            finite predicted latency (``laudtriton`` prints it in one line and exits with
            code 2).
    """
    from ..codesign import check_modes, check_target_rate, design_search, design_stages
    from ..tune.options import READ_BY, check_layout_read, int_list, unread
    from .network import check_arch

    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    _check_common(args)
    check_target_rate(args.target_rate)  # every option before the hardware (it may warn)
    check_arch(args.model)
    modes = tuple(_list(args.modes, "--modes", "mode",
                        "a comma list of spatial, channel, layer, both"))
    check_modes(modes)
    check_layout_read(modes, {"--channel-granularity": args.channel_granularity},
                      f"--modes {args.modes!r}")
    grans = tuple(int_list(args.granularities, "--granularities",
                           "comma-separated positive ints like 1,2,4,8"))
    default = {int(g) for g in DESIGN_GRANULARITIES.split(",")}
    if not set(READ_BY["--granularities"]) & set(modes) and set(grans) != default:
        raise unread("--granularities", args.granularities, f"--modes {args.modes!r}")
    # the options the search reads, before the hardware (whose calibration may warn)
    design_stages(args.model, modes, grans, args.batch, args.input_size,
                  args.dtype or "float32", args.channel_granularity)
    hw, factors, note = _predictor(args, "design")
    designs = design_search(args.model, hw, args.target_rate, modes, grans, args.batch,
                            args.input_size, args.dtype, factors, args.channel_granularity)
    dtype = args.dtype or hw.default_dtype  # design_search's
    print(f"hardware: {hw.describe()}\n{note}{_peak_note(hw, dtype)}")
    reached, at = designs[0].flops_ratio, f"{args.target_rate:g}"
    if reached > args.target_rate * (1 + 1e-4):
        floor = _flops_floor(args)
        # each block is aimed at the target on its own (no block makes up for another)
        short, why = (("out of reach", "") if args.target_rate < floor else
                      ("not reached", " (each block is aimed at it on its own)"))
        print(f"laudtriton design: warning: --target-rate {at} is {short}{why}: each block "
              f"whose dense downsample alone is above it runs at rate 0, so the designs are "
              f"at FLOPs ratio {reached:.3f} (the floor, every block at rate 0: {floor:.3f})",
              file=sys.stderr)
        at = f"{reached:.3f} (--target-rate {at} {short}; floor {floor:.3f})"
    print(f"{args.model} batch {args.batch}: {len(designs)} configurations at FLOPs ratio {at}")
    dense = designs[0].dense_seconds
    print(f"\n{'#':>3}  {'modes':<32}{'S':<10} {'ms':>9} {'x dense':>8} {'FLOPs':>6}")
    for i, d in enumerate(designs[:args.top], 1):
        print(f"{i:>3}  {'-'.join(d.modes):<32}{d.s_label():<10}"
              f" {d.seconds * 1e3:>9.3f} {d.seconds / dense:>8.3f} {d.flops_ratio:>6.3f}")
    print(f"\ndense model: {dense * 1e3:.3f} ms")
    if not math.isfinite(designs[0].seconds):
        raise ValueError("no configuration has a finite predicted latency")
    return 0
