"""``laudtriton design``: the latency-guided co-design search (:mod:`laudtriton.codesign`)
as a command. ``add_design_parser`` adds its options; ``run_design`` checks them, prints the
ranking, and raises ValueError for a user error (which the CLI prints on stderr, exit 2).
"""

from __future__ import annotations

import argparse
import math
import sys

from ..tune.numbers import ascii_float, ascii_int
from .command_options import (
    add_common_options,
    check_common_options,
    comma_list,
    command_predictor,
    peak_note,
)

DESIGN_GRANULARITIES = "1,2,4,8"  # design's --granularities: the S a search ranks


def add_design_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``design``; returns its parser."""
    from ..codesign import MAX_DESIGNS

    p = subparsers.add_parser(
        "design", help="rank per-stage mode x granularity by predicted latency",
        description="Latency-guided co-design: every per-stage (mode, S) configuration at "
                    "the target FLOPs ratio, ranked by predicted latency (at most "
                    f"{MAX_DESIGNS} configurations: the product of the options per stage).")
    add_common_options(p)
    p.add_argument("--target-rate", type=ascii_float, required=True,
                   help="target FLOPs ratio of the residual blocks, in (0, 1]")
    p.add_argument("--modes", default="spatial,channel,layer",
                   help="comma list of the modes a stage may take, of spatial, channel, "
                        "layer, both (default spatial,channel,layer)")
    p.add_argument("--granularities", default=DESIGN_GRANULARITIES,
                   help="comma list of the S a spatial (or both) stage may take, each at "
                        f"most its map (default {DESIGN_GRANULARITIES})")
    p.add_argument("--top", type=ascii_int, default=5,
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
    from ..codesign import (
        OPTION_NAMES,
        check_modes,
        check_target_rate,
        design_search,
        design_stages,
    )
    from ..tune.layout_options import READ_BY, check_layout_read, unread
    from ..tune.options import int_list
    from .network import check_arch

    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    check_common_options(args)
    # every option before the hardware (it may warn), named as the command's options
    check_target_rate(args.target_rate, OPTION_NAMES)
    check_arch(args.model)
    modes = tuple(comma_list(args.modes, "--modes", "mode",
                             "a comma list of spatial, channel, layer, both"))
    check_modes(modes, OPTION_NAMES)
    check_layout_read(modes, {"--channel-granularity": args.channel_granularity},
                      f"--modes {args.modes!r}")
    grans = tuple(int_list(args.granularities, "--granularities",
                           "comma-separated positive ints like 1,2,4,8"))
    default = {int(g) for g in DESIGN_GRANULARITIES.split(",")}
    if not set(READ_BY["--granularities"]) & set(modes) and set(grans) != default:
        raise unread("--granularities", args.granularities, f"--modes {args.modes!r}")
    # the options the search reads, before the hardware (whose calibration may warn)
    design_stages(args.model, modes, grans, args.batch, args.input_size,
                  args.dtype or "float32", args.channel_granularity, OPTION_NAMES)
    hw, factors, note = command_predictor(args, "design")
    designs = design_search(args.model, hw, args.target_rate, modes, grans, args.batch,
                            args.input_size, args.dtype, factors, args.channel_granularity)
    dtype = args.dtype or hw.default_dtype  # design_search's
    print(f"hardware: {hw.describe()}\n{note}{peak_note(hw, dtype)}")
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
