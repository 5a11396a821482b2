"""The ``compact`` variant: dynamic layer skipping in pure torch (DESIGN.md sections 2, 3).

The layer gate makes one decision per sample (``masks.grid`` [B, 1, 1, 1]). The active
samples run the dense folded block, as contiguous batch slices of x (large maps) or
gathered into one smaller batch (small maps, see GATHER_MAX_PIXELS); inactive samples
output relu(identity) exactly. The identity is x, or the dense downsample of x computed
for the whole batch into the output tensor; residuals are added into it in place
(``PackedConv.add_into_``). Weights are packed once per input size
(``packed.PackedConv``, cached on the FoldedBlock).
"""

from __future__ import annotations

import torch

from ..nn.block import BlockMasks
from .channel import (
    SlicedWeights,
    dense_weights,
    hidden,
    put,
    residual_into,
    slice_cache,
    take,
)
from .fold import FoldedBlock
from .packed import PackedConv
from .registry import Cost, Variant, register
from .spec import BlockSpec

CL = torch.channels_last


def gate_values(masks: BlockMasks, batch: int, who: str = "compact") -> list[bool]:
    """The layer gate of each sample as a Python list (one host transfer, no other op).
    who: the caller, for the message (the variant, or a compiled block's name).

    Raises:
        ValueError: if masks.grid is None or not of shape [B, 1, 1, 1].
    """
    g = masks.grid
    if g is None or g.dim() != 4 or tuple(g.shape[1:]) != (1, 1, 1) or g.shape[0] != batch:
        got = None if g is None else tuple(g.shape)
        raise ValueError(
            f"{who}: layer gate masks.grid has shape {got}; accepted [{batch}, 1, 1, 1]"
        )
    return [v > 0.5 for v in g.view(batch).tolist()]


def _block(sw: SlicedWeights, ds: PackedConv | None, x: torch.Tensor) -> torch.Tensor:
    """relu(residual(x) + identity(x)) for every sample of x (channels_last)."""
    identity = x if ds is None else ds(x, relu=False)
    return sw.conv3(hidden(sw, x), relu=True, add=identity)


def _skip(ds: PackedConv | None, x: torch.Tensor) -> torch.Tensor:
    """relu(identity(x)) for every sample of x (channels_last)."""
    if ds is None:
        return torch.relu(x).contiguous(memory_format=CL)
    return ds(x, relu=True)


def _runs(on: list[bool]) -> list[tuple[int, int, bool]]:
    """Maximal runs [a, e) of equal gate values: [1, 1, 0] -> [(0, 2, 1), (2, 3, 0)]."""
    out, a = [], 0
    for i in range(1, len(on) + 1):
        if i == len(on) or on[i] != on[a]:
            out.append((a, i, on[a]))
            a = i
    return out


# Active samples run as contiguous batch slices (views: no gather, one output copy) unless
# the input map is small and they are scattered: there a gathered batch amortises the weight
# reads. Measured on 2-core x86 (1 thread, batch 8, gate 10110010):
# 256->64->256 at 56x56: 13.2 ms slices vs 24-28 ms gathered; 2048->512->2048 at 7x7:
# 10.7 ms slices vs 9.6 ms gathered; 512->128->512 at 28x28: 10.4 vs 10.0 ms.
GATHER_MAX_PIXELS = 28 * 28


def _gathered(in_hw: tuple[int, int], runs) -> bool:
    return in_hw[0] * in_hw[1] <= GATHER_MAX_PIXELS and sum(r[2] for r in runs) > 1


def _active_index(on: list[bool], device) -> torch.Tensor:
    """[n] int64 indices of the samples whose gate is on (for gathering them)."""
    return torch.tensor([i for i, v in enumerate(on) if v], device=device)


def _residuals_into(sw: SlicedWeights, x: torch.Tensor, out: torch.Tensor,
                    on: list[bool], runs) -> None:
    """out[i] = relu(residual(x[i]) + out[i]) in place for the samples whose gate is
    ``on``: per run of consecutive samples (views), or gathered into one batch on small
    maps."""
    if _gathered(tuple(x.shape[2:]), runs):
        idx = _active_index(on, x.device)
        xs = xs_out = take(x, idx)
        if out is not x:
            xs_out = take(out, idx)
        put(out, idx, residual_into(sw, xs, xs_out))
        return
    for a, e, active in runs:
        if active:
            residual_into(sw, x[a:e], out[a:e])


@torch.no_grad()
def compact_block(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks,
                  inplace: bool = False) -> torch.Tensor:
    """Layer-skipping block: [B, Cin, H, W] channels_last -> [B, Cout, Ho, Wo] channels_last.

    Active samples (gate = 1): relu(residual(x) + identity(x)); the others relu(identity(x)).
    With a downsample, the identity of the whole batch is one convolution written where the
    output goes; active samples add their residual into it in place and the others take
    its ReLU in place (no output copy, except where the active samples are gathered into
    one batch and scattered back: small maps with scattered samples, ``_gathered``).
    inplace: x is a ReLU output (>= 0) the caller gives away; a block without downsample
    then writes its output into x (the inactive samples already hold relu(x) = x) and
    returns it (into a channels_last copy of x when x is not channels_last).

    Raises:
        ValueError: if masks.grid is not a layer gate [B, 1, 1, 1], or x does not fit the
            block (``FoldedBlock.check_input``).
    """
    fb.check_input(x, None, "compact")
    b = x.shape[0]
    on = gate_values(masks, b)
    n = sum(on)
    x = x.contiguous(memory_format=CL)
    in_hw = (x.shape[2], x.shape[3])
    ds = slice_cache(fb).downsample(fb, in_hw)
    if n == 0:
        return x if inplace and ds is None else _skip(ds, x)
    sw = dense_weights(fb, in_hw)
    if n == b:
        return residual_into(sw, x) if inplace and ds is None else _block(sw, ds, x)
    runs = _runs(on)
    if ds is not None:
        out = ds(x, relu=False)
        _residuals_into(sw, x, out, on, runs)
        for a, e, active in runs:
            if not active:
                out[a:e].relu_()
        return out
    if inplace:
        _residuals_into(sw, x, x, on, runs)
        return x
    out = torch.empty_like(x, memory_format=CL)
    gathered = _gathered(in_hw, runs)
    if gathered:
        idx = _active_index(on, x.device)
        put(out, idx, _block(sw, None, take(x, idx)))
    for a, e, active in runs:
        if active and not gathered:
            out[a:e] = _block(sw, None, x[a:e])
        elif not active:
            torch.clamp_min(x[a:e], 0, out=out[a:e])
    return out


def compact_cost(spec: BlockSpec, rate: float) -> Cost:
    """Cost at gate rate ``rate`` (fraction of samples on): residual multiply-adds × rate
    plus the dense downsample for every sample; bytes: input, identity and output once,
    the active samples' gather and scatter, and all weights; launches: torch ops."""
    h, w = spec.in_hw
    ho, wo = spec.out_hw
    c1, c2, c3, ds = spec.conv_macs()
    f = ((c1 + c2 + c3) * rate + ds) * spec.batch
    wts = spec.weight_count()
    el = 2 if spec.dtype in ("float16", "bfloat16") else 4
    on = spec.batch * rate
    act = spec.batch * (spec.in_channels * h * w + 2 * spec.out_channels * ho * wo)
    act += 0.0 if rate in (0.0, 1.0) else on * (spec.in_channels * h * w + spec.out_channels
                                                * ho * wo)
    launches = (7 if rate > 0 else 1) + int(spec.downsample) + (4 if 0 < rate < 1 else 0)
    return Cost(flops=float(f), bytes=float(el * (act + wts)), launches=launches)


def _supports(spec: BlockSpec) -> bool:
    return spec.mode == "layer"


def _run(fb, x, masks, config=None):
    return compact_block(fb, x, masks)


def _run_inplace(fb, x, masks, config=None):
    return compact_block(fb, x, masks, inplace=True)


COMPACT = register(Variant(
    name="compact", modes=("layer",), backends=("cpu", "cuda"), run=_run,
    run_inplace=_run_inplace, cost=compact_cost,
    supports=_supports,
    description="dense block on the samples whose layer gate is on (batch slices or a "
                "gathered batch), relu(identity) for the others",
))
