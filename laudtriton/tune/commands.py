"""The ``laudtriton sweep`` subcommand (``cache ls|clear|merge`` is ``cache_command``'s).

Wire it into the CLI with ``add_sweep_parser(subparsers)``; it sets ``func``
(``run_sweep``), which takes the parsed args and returns the exit code (2 with a message
on stderr for a user error).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import TYPE_CHECKING

from ..schedule import format_rate, rate_key
from .cache import TuneCache
from .keys import disabled_by
from .layout_options import add_layout_options, check_layout_options
from .numbers import ascii_int
from .options import (
    MAX_INPUT_SIZE,
    check_batch,
    check_device,
    check_input_size,
    fail,
    out_of_memory,
    parse_rates,
    parse_shard,
)
from .paths import (
    check_cache_dir,
    check_output_path,
    make_writable_dir,
    remove_if_empty,
)
from .sweep import DTYPES, Prune, SweepInterrupted, SweepResult, sweep
from .sweep_blocks import MODELS
from .sweep_csv import whole_block

if TYPE_CHECKING:
    import torch


def add_sweep_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``sweep`` to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "sweep", help="time every variant x config per block, rate and S into the cache",
        description="Autotune sweep: time every variant x kernel config of every distinct "
                    "block of a LAUD model at each activation rate; resumable (cached "
                    "entries are skipped); writes the autotune cache and a CSV.")
    p.add_argument("--model", default="laud_resnet50",
                   help=f"one of {', '.join(MODELS)} (default laud_resnet50)")
    add_layout_options(p)
    p.add_argument("--prune-top", type=ascii_int, default=0, metavar="K",
                   help="time only the K kernel configs of each variant with the lowest "
                        "predicted time (latency predictor; default 0: time every config)")
    p.add_argument("--hardware", default=None,
                   help="only with --prune-top: the predictor's hardware (default: cpu, "
                        "or cuda for --device cuda)")
    p.add_argument("--rates", default="0.1:1.0:0.1",
                   help="'start:stop:step' or '0.25,0.5' (default 0.1:1.0:0.1)")
    p.add_argument("--batch", type=ascii_int, default=1, help="batch size timed (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--dtype", default="float32",
                   help=f"one of {', '.join(DTYPES)} (default float32)")
    p.add_argument("--input-size", type=ascii_int, default=224,
                   help=f"image side, 32 to {MAX_INPUT_SIZE} (default 224)")
    p.add_argument("--blocks", default=None,
                   help="comma list of block names (layer3.0) or indices; default all")
    p.add_argument("--variants", default=None,
                   help="comma list of variants to time (default all; dense always). "
                        "compile(tune='cached') uses a block's rate only where every "
                        "candidate variant was timed")
    p.add_argument("--shard", default="1/1", help="'i/n': run the i-th of n shards (default 1/1)")
    p.add_argument("--force", action="store_true", help="re-time what is cached")
    p.add_argument("--clustered", action="store_true",
                   help="clustered masks (one blob); such timings go to the CSV only: they "
                        "neither read nor write the cache, whose timings (used by compile "
                        "and the predictor) are on scattered masks")
    p.add_argument("--csv", default=None,
                   help="CSV of every timing (default sweep_<model>_<mode>_<granularity>"
                        "[_c<channel granularity>]_b<batch>[_i<input size>][_<dtype>]"
                        "[_shard<i>of<n>]_<cpu|cuda>[_clustered].csv, the bracketed parts "
                        "where they apply or differ from their defaults; a sweep of other "
                        "--blocks or --rates writes over it; on Ctrl-C or SIGTERM it holds "
                        "the items timed so far)")
    p.add_argument("--cache-dir", default=None,
                   help="cache directory (default $LAUDTRITON_CACHE_DIR, else autotune_cache/ "
                        "of a source-tree install, else ~/.cache/laudtriton)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar on stderr")
    p.set_defaults(func=run_sweep)
    return p


def default_csv(args: argparse.Namespace, device: str) -> str:
    """The default ``--csv`` of a sweep: the options that change which blocks' specs it
    times in the name (the others only where they differ from their defaults), so that
    two shards, two channel granularities or two dtypes on one machine do not write over
    each other. --blocks, --rates and --variants are not in it: a sweep of other blocks
    or rates writes over the last one's CSV (give --csv to keep both)."""
    parts = [f"sweep_{args.model}_{args.mode}_{args.granularity}"]
    if {"channel", "both"} & set(args.mode.split("-")):  # in any stage ("layer-channel-..")
        parts.append(f"c{args.channel_granularity}")
    parts.append(f"b{args.batch}")
    if args.input_size != 224:
        parts.append(f"i{args.input_size}")
    if args.dtype != "float32":
        parts.append(args.dtype)
    i, n = (1, 1) if args.shard is None else parse_shard(args.shard)
    if n > 1:  # the numbers, not the text ('01/02' and '1/2' are one shard, one file)
        parts.append(f"shard{i}of{n}")
    parts.append(device)
    if args.clustered:
        parts.append("clustered")
    return "_".join(parts) + ".csv"


def run_sweep(args: argparse.Namespace) -> int:
    """Run ``laudtriton sweep``; prints a summary table. Returns the exit code (130 after
    sweep's line when interrupted while timing). The cache folder it made is removed when
    it is refused, or interrupted, with that folder still empty."""
    made = None
    try:
        rates = parse_rates(args.rates)
        shard = parse_shard(args.shard)
        dev = check_device(args.device)
        check_batch(args.batch)
        if args.model not in MODELS:
            raise ValueError(f"--model {args.model!r} unknown; accepted: {', '.join(MODELS)}")
        check_input_size(args.input_size)
        check_layout_options(args)  # against the model at --input-size
        check_cache_dir(args.cache_dir)
        cache = TuneCache(args.cache_dir, device=dev)
        if not args.clustered and cache.enabled:  # clustered masks' timings never reach
            # the cache; filling it is the point of another sweep: refused now, not after
            # the timings (a disabled cache makes no folder: said now, below); a sweep
            # refused later (a bad --blocks) removes the folder it made, if still empty
            made = _make_cache_folder(args.cache_dir, cache)
            missing = cache.missing_link_folder()  # the timings would stay in memory
            if missing is not None:
                raise ValueError(f"the cache file {str(cache.path)!r} is a link into the "
                                 f"missing folder {str(missing)!r}: make the folder, or "
                                 "remove the link")
            why = cache.unwritable_why()  # the timings would stay in memory as well
            if why is not None:
                where = ("--cache-dir" if args.cache_dir is not None
                         else "--cache-dir (or LAUDTRITON_CACHE_DIR)")
                raise ValueError(f"the cache file {str(cache.path)!r} {why}: the timings "
                                 f"could not be saved there, and it is not written over; "
                                 f"give another {where}, move that file away, or set "
                                 "LAUDTRITON_CACHE=0 to write the CSV only")
        if not cache.enabled:
            print(f"cache disabled ({disabled_by()}): the timings go to the CSV only",
                  file=sys.stderr)
        if args.force and (args.clustered or not cache.enabled):
            print("note: --force does nothing here: " + ("a --clustered sweep" if args.clustered
                  else "a sweep with the cache disabled") + " reads no cached timing and "
                  "times every item anyway", file=sys.stderr)
        prune = _pruner(args, dev)
        csv_path = (os.path.expanduser(args.csv) if args.csv is not None  # '--csv=~/x'
                    else default_csv(args, dev.type))
        check_output_path(csv_path, "--csv")
        try:
            res = sweep(args.model, mode=args.mode, granularity=args.granularity,
                        rates=rates, batch=args.batch, device=str(dev),
                        blocks=args.blocks, shard=shard, force=args.force,
                        clustered=args.clustered, cache=cache, csv_path=csv_path,
                        progress=not args.no_progress, input_size=args.input_size,
                        dtype=args.dtype, variants=args.variants,
                        channel_granularity=args.channel_granularity, prune=prune)
        except RuntimeError as e:  # the items timed before it are in the cache
            size = "" if args.input_size is None else f" --input-size {args.input_size}"
            raise out_of_memory(e, f"--batch {args.batch}{size}") from None
    except ValueError as e:
        remove_if_empty(made)
        return fail("sweep", str(e))
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (``cli.main``): the cache folder
        remove_if_empty(made)  # made, left empty (stopped while planning, or before an
        if isinstance(e, SweepInterrupted):  # item was saved), is removed as on a refusal
            return 130  # sweep printed its line (how far it got, where the results are)
        raise  # stopped while planning: ``main`` prints the line
    _print_summary(res.rows)
    _print_outcome(res, args, cache)
    return 0


def _make_cache_folder(cache_dir: str | None, cache: TuneCache) -> str | None:
    """``run_sweep``'s cache folder made writable before any timing (``make_writable_dir``:
    the top folder it made, or None): --cache-dir, else $LAUDTRITON_CACHE_DIR's or the
    default one.

    Raises:
        ValueError: naming the folder that cannot be made or written.
    """
    if cache_dir is not None:
        return make_writable_dir(cache_dir, "--cache-dir")
    try:
        return make_writable_dir(str(cache.dir), "the cache directory")
    except ValueError as e:
        raise ValueError(f"{e}; give a writable --cache-dir (or LAUDTRITON_CACHE_DIR)"
                         ) from None


def _pruner(args: argparse.Namespace, dev: torch.device) -> Prune | None:
    """``sweep``'s ``prune`` for --prune-top K (None without it): the latency predictor of
    --hardware (default: the device swept, its calibration and fitted factors read from
    --cache-dir, as ``predict --cache-dir`` reads them) keeps each variant's K best configs.

    Raises:
        ValueError: a negative --prune-top, --hardware without --prune-top, or hardware of
            another kind than the device swept.
    """
    if args.prune_top < 0:
        raise ValueError(f"--prune-top {args.prune_top} must be >= 0 (0: no pruning)")
    if args.hardware is not None and not args.prune_top:
        raise ValueError(f"--hardware {args.hardware!r} is used only with --prune-top K "
                         "(K >= 1); give both or neither")
    if not args.prune_top:
        return None
    from ..predict.hardware import get_hardware
    from ..predict.prune import make_prune

    # read once: "cpu" / "cuda" read their calibration file
    hw = get_hardware(("cuda" if dev.type == "cuda" else "cpu") if args.hardware is None
                      else args.hardware, args.cache_dir)  # ('' is refused there, not "cpu")
    if args.hardware is not None and (hw.kind == "cpu") != (dev.type == "cpu"):
        raise ValueError(
            f"--hardware {args.hardware!r} models "
            f"{dict(cpu='a CPU', gpu='a GPU', edge='an edge GPU')[hw.kind]}, and this "
            f"sweep times --device {args.device}: the configs would be pruned "
            "by another kind of machine's model; give hardware of the device "
            "swept, or leave --hardware out")
    return make_prune(hw, args.prune_top, cache_dir=args.cache_dir)


def _print_outcome(res: SweepResult, args: argparse.Namespace, cache: TuneCache) -> None:
    """``run_sweep``'s closing lines: items timed and cached, merged rates, pruned
    configs, seconds and the CSV; where the cache went, or why it was not saved."""
    merged = (f", {res.merged} asked rates realised the rate of another (timed once: "
              "timings are kept at the rate the masks realise)" if res.merged else "")
    pruned = "" if not args.prune_top else (
        f", {res.pruned} kernel config(s) left out by --prune-top" if res.pruned else
        f"; --prune-top {args.prune_top} left nothing out (no variant timed here has more "
        "configs)")
    print(f"\n{res.timed} (spec, rate) items timed, {res.cached} from the cache{merged}"
          f"{pruned}, {res.seconds:.1f} s; CSV: {res.csv_path}")
    if res.saved and not res.timed and not res.cached:
        print("cache: nothing to write (no item)")
    elif res.saved:
        print(f"cache: {cache.path}")
    else:
        why = ("--clustered: timings on clustered masks are never cached" if args.clustered
               else f"disabled by {disabled_by()}" if not cache.enabled
               else cache.unsaved_why or f"directory not writable: {cache.dir}")
        print(f"cache NOT saved ({why}); the results are only in the CSV", file=sys.stderr)


def _print_summary(rows: list[dict]) -> None:
    """One line per (spec, rate): the variant ``compile`` would choose from these timings
    (the fastest, but ``dense`` unless beaten by more than ``schedule.DENSE_MARGIN``), its
    time vs dense, and the fastest variant where that differs. Mode both: from the item
    the cache keeps for the rate (row "dispatched"), not from the CSV-only ones at other
    channel rates. "dense" is the dense block, the fastest timing of its spec at rate 1
    where the rows hold one whose FLOPs ratio is 1 (mode both's grid rate 1 may be at a
    lower channel rate): the ``dense`` variant applies the masks, and with channel masks
    runs unpacked convolutions, 1.1-2.8x the dense block on CPU; else the ``dense``
    variant's. The rule is the plots' (``plot_rows.dense_blocks``), taken per spec: a
    figure takes the dense variant's line for all of its specs where one lacks it."""
    from ..schedule import DispatchTable, fastest

    timings: dict[tuple[str, float], dict] = {}
    partial: set[str] = set()  # specs whose rate-1 item is not the whole block
    for r in rows:
        if not r.get("dispatched", True):
            continue
        per = timings.setdefault((r["spec"], r["rate"]), {})
        per.setdefault(r["variant"], {})[r["config"]] = r["seconds"]
        fr = r.get("flops_ratio")
        if r["rate"] == 1.0 and not whole_block(None if fr in (None, "") else float(fr)):
            partial.add(r["spec"])
    full = {spec: min((t for cfgs in per.values() for t in cfgs.values()), default=math.inf)
            for (spec, rate), per in timings.items() if rate == 1.0 and spec not in partial}
    lines = []
    for (spec, rate), per in timings.items():
        table = DispatchTable()
        table.add(rate, per, "measured")
        if not table.entries:
            continue
        chosen = table.choose(rate)
        quickest = fastest(per)[0]
        dense = table.dense_seconds.get(rate_key(rate), math.nan)
        if math.isfinite(full.get(spec, math.inf)):
            dense = full[spec]
        lines.append((spec, rate, chosen.variant, chosen.seconds, dense,
                      "" if quickest == chosen.variant else quickest))
    if not lines:
        return
    w = max(len(line[0]) for line in lines)
    print(f"{'block spec':<{w}}  {'rate':>5}  {'chosen':<14} {'ms':>8} {'dense ms':>9} "
          f"{'x dense':>8}  fastest (where not chosen: within the dense margin)")
    for spec, rate, variant, t, d, other in lines:
        print(f"{spec:<{w}}  {format_rate(rate):>5}  {variant:<14} {t * 1e3:>8.3f} "
              f"{d * 1e3:>9.3f} {t / d:>8.2f}  {other}")
