"""The ``dense`` variant: the folded dense block, then the masks. Always correct; the
baseline every other variant is measured against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nn.block import BlockMasks
from ..nn.maskers import expand_channel_mask
from .channel import dense_weights, hidden, slice_cache
from .fold import FoldedBlock
from .registry import Cost, Variant, register
from .spec import BlockSpec

CL = torch.channels_last


def conv1x1(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: int = 1):
    """1x1 conv of x [B, Cin, H, W] with w [Cout, Cin]; output channels_last."""
    return F.conv2d(x, w[:, :, None, None], b, stride=stride).contiguous(memory_format=CL)


def identity_path(fb: FoldedBlock, x: torch.Tensor) -> torch.Tensor:
    """x, or the folded downsample of x (dense: every output position needs it)."""
    if fb.wd is None:
        return x
    return conv1x1(x, fb.wd, fb.bd, fb.stride)


def dense_block(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks,
                inplace: bool = False) -> torch.Tensor:
    """[B, Cin, H, W] -> [B, Cout, Ho, Wo]: reference semantics with folded weights.

    Without a channel mask the convolutions run in their fastest form (oneDNN pre-packed
    weights with fused epilogues on CPU, see ``ops.packed``); this is also the honest dense
    baseline of the benchmarks when ``masks`` holds no mask at all.

    inplace: x is a ReLU output (>= 0) the caller gives away; a block without downsample
    then adds its residual into x and returns x (no output allocation). With a downsample
    the residual always adds into the downsample's output.
    """
    if masks.channel is None:
        mask3 = masks.mask3
        if mask3 is not None and masks.grid is not None and masks.grid.device.type == "cpu" \
                and bool((masks.grid > 0.5).all()):  # every cell on: no mask (CPU: no sync)
            mask3 = None
        return _packed_dense(fb, x, mask3, inplace)
    return _masked_dense(fb, x, masks)


def _packed_dense(fb: FoldedBlock, x: torch.Tensor, mask3: torch.Tensor | None,
                  inplace: bool = False):
    in_hw = tuple(x.shape[-2:])
    sw = dense_weights(fb, in_hw)
    ds = slice_cache(fb).downsample(fb, in_hw)
    x = x.contiguous(memory_format=CL)
    identity = x if ds is None else ds(x, relu=False)
    h = hidden(sw, x)
    if mask3 is None:  # the residual adds into the identity in place when that is ours
        if inplace or ds is not None:
            return sw.conv3.add_into_(identity, h, relu=True)
        return sw.conv3(h, relu=True, add=identity)
    # in place on NHWC views: a [B, 1, Ho, Wo] mask is also "contiguous", and mixing it
    # into channels_last arithmetic sent the result through NCHW (3x slower, batch 8)
    h = sw.conv3(h, relu=False)
    hv, mv = h.permute(0, 2, 3, 1), mask3.to(h.dtype).permute(0, 2, 3, 1)
    if inplace or ds is not None:  # identity += conv3 · mask3 in one pass, then the ReLU
        identity.permute(0, 2, 3, 1).addcmul_(hv, mv).relu_()
        return identity
    hv.mul_(mv).add_(identity.permute(0, 2, 3, 1)).relu_()
    return h


def _masked_dense(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks) -> torch.Tensor:
    """Channel masks: the official order (mask before BN) with folded weights."""
    cm = None
    if masks.channel is not None:
        cm = expand_channel_mask(masks.channel.to(x.dtype), fb.width)
    h = conv1x1(x, fb.w1, None)
    h = torch.relu(h * cm + fb.b1[:, None, None] if cm is not None else h + fb.b1[:, None, None])
    h = F.conv2d(h, fb.w2, None, stride=fb.stride, padding=1)
    h = torch.relu(h * cm + fb.b2[:, None, None] if cm is not None else h + fb.b2[:, None, None])
    h = conv1x1(h, fb.w3, fb.b3)
    if masks.mask3 is not None:
        h = h * masks.mask3.to(h.dtype)
    return torch.relu(h + identity_path(fb, x)).contiguous(memory_format=CL)


def dense_cost(spec: BlockSpec, rate: float) -> Cost:
    h, w = spec.in_hw
    ho, wo = spec.out_hw
    el = 2 if spec.dtype in ("float16", "bfloat16") else 4
    act = spec.batch * (spec.in_channels * h * w + 2 * spec.out_channels * ho * wo)
    wts = spec.weight_count()
    return Cost(flops=float(spec.dense_flops()), bytes=float(el * (act + wts)),
                launches=4 + int(spec.downsample))


def _run(fb, x, masks, config=None):
    fb.check_input(x, masks.channel, "dense")
    return dense_block(fb, x, masks)


def _run_inplace(fb, x, masks, config=None):
    fb.check_input(x, masks.channel, "dense")
    return dense_block(fb, x, masks, inplace=True)


DENSE = register(Variant(
    name="dense", modes=("spatial", "channel", "layer", "both"), backends=("cpu", "cuda"),
    run=_run, run_inplace=_run_inplace, cost=dense_cost,
    description="folded dense block, then masks (baseline)",
))
