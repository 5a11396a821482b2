"""The ``compact`` variant: dynamic layer skipping in pure torch (DESIGN.md sections 2, 3).

The layer gate makes one decision per sample (``masks.grid`` [B, 1, 1, 1]). The active
samples are gathered into a smaller batch that runs the dense folded block; inactive
samples output relu(identity) exactly. Every sample needs the identity (x, or the dense
downsample of x); it is computed once per sample, inside the active sub-batch (where it
feeds the fused residual add) or the inactive one (fused with its ReLU). Weights are
packed once per input size (``channel.PackedConv``, cached on the FoldedBlock).
"""

from __future__ import annotations

import torch

from ..nn.block import BlockMasks
from .channel import PackedConv, SlicedWeights, put, slice_cache, take
from .fold import FoldedBlock
from .registry import Cost, Variant, register
from .spec import BlockSpec

CL = torch.channels_last


_DENSE = torch.ones(1, dtype=torch.bool)  # one channel group, on: the dense block


def dense_weights(fb: FoldedBlock, in_hw: tuple[int, int]) -> SlicedWeights:
    """The folded dense block, weights packed for inputs of ``in_hw`` (cached on ``fb`` in
    its SliceCache, like every channel pattern of the ``slice`` variant)."""
    return slice_cache(fb).get(fb, _DENSE, in_hw)


def active_samples(masks: BlockMasks, batch: int) -> torch.Tensor:
    """[n] int64 indices of the samples whose layer gate is on (one host sync).

    Raises:
        ValueError: if masks.grid is None or not of shape [B, 1, 1, 1].
    """
    g = masks.grid
    if g is None or g.dim() != 4 or tuple(g.shape[1:]) != (1, 1, 1) or g.shape[0] != batch:
        got = None if g is None else tuple(g.shape)
        raise ValueError(
            f"compact: layer gate masks.grid has shape {got}; accepted [{batch}, 1, 1, 1]"
        )
    return torch.nonzero(g[:, 0, 0, 0] > 0.5).flatten()


def _block(sw: SlicedWeights, ds: PackedConv | None, x: torch.Tensor) -> torch.Tensor:
    """relu(residual(x) + identity(x)) for every sample of x (channels_last)."""
    identity = x if ds is None else ds(x, relu=False)
    h = sw.conv1(x, relu=True)
    h = sw.conv2(h, relu=True)
    return sw.conv3(h, relu=True, add=identity)


def _skip(ds: PackedConv | None, x: torch.Tensor) -> torch.Tensor:
    """relu(identity(x)) for every sample of x (channels_last)."""
    if ds is None:
        return torch.relu(x).contiguous(memory_format=CL)
    return ds(x, relu=True)


@torch.no_grad()
def compact_block(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks) -> torch.Tensor:
    """Layer-skipping block: [B, Cin, H, W] channels_last -> [B, Cout, Ho, Wo] channels_last.

    Active samples (gate = 1): relu(residual(x) + identity(x)); the others relu(identity(x)).
    The downsample runs once per sample (inside the active or the inactive sub-batch).

    Raises:
        ValueError: if masks.grid is not a layer gate [B, 1, 1, 1].
    """
    b = x.shape[0]
    idx = active_samples(masks, b)
    n = idx.numel()
    x = x.contiguous(memory_format=CL)
    in_hw = (x.shape[2], x.shape[3])
    ds = slice_cache(fb).downsample(fb, in_hw)
    if n == 0:
        return _skip(ds, x)
    sw = dense_weights(fb, in_hw)
    if n == b:
        return _block(sw, ds, x)
    keep = torch.ones(b, dtype=torch.bool, device=idx.device)
    keep[idx] = False
    rest = torch.nonzero(keep).flatten()
    on = _block(sw, ds, take(x, idx))
    out = torch.empty((b, *on.shape[1:]), dtype=on.dtype, device=on.device,
                      memory_format=CL)
    put(out, idx, on)
    put(out, rest, _skip(ds, take(x, rest)))
    return out


def compact_cost(spec: BlockSpec, rate: float) -> Cost:
    """Cost at gate rate ``rate`` (fraction of samples on): residual multiply-adds × rate
    plus the dense downsample for every sample; bytes: input, identity and output once,
    the active samples' gather and scatter, and all weights; launches: torch ops."""
    h, w = spec.in_hw
    ho, wo = spec.out_hw
    res = (spec.in_channels * spec.width * h * w + 9 * spec.width**2 * ho * wo
           + spec.width * spec.out_channels * ho * wo)
    f = res * spec.batch * rate
    wts = spec.in_channels * spec.width + 9 * spec.width**2 + spec.width * spec.out_channels
    if spec.downsample:
        f += spec.in_channels * spec.out_channels * ho * wo * spec.batch
        wts += spec.in_channels * spec.out_channels
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


COMPACT = register(Variant(
    name="compact", modes=("layer",), backends=("cpu", "cuda"), run=_run, cost=compact_cost,
    supports=_supports,
    description="gather the samples whose layer gate is on, dense block on them, scatter back",
))
