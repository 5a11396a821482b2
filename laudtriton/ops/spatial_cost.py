"""The cost model of the spatial variants ``gather`` and ``patch`` (multiply-adds, bytes
moved, torch op count), for the latency predictor (DESIGN.md section 6)."""

from __future__ import annotations

from . import masks as mk
from .registry import Cost
from .rows import DENSE_CONV1_FRACTION
from .spec import BlockSpec


def _rates(spec: BlockSpec, rate: float) -> tuple[float, float, float]:
    """(mask1 fraction, mask3 fraction, channel fraction) expected at ``rate``."""
    gh, gw = spec.grid
    active = int(round(rate * gh * gw))
    r3 = active / (gh * gw)
    r1 = mk.expected_mask1_fraction(spec.in_hw, spec.stride, (gh, gw), active)
    rc = 1.0
    if spec.channel and spec.channel_groups:
        rc = round(rate * spec.channel_groups) / spec.channel_groups
    return r1, r3, rc


def _cost(spec: BlockSpec, rate: float, use_patch: bool) -> Cost:
    """Multiply-adds executed, bytes moved by the torch ops, and torch op count.

    In ``both`` mode the channel rate is taken equal to ``rate``. mask1 is estimated for
    cells drawn uniformly at random (``masks.expected_mask1_fraction``).
    """
    r1, r3, rc = _rates(spec, rate)
    b, cin, wd, cout = spec.batch, spec.in_channels, spec.width, spec.out_channels
    h, w = spec.in_hw
    ho, wo = spec.out_hw
    m = wd * rc
    n1 = b * h * w * (1.0 if r1 >= DENSE_CONV1_FRACTION and rc == 1.0 else r1)
    n2 = b * ho * wo * r3
    flops = n1 * cin * m + n2 * 9 * m * m + n2 * m * cout
    if spec.downsample:
        flops += b * ho * wo * cin * cout
    el = 2 if spec.dtype in ("float16", "bfloat16") else 4
    conv2_in = n2 * 9 * m if not use_patch else n2 * m * (mk.patch_size(
        spec.granularity, spec.stride) / spec.granularity) ** 2
    act = (b * h * w * cin + n1 * cin           # x for the identity, conv1 row gather
           + b * (h + 2) * (w + 2) * m + n1 * m  # zeroed buffer, conv1 rows
           + 2 * conv2_in + n2 * m              # im2col / patches written and read, conv2
           + 2 * b * ho * wo * cout             # relu(identity) read and written
           + 3 * n2 * cout)                     # identity rows, conv3, scatter
    if spec.downsample:
        act += 2 * b * ho * wo * cout
    wts = cin * m + 9 * m * m + m * cout + (cin * cout if spec.downsample else 0)
    groups = min(b, 2 ** spec.channel_groups) if spec.channel else 1
    launches = 4 + int(spec.downsample) + (0 if r3 == 0 else 12 * groups)
    return Cost(flops=float(flops), bytes=float(el * (act + wts)), launches=launches)


def gather_cost(spec: BlockSpec, rate: float) -> Cost:
    """Cost of ``gather`` at activation ``rate`` (see ``_cost``)."""
    return _cost(spec, rate, use_patch=False)


def patch_cost(spec: BlockSpec, rate: float) -> Cost:
    """Cost of ``patch`` at activation ``rate`` (see ``_cost``)."""
    return _cost(spec, rate, use_patch=True)
