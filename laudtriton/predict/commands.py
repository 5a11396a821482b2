"""``laudtriton predict | calibrate``: latency tables and calibration (``design`` is
:mod:`.design_command`'s; the options predict and design share are :mod:`.options`').

Each ``add_*_parser(subparsers)`` adds its subcommand; each ``run_*(args)`` returns the exit
code and raises ValueError for a user error (the CLI prints it on stderr, exit 2).
"""

from __future__ import annotations

import argparse
import sys

from ..tune.layout_options import GRANULARITY, options_read
from .calibration import timings_cache
from .command_options import (
    add_common_options,
    check_common_options,
    comma_list,
    command_predictor,
    peak_note,
)
from .hardware import HardwareSpec, get_hardware

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
    words = {"--granularity": "S", "--channel-granularity": "channel granularity"}
    read = options_read(mode, granularity, channel_granularity)
    return "".join(f" {words[flag]} {value}" for flag, value in read.items())


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _rates(text: str) -> list[float]:
    from ..tune.options import parse_rates

    return parse_rates(text)


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
    add_common_options(p)
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
    laudtriton/kernel versions too with --include-stale; never those on clustered masks
    that older sweeps cached, which the cache hides as stale too: the model predicts
    scattered masks), printed as its MAPE table after the hardware line. Returns 0.

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
    def scattered(include_stale: bool) -> list:
        return [e for e in cache.entries(include_stale=include_stale)
                if not e.meta.get("clustered")]

    entries = scattered(args.include_stale)
    if not entries:
        # --include-stale named only where it finds timings: an empty cache, another
        # device's file or a corrupt one sent the user to a flag that then failed too
        which = "" if args.include_stale or not scattered(True) else (
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
    from ..tune.layout_options import check_layout_options
    from .model import (
        predict_expected,
        predict_static_dense,
        predict_stem_head,
        resolve_variant,
    )
    from .network import model_specs

    _check_predict_options(args)
    check_common_options(args)
    if args.validate:
        return run_validate(args, get_hardware(args.hardware, args.cache_dir))
    # every option checked before the hardware is read (it may warn)
    rates = _rates(args.rates)
    check_layout_options(args)  # the model's layout, as bench and sweep check theirs
    only = None
    if args.variants is not None:
        listed = comma_list(args.variants, "--variants", "variant",
                            "a comma list, or leave it out for all")
        try:
            only = [resolve_variant(v).name for v in listed]
        except ValueError as e:
            raise ValueError(f"--variants: {e}") from None
    hw, factors, note = command_predictor(args, "predict")
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
    print(f"hardware: {hw.describe()}\n{note}{peak_note(hw, dtype)}")
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
    """Run ``laudtriton calibrate``. Returns the exit code. The folder it made for the
    calibration file is removed if still empty when it stops early (Ctrl-C, SIGTERM, an
    error while measuring).

    Raises:
        ValueError: naming the bad option and its value (``laudtriton`` prints it in one
            line and exits with code 2).
    """
    from ..tune.options import check_device
    from ..tune.paths import check_cache_dir, make_writable_dir, remove_if_empty
    from .calibration import calibrate, calibration_path, save_calibration

    check_device(args.device)
    check_cache_dir(args.cache_dir)
    target = calibration_path(args.cache_dir, args.device)
    try:  # before measuring: the numbers are only kept in that file (written beside it,
        # then moved)
        made = make_writable_dir(str(target.parent), "the calibration's directory")
    except ValueError as e:
        raise ValueError(f"{e}; give a writable --cache-dir (or LAUDTRITON_CACHE_DIR)"
                         ) from None
    if target.is_dir():  # (the file itself: a directory of its name failed at the end)
        raise ValueError(f"the calibration file {str(target)!r} is a directory; remove it "
                         "or give another --cache-dir (or LAUDTRITON_CACHE_DIR)")
    try:
        cal = calibrate(args.device, quick=args.quick,
                        progress=lambda line: print(line, file=sys.stderr, flush=True))
        path = save_calibration(cal, args.cache_dir, args.device)
    except BaseException:  # (KeyboardInterrupt too) nothing saved: no empty folder left
        remove_if_empty(made)
        raise
    for d, p in sorted(cal.peak.items()):
        print(f"GEMM peak {d:<9} {p / 1e9:10.2f} GMAC/s")
    print(f"copy bandwidth     {cal.bandwidth / 1e9:10.2f} GB/s")
    print(f"dispatch overhead  {cal.overhead * 1e6:10.2f} us/op")
    print(f"device {cal.fingerprint}; saved {path}")
    return 0
