"""The ``laudtriton plot`` command (``plot --from CSV|cache --out DIR``) and the
predicted line it draws beside the measured ones (:func:`predicted_curves`); the figures
themselves are :mod:`laudtriton.plot`'s."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from .ops.registry import all_variants, get_variant
from .ops.spec import BlockSpec
from .plot import figure_class, plot_latency_vs_rate
from .plot_rows import (
    Predicted,
    Rows,
    check_measured,
    clustered_row,
    rows_from_cache,
    spec_of_row,
)
from .tune.sweep_csv import read_csv


def predicted_curves(rows: Rows, cache_dir: str | Path | None = None, device: str = "cpu"
                     ) -> Predicted | None:
    """{spec_key: {rate: seconds}}: the latency predictor's time of the fastest variant
    of each block spec at each rate of ``rows``, among the variants timed there (a row
    whose seconds are not finite, every config failed, is no variant to predict: the
    line took one such, drawn nowhere, under the measured best), with efficiency factors
    fitted on this device's cached timings. None when the device has no calibration
    (``laudtriton calibrate``) or the cache holds no timings. Rows on clustered masks (column
    ``clustered``) are left out, with a note: the model predicts scattered masks, those
    of the cached timings it is fitted on (their figures drew it as their prediction)."""
    from .predict.calibration import fitted_predictor
    from .predict.hardware import DTYPES
    from .predict.model import predict_block
    from .tune.cache import TuneCache

    fitted = fitted_predictor(TuneCache(cache_dir, device=device), device)
    if fitted is None:
        return None
    hw, factors = fitted
    unknown = sorted({r["variant"] for r in rows} - {v.name for v in all_variants()})
    if unknown:  # e.g. a CSV of an older version: plotted, but not predicted
        print(f"laudtriton plot: no latency model for variant(s) {', '.join(unknown)}: "
              "left out of the predicted line", file=sys.stderr)
    todo: dict[str, tuple[BlockSpec, dict[float, set]]] = {}  # spec, {rate: variants}
    keyless = other_dtypes = clustered = 0
    for r in rows:
        if clustered_row(r):  # (``spec_curves`` draws no predicted line in their figures)
            clustered += 1
            continue
        spec = spec_of_row(r)
        if spec is None:  # no spec_key column (an older CSV): no spec to predict
            keyless += 1
            continue
        if spec.dtype not in DTYPES:  # e.g. float64 (compile(dtype=...)): no peak rate
            other_dtypes += 1  # (the fit skips them too, ``fit.samples``)
            continue
        v = get_variant(r["variant"]) if r["variant"] not in unknown else None
        if v is not None and spec.mode in v.modes and v.supports(spec):
            _, by_rate = todo.setdefault(r["spec_key"], (spec, {}))
            timed = by_rate.setdefault(round(float(r["rate"]), 6), set())
            if math.isfinite(float(r["seconds"])):
                timed.add(r["variant"])
    if keyless:
        print(f"laudtriton plot: {keyless} row(s) without a spec_key (a CSV of an older "
              "version): left out of the predicted line", file=sys.stderr)
    if clustered:
        print(f"laudtriton plot: {clustered} row(s) on clustered masks: the latency model "
              "predicts scattered masks (those of the cache it is fitted on): no predicted "
              "line in their figures", file=sys.stderr)
    if other_dtypes:
        print(f"laudtriton plot: {other_dtypes} row(s) of a dtype the latency model has no "
              f"peak rate for (it models {', '.join(DTYPES)}): left out of the predicted "
              "line", file=sys.stderr)
    curves = {sid: {rate: min(predict_block(spec, rate, v, hw, factors) for v in timed)
                    for rate, timed in sorted(by_rate.items()) if timed}
              for sid, (spec, by_rate) in todo.items()}
    return {sid: curve for sid, curve in curves.items() if curve}


def add_plot_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``plot`` to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser("plot", help="latency-vs-rate PNGs from a sweep CSV or the cache",
                              description="Latency vs activation rate per block and for the "
                                          "whole model, from a sweep CSV or the cache.")
    p.add_argument("--from", dest="source", required=True, metavar="CSV|cache",
                   help="a sweep CSV, or 'cache' for this device's autotune cache")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--cache-dir", default=None,
                   help="the cache to plot (with --from cache) and whose timings and "
                        "calibration fit the predicted line (default: the one `laudtriton env` "
                        "shows)")
    p.add_argument("--device", default="cpu",
                   help="with --from cache: whose timings (default cpu); the predicted line "
                        "is this device's (left out for rows timed on another)")
    p.add_argument("--no-predicted", action="store_true",
                   help="leave out the predicted line (drawn when the device is calibrated)")
    p.set_defaults(func=run_plot)
    return p


def run_plot(args: argparse.Namespace) -> int:
    """Run ``laudtriton plot``; prints the PNG paths. Returns the exit code: 0, 2 after a
    user error, 130 on Ctrl-C (or SIGTERM, which ``cli.main`` turns into it; one line:
    the --out folder plot made is removed if still empty; else, once drawing began, it
    may hold some of the figures). A --cache-dir that nothing reads (a CSV with
    --no-predicted) is not refused, but one that does not exist is warned of on stderr."""
    made, drawing = None, False
    try:
        from .tune.keys import cache_enabled_from_env, check_dir, disabled_by
        from .tune.options import check_device, check_device_name, fail
        from .tune.paths import (
            check_cache_dir,
            check_nonempty,
            make_writable_dir,
            remove_if_empty,
        )

        def unwritable(e: OSError) -> ValueError:  # naming the figure's path: 'o/x.png'
            # a folder said "--out 'o' cannot be written (Is a directory)", of --out 'o'
            what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else (
                e.strerror or e)
            return ValueError(f"--out {args.out!r} cannot be written ({what})")

        # --device is read only for the cache or the predicted line (where this machine
        # must have it); a CSV plotted without that line takes only a valid name
        dev = None
        if args.source == "cache" or not args.no_predicted:
            dev = check_device(args.device)
        else:
            check_device_name(args.device)
        check_nonempty(args.source, "--from")
        if args.source != "cache":  # '--from=~/x.csv' reaches us without a shell's expansion
            args.source = os.path.expanduser(args.source)
        check_dir(args.out, "--out")  # blank, a file, or inside a file
        if args.source == "cache" or not args.no_predicted:  # what reads the cache: its
            check_cache_dir(args.cache_dir, read=True)  # folder and a bad $LAUDTRITON_CACHE
            cache_enabled_from_env()  # said now, as sweep says them
        elif args.cache_dir is not None:  # not read, so not refused; but a mistyped
            try:  # folder was passed over without a word
                check_cache_dir(args.cache_dir, read=True)
            except ValueError as e:
                print(f"laudtriton plot: warning: {e} (not read here: a CSV plotted with "
                      "--no-predicted reads no cache)", file=sys.stderr)
        figure_class()  # matplotlib missing: said before reading anything
        if args.source == "cache":
            from .tune.cache import TuneCache

            cache = TuneCache(args.cache_dir, device=args.device)
            if not cache.enabled:
                raise ValueError(f"--from cache: the cache is disabled ({disabled_by()}); "
                                 "unset it to plot the cache")
            rows = rows_from_cache(cache)
            if not rows:
                raise ValueError("the autotune cache holds no current timings for device "
                                 f"{args.device!r}; run 'laudtriton sweep' first")
        else:
            if not Path(args.source).is_file():  # (a folder was "no such CSV file")
                what = ("a directory, not a CSV file" if Path(args.source).is_dir() else
                        "not a regular file" if Path(args.source).exists() else
                        "no such CSV file")
                raise ValueError(f"--from {args.source!r}: {what} (or use 'cache')")
            rows = read_csv(args.source)
            if not rows:
                raise ValueError(f"--from {args.source!r}: the CSV holds no timing rows")
        # before the predicted line is fitted: a figure of failures only is no figure
        check_measured(rows, f"--from {args.source!r}")
        # before the predicted line is fitted: a folder that cannot be made or written,
        # now (the folders made are removed if the command is refused later)
        made = make_writable_dir(args.out, "--out")
        from .tune.keys import device_fingerprint

        predicted = None
        if not args.no_predicted:
            here = device_fingerprint(args.device)  # what a sweep CSV's device column holds
            timed_on = {str(r.get("device") or "") for r in rows} - {""}
            if timed_on - {here, dev.type}:
                print(f"laudtriton plot: the rows were timed on "
                      f"{', '.join(sorted(timed_on))}, not on --device {args.device!r} "
                      f"({here}): no predicted line", file=sys.stderr)
            else:
                print("laudtriton plot: the predicted line: fitting the latency predictor "
                      "if this device is calibrated (--no-predicted leaves it out)",
                      file=sys.stderr, flush=True)
                predicted = predicted_curves(rows, args.cache_dir, args.device)
                if predicted is None and not cache_enabled_from_env():
                    print(f"laudtriton plot: no predicted line: the cache is disabled "
                          f"({disabled_by()}), so no timings are read to fit the predictor "
                          "on (--no-predicted leaves it out)", file=sys.stderr)
                elif predicted is None:
                    print(f"laudtriton plot: no predicted line: {here} has no calibration "
                          "in the cache directory, or the cache has no current timings to "
                          "fit it on (`laudtriton calibrate`, `laudtriton sweep`; "
                          "--no-predicted leaves it out)", file=sys.stderr)
        try:
            drawing = True
            paths = plot_latency_vs_rate(rows, args.out, predicted)
        except OSError as e:  # a figure cannot be written
            raise unwritable(e) from None
    except ValueError as e:
        remove_if_empty(made)  # a folder made for the figures, refused after all
        return fail("plot", str(e))
    except KeyboardInterrupt:  # (it was left behind, empty)
        remove_if_empty(made)
        what = ("not made" if made is not None and not os.path.exists(made) else
                "may hold some of the figures" if drawing else "left as it was")
        print(f"laudtriton plot: interrupted: --out {args.out!r} {what}", file=sys.stderr)
        return 130
    for p in paths:
        print(p)
    return 0
