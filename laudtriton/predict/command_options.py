"""The options ``laudtriton predict`` and ``laudtriton design`` share (the model, its
shapes, the hardware, the cache directory), their checks, their comma lists, and the
predictor they name (``command_predictor``) with the note on a dtype it has no peak for.
"""

from __future__ import annotations

import argparse
import sys

from ..tune.layout_options import CHANNEL_GRANULARITY
from ..tune.numbers import ascii_int
from .calibration import measured_here, predictor_for
from .hardware import HardwareSpec, known_hardware


def add_common_options(p: argparse.ArgumentParser, model_default: str = "laud_resnet101"
                       ) -> None:
    """Add the options predict and design share to ``p``: the model, the hardware and
    the block shapes (batch, dtype, input size, channel granularity), the cache
    directory and --no-fit (``check_common_options`` checks them)."""
    p.add_argument("--model", default=model_default,
                   help=f"laud_resnet50 | laud_resnet101 (default {model_default})")
    p.add_argument("--hardware", default="cpu",
                   help=f"one of {', '.join(known_hardware())} (default cpu)")
    p.add_argument("--batch", type=ascii_int, default=1, help="images per batch (default 1)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="float32 | float16 | bfloat16 (default: float32 on cpu, else float16)")
    p.add_argument("--input-size", type=ascii_int, default=224,
                   help="input height and width in pixels (default 224)")
    p.add_argument("--channel-granularity", default=CHANNEL_GRANULARITY,
                   help="channels per channel-mask group: one int or per stage 'a-b-c-d' "
                        f"(default {CHANNEL_GRANULARITY}; read by channel and both stages)")
    p.add_argument("--cache-dir", default=None,
                   help="autotune cache / calibration directory, read with --hardware cpu "
                        "or cuda (default: the one `laudtriton env` shows)")
    p.add_argument("--no-fit", action="store_true",
                   help="use default efficiency factors, not ones fitted on cached timings "
                        "(a preset --hardware always uses the defaults)")


def check_common_options(args: argparse.Namespace) -> None:
    """The options of ``add_common_options`` that every run reads, before any work: a ValueError
    naming the first bad one."""
    from ..tune.layout_options import parse_stages
    from ..tune.options import check_batch, check_input_size
    from ..tune.paths import check_cache_dir

    check_batch(args.batch)  # per-sample mask tables grow with it
    check_input_size(args.input_size)
    parse_stages(args.channel_granularity, "--channel-granularity")
    check_cache_dir(args.cache_dir, read=True)


def comma_list(text: str, flag: str, noun: str, accepted: str) -> list[str]:
    """The items of the comma list ``text`` given with ``flag``; a ValueError naming it if
    there are none (',' or '' would otherwise silently mean "nothing" or "everything") or
    an item is empty (``comma_items``)."""
    from ..tune.options import comma_items

    items = comma_items(text, flag, accepted)
    if not items:
        raise ValueError(f"{flag} {text!r} names no {noun}; give {accepted}")
    return items


def command_predictor(args: argparse.Namespace, command: str
                      ) -> tuple[HardwareSpec, dict | None, str]:
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


def peak_note(hw: HardwareSpec, dtype: str) -> str:
    """A line saying that ``hw`` has no peak of its own for ``dtype`` (a CPU calibration
    measures float32 only), or ''."""
    if dtype in dict(hw.peak):
        return ""
    why = " (a CPU calibration measures float32 only)" if hw.name == "cpu" else ""
    return f"\nnote: {hw.name} has no {dtype} peak of its own{why}: its float32 rate is used"
