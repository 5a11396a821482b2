"""The per-stage options of a LAUD-ResNet (mode, granularity, channel maskers, ...):
one value for all four stages, "a-b-c-d", or four as a list, tuple or 1-d array, each
checked (``depths`` takes the same forms except one value for all stages)."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .block import CHANNEL_MASKERS, MODES


def per_stage(value: object, name: str, cast: Callable[[Any], Any], accepted: str,
              broadcast: bool = True) -> list:
    """Parse a per-stage argument into a list of 4 ``cast`` values. Accepted: a scalar
    for every stage (unless ``broadcast`` is False), a "a-b-c-d" string, or 4 values as
    a list, tuple, range or 1-d numpy array or tensor (a 0-d one is its scalar).

    Raises:
        ValueError: naming ``name`` and its value: not 4 stages, an array of 2 or more
            dimensions, or a stage that ``cast`` refuses.
    """
    given = value
    value = array_values(value, name, f"{accepted}, or a 1-d array of 4")
    if isinstance(value, str) and "-" in value:
        items = value.split("-")
        if any(not item.strip() for item in items):  # "-1", "4--2-1": a sign or a gap
            raise ValueError(f"{name} {given!r} is not valid (an empty stage between or "
                             f"around its dashes); accepted: {accepted}")
    elif isinstance(value, (list, tuple, range)):
        items = list(value)
    else:
        items = [value] * (4 if broadcast else 1)
    if len(items) != 4:
        raise ValueError(
            f"{name} {given!r} has {len(items)} stages; LAUD-ResNet has 4 ({accepted})"
        )
    out = []
    for i, v in enumerate(items):
        try:
            out.append(cast(v))
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            where = "" if len(set(map(str, items))) == 1 else f" (stage {i + 1}: {v!r})"
            raise ValueError(f"{name} {given!r} is not valid{where}; "
                             f"accepted: {accepted}") from None
    return out


def array_values(value: object, name: str, accepted: str) -> object:
    """A numpy array or tensor of 1 dimension as a list of Python values, of 0 as its one
    value (np.str_ -> str); any other ``value`` as it is. For per-stage arguments.

    Raises:
        ValueError: naming ``name``, the value and ``accepted``, for an array of 2 or more
            dimensions.
    """
    if not isinstance(value, (np.ndarray, torch.Tensor)):
        return value
    if value.ndim > 1:
        raise ValueError(f"{name} {value!r} is a {value.ndim}-d array; accepted: {accepted}")
    return value.tolist()


MODE_FORMS = "'spatial', 'spatial-spatial-channel-layer', ..."  # parse_modes' accepted forms


def _mode(v: object) -> str:
    if isinstance(v, str):  # " spatial " of "spatial - channel - ...", as granularity
        v = v.strip()       # takes "4 - 4 - 2 - 1"
    if v not in MODES:
        raise ValueError(f"mode {v!r} unknown; accepted: {', '.join(MODES)}")
    return v


def parse_modes(mode: str | Sequence[str]) -> list[str]:
    """The mode of each of the 4 stages: one of ``MODES`` for all, "a-b-c-d", or a list.

    Raises:
        ValueError: naming the mode and the accepted forms.
    """
    if isinstance(mode, str) and mode.strip() not in MODES and "-" not in mode:
        raise ValueError(f"mode {mode!r} unknown; accepted: {', '.join(MODES)}, or per stage")
    return per_stage(mode, "mode", _mode, MODE_FORMS)


def masker_name(v: object) -> str:
    """v (spaces around it removed, as ``_mode`` removes them) if it is one of
    ``CHANNEL_MASKERS``, else a ValueError naming it."""
    if isinstance(v, str):
        v = v.strip()
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
    """v as an int if it is an int > 0 (Python or numpy, or a 0-d integer array or
    tensor) or a string of ASCII digits (a stage of "4-4-2-1", a CLI value), else a bare
    ValueError for the caller to word. Refused: bools, numpy and torch bools too
    (``np.bool_(True)`` was S=1); floats, whole ones too (2.0 was S=2 while ``depths``
    and ``LaudBottleneck`` refuse it; 2.9 is not taken as 2); and the strings ``int``
    reads beyond digits ("2_0" was 20, and digits of other scripts were taken)."""
    if isinstance(v, (np.ndarray, torch.Tensor)) and v.ndim == 0:
        v = v.item()  # its Python scalar: a bool, an int or a float
    if isinstance(v, str):
        v = v.strip()  # (int() keeps the \x1c-\x1f that strip removes)
        if not (v.isascii() and v.isdigit()):
            raise ValueError(v)
        v = int(v)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v <= 0:
        raise ValueError(v)
    return int(v)
