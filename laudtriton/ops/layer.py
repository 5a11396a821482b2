"""The ``compact`` variant: dynamic layer skipping in pure torch (DESIGN.md sections 2, 3).

The layer gate makes one decision per sample (``masks.grid`` [B, 1, 1, 1]). The active
samples are gathered into a smaller batch that runs the dense folded block; inactive
samples output relu(identity) exactly. The identity (x, or the dense downsample of x) is
computed once for the whole batch, since every sample needs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nn.block import BlockMasks
from .dense import identity_path
from .fold import FoldedBlock
from .registry import Cost, Variant, register
from .spec import BlockSpec

CL = torch.channels_last


def residual_branch(fb: FoldedBlock, x: torch.Tensor) -> torch.Tensor:
    """Dense conv3(relu(conv2(relu(conv1(x))))) with folded BN, no mask, bias b3 included:
    [n, Cin, H, W] channels_last -> [n, Cout, Ho, Wo] channels_last."""
    h = F.conv2d(x, fb.w1[:, :, None, None], fb.b1).relu_()
    h = F.conv2d(h, fb.w2, fb.b2, stride=fb.stride, padding=1).relu_()
    return F.conv2d(h, fb.w3[:, :, None, None], fb.b3).contiguous(memory_format=CL)


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


@torch.no_grad()
def compact_block(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks) -> torch.Tensor:
    """Layer-skipping block: [B, Cin, H, W] channels_last -> [B, Cout, Ho, Wo] channels_last.

    Active samples (gate = 1): relu(residual(x) + identity(x)); the others relu(identity(x)).

    Raises:
        ValueError: if masks.grid is not a layer gate [B, 1, 1, 1].
    """
    b = x.shape[0]
    idx = active_samples(masks, b)
    n = idx.numel()
    x = x.contiguous(memory_format=CL)
    identity = identity_path(fb, x).contiguous(memory_format=CL)
    if n == 0:
        return torch.relu(identity)
    if n == b:
        return residual_branch(fb, x).add_(identity).relu_()
    res = residual_branch(fb, x.index_select(0, idx).contiguous(memory_format=CL))
    res.add_(identity.index_select(0, idx)).relu_()
    out = torch.relu(identity)
    out.index_copy_(0, idx, res)
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
