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

On CPU (float32) every convolution of a pattern seen before runs through oneDNN with
bias, residual add and ReLU fused (:class:`PackedConv`), its weight pre-packed from a
partial pattern's third call on: F.conv2d re-orders its weight on every call, which
dominates small maps at batch 1 (a first sighting may run as BLAS GEMMs instead, below).
Elsewhere (CUDA, other dtypes, a torch without those ops) PackedConv runs F.conv2d and
separate add/ReLU.

Sliced and packed weights and the bias map cost passes over the weights, so they are
cached per FoldedBlock, mask pattern and input size in an LRU bounded in count and in
estimated bytes (:class:`SliceCache`: at most 8 times the dense block's size). A partial
pattern (some groups on, some off) met for the first time is not cached: on CPU float32
with at least ``GEMM_ROWS`` rows that call gathers its weights for itself and runs three
BLAS GEMMs (``gemm_residual``: no oneDNN primitive or packing to pay for), else the dense
weights with the pattern's masks (``masked_hidden``, about the dense block's cost); its
second sighting slices, its third packs. The all-on pattern (the dense
weights) and the all-off one are built at once. The cache is attached to the FoldedBlock
as the attribute ``_slice_cache`` on first use (the only state this module keeps; a new
FoldedBlock, e.g. from ``fb.to(...)``, starts with an empty cache). The ``compact``
layer variant shares it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..nn.block import BlockMasks
from ..nn.maskers import expand_channel_mask
from .fold import FoldedBlock
from .kappa import channel_work, conv3_bias, tap_validity
from .masks import host_array, out_hw_of
from .packed import PackedConv
from .registry import Cost, Variant, register
from .spec import BlockSpec

CL = torch.channels_last
CACHE_SIZE = 64  # mask patterns kept per block; a batch of B samples has at most B
# and their estimated bytes (``SlicedWeights.nbytes``) at most this many times the dense
# block's (``SliceCache``): on a stream nearly every pattern is new, and a count bound alone let
# ResNet-101 (channel, rate 0.5) grow from 0.93 to 3.5 GB over 300 images (session 12)
CACHE_WEIGHTS = 8


@dataclass(frozen=True)
class SlicedWeights:
    """The folded block restricted to m active channels, for one input size.

    conv1: [mb, Cin, 1, 1] + b1[act]; conv2: [mb, mb, 3, 3] (stride s) with bias b2[act],
    or no bias when ``bias2`` is set; bias2: [1, mb, Ho, Wo] channels_last, b2[act] + the
    κ1 correction map (None when every channel is active); conv3: [Cout, mb, 1, 1] with
    bias b3 + W3[:, inact] @ κ2[inact]. mb = ``channel_bucket(m, width)`` >= m: the
    channels past m repeat an active one with zeroed weights. m = 0 leaves only b3
    ([Cout]): the residual branch is then that constant.
    """

    m: int
    conv1: PackedConv | None
    conv2: PackedConv | None
    bias2: torch.Tensor | None
    conv3: PackedConv | None
    b3: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Estimated memory held: each sliced convolution's weight twice (plain, and packed
        for one input shape; the dense pattern's plain weights are the block's own), its
        bias, the bias map and b3."""
        n = self.b3.nbytes + (0 if self.bias2 is None else self.bias2.nbytes)
        copies = 1 if self.bias2 is None else 2
        for pc in (self.conv1, self.conv2, self.conv3):
            if pc is not None:
                n += copies * pc.weight.nbytes + (0 if pc.bias is None else pc.bias.nbytes)
        return n


class SliceCache:
    """Bounded LRU of :class:`SlicedWeights` of one FoldedBlock, keyed by mask pattern and
    input size, plus the dense weights and the packed downsample per input size. Not
    thread-safe (one forward at a time per compiled block). Copies and pickles of it are
    empty (packed oneDNN weights can be neither deep-copied nor saved, and a cache is
    derived data).

    capacity: sliced patterns kept; weights: their estimated bytes
    (``SlicedWeights.nbytes``) are kept under this many times the dense block's size
    (W1, W2, W3 and a full-width bias map at the input size: the map outweighs the
    weights on the large early maps), the least recently used dropped first (the newest
    is always kept). The dense entries (every channel on: the block's own weights,
    packed) are outside both bounds. owner: the fingerprint of the FoldedBlock tensors it
    was built from (see :func:`slice_cache`).

    On a stream of random images (ResNet-101, channel rate 0.5) the byte bound holds
    memory near 2.0 GB where it grew past 3.5 GB over 300 images with the count bound
    alone, and costs re-slicing the patterns that come back later (BENCHMARKS.md,
    session 12)."""

    def __init__(self, capacity: int = CACHE_SIZE, owner: tuple = (),
                 weights: float = CACHE_WEIGHTS):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not weights > 0:
            raise ValueError(f"weights must be > 0, got {weights}")
        self.capacity = capacity
        self.weights = weights
        self.owner = owner
        self.nbytes = 0  # estimated bytes of the sliced patterns held
        self._entries: OrderedDict[tuple, SlicedWeights] = OrderedDict()
        self._dense: dict[tuple[int, int], SlicedWeights] = {}
        self._seen: OrderedDict[tuple, None] = OrderedDict()  # sighted once, not sliced
        self._downsample: dict[tuple[int, int], PackedConv] = {}
        self._totals: KappaTotals | None = None
        self.hits = 0
        self.misses = 0
        self.deferred = 0  # first sightings, run without slicing (``lookup``)

    def __reduce__(self):
        return (SliceCache, (self.capacity, (), self.weights))

    def __len__(self) -> int:
        return len(self._entries) + len(self._dense)

    def get(self, fb: FoldedBlock, pattern: torch.Tensor, in_hw: tuple[int, int],
            key: bytes | None = None) -> SlicedWeights:
        """Sliced weights for the group pattern ``pattern`` ([G] bool, CPU; ``key`` its
        bytes, computed when not given)."""
        key = pattern.numpy().tobytes() if key is None else key
        in_hw = tuple(in_hw)
        dense = key.count(1) == len(key)
        k = (key, in_hw)
        hit = self._dense.get(in_hw) if dense else self._entries.get(k)
        if hit is not None:
            if not dense:
                self._entries.move_to_end(k)
            self.hits += 1
            return hit
        self.misses += 1
        act = torch.arange(fb.width) if dense else active_channels(pattern, fb.width)
        sw = slice_weights(fb, act.to(fb.w1.device), in_hw, self.totals(fb))
        if dense:
            if len(self._dense) >= self.capacity:
                self._dense.clear()
            self._dense[in_hw] = sw
            return sw
        self._entries[k] = sw
        self.nbytes += sw.nbytes
        ho, wo = out_hw_of(in_hw, fb.stride)
        budget = self.weights * (fb.w1.nbytes + fb.w2.nbytes + fb.w3.nbytes
                                 + fb.w2.element_size() * fb.width * ho * wo)
        while len(self._entries) > 1 and (len(self._entries) > self.capacity
                                          or self.nbytes > budget):
            self.nbytes -= self._entries.popitem(last=False)[1].nbytes
        return sw

    def totals(self, fb: FoldedBlock) -> KappaTotals:
        """``kappa_totals(fb)``, computed on first use."""
        if self._totals is None:
            self._totals = kappa_totals(fb)
        return self._totals

    def lookup(self, fb: FoldedBlock, pattern: torch.Tensor, in_hw: tuple[int, int],
               key: bytes) -> SlicedWeights | None:
        """``get``, except for a partial pattern (some channels on, some off) met for the
        first time: that sighting is recorded and None returned, and the caller runs the
        block without slicing (``_pattern_residual``: GEMMs on weights gathered for the
        call, or the dense weights, cached as the all-on pattern, with the pattern's
        masks). The second sighting slices. In a stream most patterns are never seen again, and a
        first sighting of a sliced pattern costs several dense blocks (ResNet-101, 14x14
        blocks: slicing 0.5-0.75 ms plus convolutions on weights not yet packed, 1.5-3 ms
        in all, 3-8 ms on the 7x7 blocks, against 1.1-1.3 ms for the dense block)."""
        k = (key, tuple(in_hw))
        groups_on = key.count(1)
        if k in self._entries or groups_on in (0, len(key)):
            return self.get(fb, pattern, in_hw, key)
        if k in self._seen:
            del self._seen[k]
            return self.get(fb, pattern, in_hw, key)
        self._seen[k] = None
        if len(self._seen) > 4 * self.capacity:
            self._seen.popitem(last=False)
        self.deferred += 1
        return None

    def downsample(self, fb: FoldedBlock, in_hw: tuple[int, int]) -> PackedConv | None:
        """The packed downsample conv of ``fb`` (None when the identity is x)."""
        if fb.wd is None:
            return None
        pc = self._downsample.get(tuple(in_hw))
        if pc is None:
            pc = PackedConv.make(fb.wd[:, :, None, None], fb.bd, fb.stride, 0, in_hw)
            if len(self._downsample) >= self.capacity:
                self._downsample.clear()
            self._downsample[tuple(in_hw)] = pc
        return pc


def active_channels(pattern: torch.Tensor, width: int) -> torch.Tensor:
    """[G] bool group pattern -> [m] int64 active channel indices (group g = [g·k, (g+1)·k))."""
    k = width // pattern.numel()
    groups = torch.nonzero(pattern).flatten()
    return (groups[:, None] * k + torch.arange(k)).flatten()


@dataclass(frozen=True)
class KappaTotals:
    """The κ terms of a block with every channel inactive, from which a pattern's terms
    are its active channels' part subtracted (reading the sliced weights only):

    taps: [9, w], every input channel's κ1 response per tap (``kappa.conv2_taps`` with
    nothing active; ``taps[:, o]`` for output channel o); b3k: [Cout], b3 + W3 @ κ2."""

    taps: torch.Tensor
    b3k: torch.Tensor


@torch.no_grad()
def kappa_totals(fb: FoldedBlock) -> KappaTotals:
    w = fb.width
    taps = torch.matmul(fb.kappa1, fb.w2.reshape(w, w, 9)).t()  # [9, w]
    return KappaTotals(taps.contiguous(), torch.addmv(fb.b3, fb.w3, fb.kappa2))


@dataclass(frozen=True)
class SliceParts:
    """The folded block gathered to m active channels, padded to mb >= m, as plain tensors
    (``slice_parts``): w1 [mb, Cin], b1 [mb], w2 [mb, 9, mb] (out, tap, in), bias2
    [Ho·Wo, mb] (b2 + the κ1 correction map, row-major pixels), w3 [Cout, mb], b3 [Cout]
    (b3 + W3[:, inact] @ κ2[inact]). The channels past m repeat active[0] with zeroed
    weights: exact (they stay 0 through both ReLUs and meet zero weights in conv3)."""

    m: int
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    bias2: torch.Tensor
    w3: torch.Tensor
    b3: torch.Tensor


@torch.no_grad()
def slice_parts(fb: FoldedBlock, active: torch.Tensor, in_hw: tuple[int, int],
                totals: KappaTotals, mb: int) -> SliceParts:
    """Gather ``fb`` to the channels ``active`` ([m] int64, 0 < m < width), padded to mb.

    A pattern may be seen once, so this reads as little as it can: W1 rows and W3 columns
    by index_select, W2's rows by index_select and its columns by one gather into (out,
    tap, in) order (half the time of advanced indexing and a permuted copy at 256-512
    channels), and the κ terms (``ops.kappa``) as ``totals`` (:class:`KappaTotals`) minus
    the active channels' part, from the gathered weights."""
    m, w = active.numel(), fb.width
    act = torch.cat([active, active[:1].expand(mb - m)])
    w1, b1 = fb.w1.index_select(0, act), fb.b1.index_select(0, act)
    w2 = torch.gather(fb.w2.reshape(w, w, 9).index_select(0, act).permute(0, 2, 1), 2,
                      act.expand(mb, 9, mb))  # [mb, 9, mb]
    w3 = fb.w3.index_select(1, act)
    k1, b2 = fb.kappa1.index_select(0, act), fb.b2.index_select(0, act)
    for t in (w1[m:], b1[m:], w2[m:], w2[:, :, m:], w3[:, m:], k1[m:], b2[m:]):
        t.zero_()
    # κ responses of the inactive channels: all channels' minus the active ones'
    taps = totals.taps.index_select(1, act) - torch.mv(w2.view(mb * 9, mb), k1).view(mb, 9).t()
    taps[:, m:] = 0.0
    bias2 = tap_validity(in_hw, fb.stride, taps.device, taps.dtype) @ taps  # [Ho·Wo, mb]
    bias2 += b2
    b3 = torch.addmv(totals.b3k, w3[:, :m], fb.kappa2.index_select(0, active), alpha=-1.0)
    return SliceParts(m, w1, b1, w2, bias2, w3, b3)


@torch.no_grad()
def slice_weights(fb: FoldedBlock, active: torch.Tensor, in_hw: tuple[int, int],
                  totals: KappaTotals | None = None) -> SlicedWeights:
    """Restrict ``fb`` to the channels ``active`` ([m] int64) for an input of ``in_hw``:
    ``slice_parts`` padded to ``channel_bucket``, its convolutions packed lazily (on their
    second call, ``PackedConv.make(lazy=True)``); the dense pattern packs at once.
    LAUD-ResNet-50, channel mode, rate 0.5, batch 1, one input with its caches emptied
    before each call (2-core x86): 35.2 ms per forward with advanced indexing, κ terms
    from inactive columns and eager packing; 23.5 ms this way, channel buckets included
    (dense: 20.5 ms; every pattern cached: 13.2-13.6 ms).
    """
    m, w = active.numel(), fb.width
    if m == 0:
        return SlicedWeights(0, None, None, None, None, conv3_bias(fb, active).contiguous())
    ho, wo = out_hw_of(in_hw, fb.stride)
    lazy = m < w
    if not lazy:  # dense: no copies
        w1, b1, w2, b2, w3, b3 = fb.w1, fb.b1, fb.w2, fb.b2, fb.w3, fb.b3
        bias2 = None
    else:
        # zero channels up to a bucket: oneDNN then meets few channel counts; every new
        # shape costs a primitive creation (1024->122 1x1 at 14x14: 0.8 ms first call,
        # 0.3 ms after; a new packing 0.5 ms against 0.18)
        mb = channel_bucket(m, w)
        parts = slice_parts(fb, active, in_hw, kappa_totals(fb) if totals is None else totals,
                            mb)
        w1, b1, w3, b3 = parts.w1, parts.b1, parts.w3, parts.b3
        bias2 = parts.bias2.view(1, ho, wo, mb).permute(0, 3, 1, 2)  # channels_last view
        w2, b2 = parts.w2.permute(0, 2, 1).reshape(mb, mb, 3, 3), None
    conv1 = PackedConv.make(w1[:, :, None, None], b1, 1, 0, in_hw, lazy=lazy)
    conv2 = PackedConv.make(w2, b2, fb.stride, 1, in_hw, lazy=lazy)
    conv3 = PackedConv.make(w3[:, :, None, None], b3, 1, 0, (ho, wo), lazy=lazy)
    return SlicedWeights(m, conv1, conv2, bias2, conv3, b3)


def channel_bucket(m: int, width: int) -> int:
    """m active channels rounded up to a multiple of max(8, 2^(⌊log2 m⌋ − 3)), at most
    ``width``: at most 1/8 more channels (1x1 convs), a few dozen counts per block."""
    step = max(8, 1 << max(0, m.bit_length() - 4))
    return min(width, -(-m // step) * step)


def slice_cache(fb: FoldedBlock) -> SliceCache:
    """The SliceCache attached to ``fb`` (attribute ``_slice_cache``), created on first use
    and replaced by an empty one when ``fb``'s tensors changed since it was built."""
    c = getattr(fb, "_slice_cache", None)
    owner = fb.fingerprint()
    if c is None or c.owner != owner:
        c = SliceCache(owner=owner)
        fb._slice_cache = c
    return c


_DENSE = torch.ones(1, dtype=torch.bool)  # one channel group, on: the dense block


def dense_weights(fb: FoldedBlock, in_hw: tuple[int, int]) -> SlicedWeights:
    """The folded dense block, weights packed for inputs of ``in_hw`` (cached on ``fb`` in
    its SliceCache, like every channel pattern of the ``slice`` variant); the ``compact``
    layer variant and the packed ``dense`` path run it."""
    return slice_cache(fb).get(fb, _DENSE, in_hw)


def _groups(channel: torch.Tensor) -> list[tuple[list[int], torch.Tensor, bytes]]:
    """[B, G] 0/1 -> [(samples, pattern [G] bool CPU, pattern bytes)], one per distinct
    pattern, in order of first appearance (one host sync for the whole batch). A CPU mask
    of a numpy dtype is read through numpy (``masks.host_array``): no torch op."""
    a = host_array(channel)
    keys = a > 0.5 if a is not None else (channel > 0.5).cpu().numpy()
    seen: dict[bytes, tuple[list[int], torch.Tensor, bytes]] = {}
    for i in range(keys.shape[0]):
        b = keys[i].tobytes()
        if b in seen:
            seen[b][0].append(i)
        else:
            seen[b] = ([i], torch.from_numpy(keys[i]), b)
    return list(seen.values())


def take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Samples ``idx`` of a channels_last [B, C, H, W] tensor, channels_last (gathered on
    the NHWC view: index_select on dim 0 of a channels_last tensor is 20x slower)."""
    return t.permute(0, 2, 3, 1).index_select(0, idx).permute(0, 3, 1, 2)


def put(out: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """out[idx] = src along dim 0 (idx increasing), one slice copy per run of consecutive
    indices (index_copy_ is 3x slower than a gather of the same size on CPU)."""
    ids = idx.tolist()
    a = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            out[ids[a]:ids[i - 1] + 1].copy_(src[a:i])
            a = i


def hidden(sw: SlicedWeights, x: torch.Tensor) -> torch.Tensor:
    """relu(conv2(relu(conv1(x)))) on the active channels: the input of conv3 (sw.m > 0)."""
    return sw.conv2(sw.conv1(x, relu=True), relu=True, add=sw.bias2)


def masked_hidden(fb: FoldedBlock, dense: SlicedWeights, pattern: torch.Tensor,
                  x: torch.Tensor) -> torch.Tensor:
    """The input of conv3 for group pattern ``pattern`` ([G] bool) computed on the dense
    weights ``dense`` (``dense_weights``): every channel convolved, then the inactive ones
    set to their κ (what the official block gives them: masked before BN). Costs the
    dense block plus two passes over the hidden maps; nothing is sliced."""
    on = expand_channel_mask(pattern.to(device=fb.kappa1.device, dtype=fb.kappa1.dtype)[None],
                             fb.width).view(-1)
    h = dense.conv1(x, relu=True)
    h.permute(0, 2, 3, 1).mul_(on).add_(fb.kappa1 * (1 - on))
    h = dense.conv2(h, relu=True)
    h.permute(0, 2, 3, 1).mul_(on).add_(fb.kappa2 * (1 - on))
    return h


# a first sighting runs BLAS GEMMs on weights gathered for the call (``gemm_residual``)
# when its GEMMs have at least this many rows (samples x output pixels), else the dense
# weights with the pattern's masks (``masked_hidden``). Gathering costs about what the
# GEMMs do on a 7x7 map, so there the dense path wins. ResNet-101, channel rate 0.5,
# batch 1, every pattern new (caches emptied before each forward; 2-core x86, one
# process each, 40 forwards alternating, /tmp/s20/first_model*.py): 1.04-1.21x dense
# against 1.17-1.29x with the dense path for every first sighting; with the 7x7 blocks
# on GEMMs too, 1.12-1.32x (BENCHMARKS.md, session 20)
GEMM_ROWS = 196


def _im2col(h: torch.Tensor, stride: int) -> torch.Tensor:
    """[n, H, W, c] -> [n·Ho·Wo, 9·c]: each output pixel's 3x3 window (padding 1, zero
    outside the image), taps row-major, then channels."""
    n, hh, ww, c = h.shape
    ho, wo = out_hw_of((hh, ww), stride)
    hp = h.new_zeros(n, hh + 2, ww + 2, c)
    hp[:, 1:hh + 1, 1:ww + 1] = h
    sn, sh, sw, _ = hp.stride()
    return hp.as_strided((n, ho, wo, 3, 3, c),
                         (sn, stride * sh, stride * sw, sh, sw, 1)).reshape(n * ho * wo, 9 * c)


def gemm_residual(fb: FoldedBlock, parts: SliceParts, x: torch.Tensor, identity: torch.Tensor,
                  into: bool) -> torch.Tensor:
    """relu(residual(x) + identity) on the gathered weights ``parts`` as three GEMMs on the
    NHWC rows (conv2 through ``_im2col``): no oneDNN primitive or weight packing, which a
    pattern seen once would pay for nothing. into: write into identity (ours to
    overwrite), else a new tensor. x, identity: channels_last."""
    n, cin, h, w = x.shape
    ho, wo = out_hw_of((h, w), fb.stride)
    mb, cout = parts.w1.shape[0], fb.out_channels
    h1 = torch.addmm(parts.b1, x.permute(0, 2, 3, 1).reshape(n * h * w, cin),
                     parts.w1.t()).relu_()
    h2 = torch.mm(_im2col(h1.view(n, h, w, mb), fb.stride), parts.w2.view(mb, 9 * mb).t())
    h2.view(n, ho * wo, mb).add_(parts.bias2).relu_()
    rows = identity.permute(0, 2, 3, 1)
    if into and rows.is_contiguous():
        rows.view(n * ho * wo, cout).addmm_(h2, parts.w3.t()).add_(parts.b3).relu_()
        return identity
    out = torch.addmm(rows.reshape(n * ho * wo, cout), h2, parts.w3.t()).add_(parts.b3).relu_()
    out = out.view(n, ho, wo, cout).permute(0, 3, 1, 2)
    return identity.copy_(out) if into else out


def _pattern_residual(fb: FoldedBlock, cache: SliceCache, pattern: torch.Tensor, key: bytes,
                      in_hw, x: torch.Tensor, identity: torch.Tensor,
                      into: bool) -> torch.Tensor:
    """relu(residual(x) + identity) for one channel pattern: its sliced weights once the
    pattern has been seen before (``SliceCache.lookup``); else, on CPU float32 with at
    least ``GEMM_ROWS`` GEMM rows, weights gathered for this call alone
    (``gemm_residual``), or the dense weights with the pattern's masks
    (``masked_hidden``). into: identity is ours to overwrite (``residual_into``); else a
    new tensor (``_residual_out``)."""
    sw = cache.lookup(fb, pattern, in_hw, key)
    if sw is not None:
        return residual_into(sw, x, identity) if into else _residual_out(sw, x, identity)
    ho, wo = out_hw_of(in_hw, fb.stride)
    if (x.device.type == "cpu" and x.dtype == torch.float32
            and x.shape[0] * ho * wo >= GEMM_ROWS):
        act = active_channels(pattern, fb.width).to(fb.w1.device)
        parts = slice_parts(fb, act, in_hw, cache.totals(fb), act.numel())
        return gemm_residual(fb, parts, x, identity, into)
    dw = dense_weights(fb, in_hw)
    h = masked_hidden(fb, dw, pattern, x)
    if into:
        return dw.conv3.add_into_(identity, h, relu=True)
    return dw.conv3(h, relu=True, add=identity)


def _residual_out(sw: SlicedWeights, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """relu(conv3(conv2(conv1(x))) + identity) on the active channels (see SlicedWeights)."""
    if sw.m == 0:
        return torch.relu(identity + sw.b3[:, None, None]).contiguous(memory_format=CL)
    return sw.conv3(hidden(sw, x), relu=True, add=identity)


def residual_into(sw: SlicedWeights, x: torch.Tensor,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """out = relu(residual(x) + out) in place: ``_residual_out`` with an identity that may
    be overwritten (the downsample's output, or x itself, the default). The ``compact``
    layer variant runs its active samples through it with the dense weights."""
    out = x if out is None else out
    if sw.m == 0:
        return out.add_(sw.b3[:, None, None]).relu_()
    return sw.conv3.add_into_(out, hidden(sw, x), relu=True)


@torch.no_grad()
def slice_block(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks,
                inplace: bool = False) -> torch.Tensor:
    """Channel-skipping block: [B, Cin, H, W] channels_last -> [B, Cout, Ho, Wo] channels_last.

    masks.channel: [B, G] 0/1 channel-group mask (G divides the block width).
    The residual is added in place into the identity when that is ours: the downsample's
    output, or x when ``inplace`` (x may be overwritten, the caller gives it away).

    Raises:
        ValueError: if masks.channel is None or its shape does not fit x and the width, or
            x does not fit the block (``FoldedBlock.check_input``).
    """
    if masks.channel is None:
        raise ValueError("slice: masks.channel is None; the slice variant needs a channel mask")
    fb.check_input(x, masks.channel, "slice")
    x = x.contiguous(memory_format=CL)
    in_hw = (x.shape[2], x.shape[3])
    cache = slice_cache(fb)
    ds = cache.downsample(fb, in_hw)
    identity = x if ds is None else ds(x, relu=False)
    groups = _groups(masks.channel)
    if ds is not None or inplace:
        out = identity
        if len(groups) == 1:
            _, pattern, key = groups[0]
            return _pattern_residual(fb, cache, pattern, key, in_hw, x, out, into=True)
        for samples, pattern, key in groups:  # each group reads its own samples only
            idx = torch.tensor(samples, device=x.device)
            xs = take(x, idx)
            res = _pattern_residual(fb, cache, pattern, key, in_hw, xs,
                                    xs if out is x else take(out, idx), into=True)
            put(out, idx, res)
        return out
    if len(groups) == 1:
        _, pattern, key = groups[0]
        return _pattern_residual(fb, cache, pattern, key, in_hw, x, identity, into=False)
    out = torch.empty_like(identity, memory_format=CL)
    for samples, pattern, key in groups:
        idx = torch.tensor(samples, device=x.device)
        res = _pattern_residual(fb, cache, pattern, key, in_hw, take(x, idx),
                                take(identity, idx), into=False)
        put(out, idx, res)
    return out


def slice_cost(spec: BlockSpec, rate: float) -> Cost:
    """Cost at channel rate ``rate``: multiply-adds conv1·r + conv2·r² + conv3·r + the dense
    downsample; bytes: input, identity and output once plus the sliced weights; launches:
    torch ops per mask group without fusion (CUDA; the fused oneDNN path runs 3), each
    sample its own group when batch > 1 (the worst case), plus its gather and scatter."""
    h, w = spec.in_hw
    ho, wo = spec.out_hw
    f, wts = channel_work(spec, rate)
    el = 2 if spec.dtype in ("float16", "bfloat16") else 4
    act = spec.batch * (spec.in_channels * h * w + 2 * spec.out_channels * ho * wo)
    per_group = 8 if rate > 0 else 2
    groups = 1 if spec.batch == 1 else spec.batch
    launches = per_group * groups + int(spec.downsample) + (2 * groups if groups > 1 else 0)
    return Cost(flops=float(f * spec.batch), bytes=float(el * (act + wts)), launches=launches)


def _supports(spec: BlockSpec) -> bool:
    return spec.mode == "channel" and spec.channel_groups > 0 and (
        spec.width % spec.channel_groups == 0)


def _run(fb, x, masks, config=None):
    return slice_block(fb, x, masks)


def _run_inplace(fb, x, masks, config=None):
    return slice_block(fb, x, masks, inplace=True)


SLICE = register(Variant(
    name="slice", modes=("channel",), backends=("cpu", "cuda"), run=_run,
    run_inplace=_run_inplace, cost=slice_cost,
    supports=_supports,
    description="per mask pattern: conv1/conv2/conv3 on the active channels + exact κ correction",
))
