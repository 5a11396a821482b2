"""The per-stage options of a LAUD-ResNet (mode, granularity, channel maskers, ...):
one value for all four stages, "a-b-c-d", or a list of four, each checked."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .block import CHANNEL_MASKERS, MODES


def per_stage(value: object, name: str, cast: Callable[[Any], Any], accepted: str) -> list:
    """Parse a per-stage argument: a scalar, a "a-b-c-d" string, or a 4-element list."""
    if isinstance(value, str) and "-" in value:
        items = value.split("-")
        if any(not item.strip() for item in items):  # "-1", "4--2-1": a sign or a gap
            raise ValueError(f"{name} {value!r} is not valid (an empty stage between or "
                             f"around its dashes); accepted: {accepted}")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value] * 4
    if len(items) != 4:
        raise ValueError(
            f"{name} {value!r} has {len(items)} stages; LAUD-ResNet has 4 ({accepted})"
        )
    out = []
    for i, v in enumerate(items):
        try:
            out.append(cast(v))
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            where = "" if len(set(map(str, items))) == 1 else f" (stage {i + 1}: {v!r})"
            raise ValueError(f"{name} {value!r} is not valid{where}; "
                             f"accepted: {accepted}") from None
    return out


def _mode(v: object) -> str:
    if v not in MODES:
        raise ValueError(f"mode {v!r} unknown; accepted: {', '.join(MODES)}")
    return v


def parse_modes(mode: str | Sequence[str]) -> list[str]:
    """The mode of each of the 4 stages: one of ``MODES`` for all, "a-b-c-d", or a list.

    Raises:
        ValueError: naming the mode and the accepted forms.
    """
    if isinstance(mode, str) and mode not in MODES and "-" not in mode:
        raise ValueError(f"mode {mode!r} unknown; accepted: {', '.join(MODES)}, or per stage")
    return per_stage(mode, "mode", _mode, "'spatial', 'spatial-spatial-channel-layer', ...")


def masker_name(v: object) -> str:
    """v if it is one of ``CHANNEL_MASKERS``, else a ValueError naming it."""
    if v not in CHANNEL_MASKERS:
        raise ValueError(f"channel_masker {v!r} unknown; accepted: {', '.join(CHANNEL_MASKERS)}")
    return v


def masker_layers(v: object) -> int:
    """v as 1 or 2 (a channel MLP masker's layers), else a bare ValueError."""
    iv = parse_positive_int(v)
    if iv not in (1, 2):
        raise ValueError(v)
    return iv


def parse_positive_int(v: object) -> int:
    """v as an int if it is a whole number > 0 (an int, a whole float, a string of ASCII
    digits), else a bare ValueError for the caller to word: bools, numpy and torch bools
    too (``np.bool_(True)`` was S=1), fractions (2.9 is not taken as 2), and the strings
    ``int`` reads beyond digits ("2_0" was 20, and digits of other scripts were taken)."""
    if isinstance(v, (bool, np.bool_)) or (isinstance(v, torch.Tensor)
                                           and v.dtype == torch.bool):
        raise ValueError(v)
    if isinstance(v, str) and not (v.strip().isascii() and v.strip().isdigit()):
        raise ValueError(v)
    iv = int(v)
    if iv != float(v) or iv <= 0:
        raise ValueError(v)
    return iv
