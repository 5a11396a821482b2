"""The ``slice`` variant: dynamic channel skipping in pure torch (DESIGN.md sections 2, 3).

Samples with equal channel masks are batched into one group; each group runs the folded
block on its active channels only:

    conv1:  W1[act] (1x1), bias b1[act], ReLU                       [n, m, H, W]
    conv2:  W2[act][:, act] (3x3, stride s), bias b2[act] + the κ1 correction map, ReLU
    conv3:  W3[:, act] (1x1), bias b3 + W3[:, inact] @ κ2[inact]     [n, Cout, Ho, Wo]
    out  =  relu(conv3 + identity), identity = x or the dense downsample of x.

The official block masks before BN, so an inactive channel carries κ = relu(bn(0)), not
zero; the κ1 correction (``ops.kappa.conv2_correction``) is a per-pixel additive map that
differs from its interior value only on the 1-pixel border. It is never dropped.

Sliced weights and the bias map cost several passes over the weights, so they are cached
per FoldedBlock and mask pattern in a bounded LRU (:class:`SliceCache`), attached to the
FoldedBlock as the attribute ``_slice_cache`` on first use (the only state this module
keeps; a new FoldedBlock, e.g. from ``fb.to(...)``, starts with an empty cache).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nn.block import BlockMasks
from .dense import identity_path
from .fold import FoldedBlock
from .kappa import conv2_correction, conv3_bias
from .registry import Cost, Variant, register
from .spec import BlockSpec

CL = torch.channels_last
CACHE_SIZE = 64  # mask patterns kept per block; a batch of B samples has at most B


@dataclass(frozen=True)
class SlicedWeights:
    """The folded block restricted to m active channels, for one input size.

    w1: [m, Cin, 1, 1]; b1: [m]        conv1 rows
    w2: [m, m, 3, 3]; b2: [m] | None   conv2 on active inputs and outputs
    bias2: [1, m, Ho, Wo] | None       b2 + κ1 correction map (None when nothing is inactive;
                                       then b2 is the conv2 bias)
    w3: [Cout, m, 1, 1]; b3: [Cout]    conv3 columns, κ2 of the inactive channels in b3
    m = 0 leaves only b3 (the block's residual branch is the constant b3).
    """

    m: int
    w1: torch.Tensor | None
    b1: torch.Tensor | None
    w2: torch.Tensor | None
    b2: torch.Tensor | None
    bias2: torch.Tensor | None
    w3: torch.Tensor | None
    b3: torch.Tensor


class SliceCache:
    """Bounded LRU of :class:`SlicedWeights` of one FoldedBlock, keyed by mask pattern and
    input size. Not thread-safe (one forward at a time per compiled block)."""

    def __init__(self, capacity: int = CACHE_SIZE):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[tuple, SlicedWeights] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, fb: FoldedBlock, pattern: torch.Tensor, key: bytes,
            in_hw: tuple[int, int]) -> SlicedWeights:
        """Sliced weights for the group pattern ``pattern`` ([G] bool, CPU; ``key`` its bytes)."""
        k = (key, tuple(in_hw))
        hit = self._entries.get(k)
        if hit is not None:
            self._entries.move_to_end(k)
            self.hits += 1
            return hit
        self.misses += 1
        sw = slice_weights(fb, active_channels(pattern, fb.width).to(fb.w1.device), in_hw)
        self._entries[k] = sw
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return sw


def active_channels(pattern: torch.Tensor, width: int) -> torch.Tensor:
    """[G] bool group pattern -> [m] int64 active channel indices (group g = [g·k, (g+1)·k))."""
    k = width // pattern.numel()
    groups = torch.nonzero(pattern).flatten()
    return (groups[:, None] * k + torch.arange(k)).flatten()


@torch.no_grad()
def slice_weights(fb: FoldedBlock, active: torch.Tensor,
                  in_hw: tuple[int, int]) -> SlicedWeights:
    """Restrict ``fb`` to the channels ``active`` ([m] int64) for an input of ``in_hw``."""
    m = active.numel()
    b3 = conv3_bias(fb, active).contiguous()
    if m == 0:
        return SlicedWeights(0, None, None, None, None, None, None, b3)
    full = m == fb.width
    w1 = fb.w1[active][:, :, None, None].contiguous()
    w2 = fb.w2[active][:, active].contiguous()
    w3 = fb.w3[:, active][:, :, None, None].contiguous()
    b2 = fb.b2[active].contiguous()
    bias2 = None
    if not full:
        ho = (in_hw[0] - 1) // fb.stride + 1
        wo = (in_hw[1] - 1) // fb.stride + 1
        corr = conv2_correction(fb, active, in_hw) + b2  # [Ho·Wo, m]
        bias2 = corr.view(1, ho, wo, m).permute(0, 3, 1, 2)  # channels_last view
        b2 = None
    return SlicedWeights(m, w1, fb.b1[active].contiguous(), w2, b2, bias2, w3, b3)


def _cache(fb: FoldedBlock) -> SliceCache:
    c = getattr(fb, "_slice_cache", None)
    if c is None:
        c = SliceCache()
        fb._slice_cache = c
    return c


def _groups(channel: torch.Tensor) -> list[tuple[list[int], torch.Tensor, bytes]]:
    """[B, G] 0/1 -> [(samples, pattern [G] bool CPU, pattern bytes)], one per distinct
    pattern, in order of first appearance (one host sync for the whole batch)."""
    keys = (channel > 0.5).cpu()
    seen: dict[bytes, tuple[list[int], torch.Tensor, bytes]] = {}
    for i in range(keys.shape[0]):
        b = keys[i].numpy().tobytes()
        if b in seen:
            seen[b][0].append(i)
        else:
            seen[b] = ([i], keys[i], b)
    return list(seen.values())


def _residual(sw: SlicedWeights, x: torch.Tensor, stride: int) -> torch.Tensor:
    """conv3(conv2(conv1(x))) on the active channels: [n, Cin, H, W] -> [n, Cout, Ho, Wo]."""
    h = F.conv2d(x, sw.w1, sw.b1).relu_()
    h = F.conv2d(h, sw.w2, sw.b2, stride=stride, padding=1)
    if sw.bias2 is not None:
        h.add_(sw.bias2)
    return F.conv2d(h.relu_(), sw.w3, sw.b3)


@torch.no_grad()
def slice_block(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks) -> torch.Tensor:
    """Channel-skipping block: [B, Cin, H, W] channels_last -> [B, Cout, Ho, Wo] channels_last.

    masks.channel: [B, G] 0/1 channel-group mask (G divides the block width).

    Raises:
        ValueError: if masks.channel is None or its group count does not divide the width.
    """
    if masks.channel is None:
        raise ValueError("slice: masks.channel is None; the slice variant needs a channel mask")
    b, g = masks.channel.shape
    if g == 0 or fb.width % g or b != x.shape[0]:
        raise ValueError(
            f"slice: channel mask of shape {tuple(masks.channel.shape)} does not fit a batch of "
            f"{x.shape[0]} and width {fb.width} (accepted: [B, G] with G dividing the width)"
        )
    x = x.contiguous(memory_format=CL)
    in_hw = (x.shape[2], x.shape[3])
    cache = _cache(fb)
    identity = identity_path(fb, x)
    groups = _groups(masks.channel)
    if len(groups) == 1:
        sw = cache.get(fb, groups[0][1], groups[0][2], in_hw)
        if sw.m == 0:
            return torch.relu(identity + sw.b3[:, None, None]).contiguous(memory_format=CL)
        return _residual(sw, x, fb.stride).add_(identity).relu_()
    out = torch.empty_like(identity, memory_format=CL)
    for samples, pattern, key in groups:
        sw = cache.get(fb, pattern, key, in_hw)
        idx = torch.tensor(samples, device=x.device)
        ident = identity.index_select(0, idx)
        if sw.m == 0:
            res = torch.relu(ident + sw.b3[:, None, None])
        else:
            xs = x.index_select(0, idx).contiguous(memory_format=CL)
            res = _residual(sw, xs, fb.stride).add_(ident).relu_()
        out.index_copy_(0, idx, res)
    return out


def slice_cost(spec: BlockSpec, rate: float) -> Cost:
    """Cost at channel rate ``rate``: multiply-adds conv1·r + conv2·r² + conv3·r + the dense
    downsample; bytes: input, identity and output once plus the sliced weights; launches:
    torch ops per mask group (each sample its own group when batch > 1, the worst case)."""
    h, w = spec.in_hw
    ho, wo = spec.out_hw
    m = spec.width * rate
    f = spec.in_channels * m * h * w + 9 * m * m * ho * wo + m * spec.out_channels * ho * wo
    wts = spec.in_channels * m + 9 * m * m + m * spec.out_channels
    if spec.downsample:
        f += spec.in_channels * spec.out_channels * ho * wo
        wts += spec.in_channels * spec.out_channels
    el = 2 if spec.dtype in ("float16", "bfloat16") else 4
    act = spec.batch * (spec.in_channels * h * w + 2 * spec.out_channels * ho * wo)
    per_group = 7 if rate > 0 else 2
    groups = 1 if spec.batch == 1 else spec.batch
    launches = per_group * groups + int(spec.downsample) + (2 * groups if groups > 1 else 0)
    return Cost(flops=float(f * spec.batch), bytes=float(el * (act + wts)), launches=launches)


def _supports(spec: BlockSpec) -> bool:
    return spec.mode == "channel" and spec.channel_groups > 0 and (
        spec.width % spec.channel_groups == 0)


def _run(fb, x, masks, config=None):
    return slice_block(fb, x, masks)


SLICE = register(Variant(
    name="slice", modes=("channel",), backends=("cpu", "cuda"), run=_run, cost=slice_cost,
    supports=_supports,
    description="per mask pattern: conv1/conv2/conv3 on the active channels + exact κ correction",
))
