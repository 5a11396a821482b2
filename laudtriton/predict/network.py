"""Block specs of a LAUD-ResNet without building it, and the FLOPs-ratio -> rate mapping.

The predictor and the co-design search evaluate thousands of (mode, S) configurations;
building each model would take seconds, so the BlockSpecs are derived here from the
architecture (the same rules as ``laudtriton.nn.resnet``; a test checks they agree).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..nn.maskers import finite_real
from ..nn.resnet import DEPTHS, STAGE_PLANES, STAGE_STRIDES
from ..nn.stages import array_values, parse_positive_int
from ..ops.masks import expected_mask1_fraction
from ..ops.spec import BlockSpec
from ..tune.cache import check_spec

MODES = ("spatial", "channel", "layer", "both")


def per_stage(value: str | int | Sequence[Any], name: str, cast: Callable[[Any], Any] = str
              ) -> list:
    """'a-b-c-d', a scalar or 4 values -> 4 values. The model's forms
    (``nn.stages.per_stage``): 4 values as a list, tuple, range or 1-d numpy array or
    tensor (a 0-d one is its scalar); the CLI's wording in the errors ("--name").

    Raises:
        ValueError: naming ``name``, the value and the accepted forms (an array of 2 or
            more dimensions too).
    """
    given = value
    value = array_values(value, f"--{name}", "one value, 'a-b-c-d' or 4 values")
    items = value.split("-") if isinstance(value, str) else (
        list(value) if isinstance(value, (list, tuple, range)) else [value] * 4)
    if len(items) == 1:
        items = items * 4
    if len(items) != 4:
        raise ValueError(f"--{name} {given!r} has {len(items)} stages; LAUD-ResNet has 4 "
                         "(give one value or 'a-b-c-d')")
    try:
        return [cast(v) for v in items]
    except (TypeError, ValueError, OverflowError):  # (OverflowError: int(inf))
        raise ValueError(f"--{name} {given!r} is malformed") from None


def check_rate(rate: float, name: str = "rate") -> float:
    """``rate`` as a float if it is a real number in [0, 1] (not a bool; a one-value
    tensor counts), else a ValueError naming ``name``: a rate outside gave FLOPs ratios
    and times of no mask (1.045 at rate 1.1)."""
    r = finite_real(name, rate)
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"{name} {rate!r} must be in [0, 1]")
    return r


def stem_hw(input_size: int) -> int:
    """Feature size after the stem (7x7 conv stride 2, 3x3 max-pool stride 2)."""
    return ((input_size - 1) // 2 + 1 - 1) // 2 + 1


def check_arch(arch: str) -> None:
    """Raise a ValueError naming ``--model`` unless ``arch`` is a known model (DEPTHS)."""
    if arch not in DEPTHS:
        raise ValueError(f"--model {arch!r} unknown; accepted: {', '.join(DEPTHS)}")


def check_batch_and_size(batch: int, input_size: int) -> None:
    """Raise a ValueError naming ``batch`` or ``input size`` unless batch is an int >= 1
    and input_size an int >= 32 (numpy ints count, bools do not)."""
    for name, value, least in (("batch", batch, 1), ("input size", input_size, 32)):
        if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)
                or value < least):
            raise ValueError(f"{name} {value!r} must be an int >= {least}")


def model_specs(arch: str = "laud_resnet50", mode: str | Sequence[str] = "spatial",
                granularity: int | str | Sequence[int] = "4-4-2-1", batch: int = 1,
                input_size: int = 224, dtype: str = "float32",
                channel_granularity: int | str | Sequence[int] = 1
                ) -> list[tuple[str, BlockSpec]]:
    """(block name, BlockSpec) of every block of ``arch`` for [batch, 3, size, size] inputs.

    mode / granularity / channel_granularity: one value or per stage ('a-b-c-d').

    Raises:
        ValueError: unknown arch or mode, S larger than a stage's map, a channel group size
            that does not divide a width, a bad batch or input size.
    """
    check_arch(arch)
    check_batch_and_size(batch, input_size)
    batch, input_size = int(batch), int(input_size)
    modes = per_stage(mode, "mode", lambda v: v.strip() if isinstance(v, str) else v)
    for m in modes:  # (spaces around a stage's mode taken, as the model takes them)
        if m not in MODES:
            raise ValueError(f"--mode {mode!r}: {m!r} unknown; accepted: {', '.join(MODES)}")
    gran = per_stage(granularity, "granularity", parse_positive_int)
    cgran = per_stage(channel_granularity, "channel-granularity", parse_positive_int)
    size, inplanes, out = stem_hw(input_size), 64, []
    for i, depth in enumerate(DEPTHS[arch]):
        planes, stride = STAGE_PLANES[i], STAGE_STRIDES[i]
        out_size = (size - 1) // stride + 1
        spatial = modes[i] in ("spatial", "both")
        if spatial and not 1 <= gran[i] <= out_size:
            raise ValueError(f"--granularity {granularity!r}: S={gran[i]} in stage {i + 1} "
                             f"must be in [1, {out_size}] (the {out_size}x{out_size} map)")
        # checked in every mode, as the model checks it (``nn.LaudBottleneck``)
        if cgran[i] < 1 or planes % cgran[i]:
            why = ("" if modes[i] in ("channel", "both") else
                   f" (stage {i + 1} is a {modes[i]} stage, but the model checks every "
                   "stage's width; give one value per stage, 'a-b-c-d')")
            raise ValueError(f"--channel-granularity {cgran[i]} must divide the stage "
                             f"{i + 1} width {planes}{why}")
        groups = planes // cgran[i] if modes[i] in ("channel", "both") else 0
        for j in range(depth):
            s = stride if j == 0 else 1
            hw = size if j == 0 else out_size
            spec = BlockSpec(inplanes, planes, 4 * planes, s,
                             s != 1 or inplanes != 4 * planes, (hw, hw), modes[i],
                             gran[i] if spatial else 1, groups, batch, dtype)
            out.append((f"layer{i + 1}.{j}", spec))
            inplanes = 4 * planes
        size = out_size
    return out


def stem_head_cost(input_size: int, batch: int, num_classes: int = 1000,
                   dtype: str = "float32") -> tuple[float, float, int]:
    """(multiply-adds, bytes, launches) of the dense stem (conv, BN folded, ReLU, max-pool)
    and head (pool, fc) of a LAUD-ResNet."""
    s1 = (input_size - 1) // 2 + 1
    s2 = stem_hw(input_size)
    s5 = s2
    for _ in range(3):  # layer2-4 halve the map (stride 2, padding 1): 7x7 at 224
        s5 = (s5 - 1) // 2 + 1
    el = 2 if dtype in ("float16", "bfloat16") else 4
    flops = batch * (3 * 64 * 49 * s1 * s1 + 2048 * num_classes)
    byts = el * (batch * (3 * input_size**2 + 2 * 64 * s1 * s1 + 64 * s2 * s2
                          + s5 * s5 * 2048) + 3 * 64 * 49 + 2048 * num_classes)
    return float(flops), float(byts), 5


def mask1_fraction(spec: BlockSpec, rate: float) -> float:
    """Expected mask1 fraction at spatial ``rate``, linear between whole active-cell counts
    (cells drawn uniformly at random)."""
    gh, gw = spec.grid
    n = gh * gw
    a = rate * n
    lo = min(int(math.floor(a)), n)
    f_lo = expected_mask1_fraction(spec.in_hw, spec.stride, (gh, gw), lo)
    if lo >= n or a == lo:
        return f_lo
    f_hi = expected_mask1_fraction(spec.in_hw, spec.stride, (gh, gw), lo + 1)
    return f_lo + (a - lo) * (f_hi - f_lo)


def flops_ratio(spec: BlockSpec, rate: float) -> float:
    """Block FLOPs / dense block FLOPs at activation ``rate`` (official accounting, no
    maskers): spatial conv1·r1 + (conv2 + conv3)·r; channel conv1·r + conv2·r² + conv3·r;
    both: spatial with the channel rate also r; layer (conv1+conv2+conv3)·r; the
    downsample is always dense. Continuous and non-decreasing in ``rate``.

    Raises:
        ValueError: if ``spec`` is not a BlockSpec (it raised AttributeError,
            'conv_macs') or ``rate`` is not a number in [0, 1] (``check_rate``).
    """
    check_spec(spec, "flops_ratio")
    rate = check_rate(rate)
    c1, c2, c3, ds = spec.conv_macs()
    if spec.mode == "layer":
        part = (c1 + c2 + c3) * rate
    elif spec.mode == "channel":
        part = c1 * rate + c2 * rate * rate + c3 * rate
    else:
        cr = rate if spec.mode == "both" else 1.0
        part = c1 * cr * mask1_fraction(spec, rate) + (c2 * cr * cr + c3 * cr) * rate
    return (part + ds) / (c1 + c2 + c3 + ds)


def check_flops_target(target: object, name: str = "target") -> float:
    """``target`` as a float, if it is a number (not a bool) in (0, 1]: a FLOPs ratio.

    Raises:
        ValueError: naming ``name``: ``target`` for a Python caller (until session 66
            the CLI's ``--target-rate``, which such a caller never gave; until session 68
            so in ``codesign.design_search``), ``--target-rate`` for ``laudtriton design``
            (``codesign.check_target_rate`` with its option names).
    """
    try:
        t = finite_real(name, target)
    except ValueError:  # NaN, inf, a bool, no number: one message for every bad target
        t = math.nan
    if not 0.0 < t <= 1.0:
        raise ValueError(f"{name} {target!r} must be in (0, 1] (a FLOPs ratio)")
    return t


def rate_for_flops_ratio(spec: BlockSpec, target: float) -> float:
    """The activation rate whose FLOPs ratio (:func:`flops_ratio`) is ``target`` (bisection;
    0 when even rate 0 exceeds it, i.e. the dense downsample alone is above the target).

    Raises:
        ValueError: if ``target`` is not a number in (0, 1] (:func:`check_flops_target`,
            naming ``target``), or ``spec`` is not a BlockSpec (:func:`flops_ratio`).
    """
    t = check_flops_target(target)
    if flops_ratio(spec, 0.0) >= t:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if flops_ratio(spec, mid) <= t:
            lo = mid
        else:
            hi = mid
    return lo
