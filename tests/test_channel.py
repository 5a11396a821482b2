"""The ``slice`` variant (channel mode) against the reference LAUD bottleneck in eval."""

import copy
import dataclasses
import random

import pytest
import torch

from laudtriton.nn import calibrate_block
from laudtriton.nn.block import BlockMasks
from laudtriton.ops import BlockSpec, channel, fold_block, get_variant
from laudtriton.ops.channel import (
    PackedConv,
    SliceCache,
    _im2col,
    active_channels,
    channel_bucket,
    gemm_residual,
    kappa_totals,
    slice_block,
    slice_cache,
    slice_cost,
    slice_parts,
    slice_weights,
)
from laudtriton.ops.kappa import conv2_correction, conv3_bias
from laudtriton.testing import assert_close, make_block, reference_on_masks

CL = torch.channels_last


def reference_with_masks(block, x: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
    """The reference block in float64 with a given channel mask [B, G] (mask before BN)."""
    return reference_on_masks(block, x, BlockMasks(None, None, None, channel))


def calibrated(k, masker, layers, inplanes, planes, stride, hw, batch, rate, seed=0):
    """(block, x, masks, reference output in float64) with masks calibrated to ``rate``."""
    blk = make_block(inplanes, planes, stride, mode="channel", channel_granularity=k,
                     channel_masker=masker, channel_masker_layers=layers,
                     channel_masker_reduction=4, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    # a per-sample offset makes the pooled features, hence the masks, differ per sample;
    # the masker's initial bias (+2/-2 per group) would otherwise decide alone
    x = torch.randn(batch, inplanes, *hw, generator=g)
    x = x + 2 * torch.randn(batch, inplanes, 1, 1, generator=g)
    with torch.no_grad():
        blk.masker_channel.last_linear().bias.zero_()
    calibrate_block(blk, x, rate)
    with torch.no_grad():
        masks, _ = blk.compute_masks(x)
        masks64, _ = copy.deepcopy(blk).double().compute_masks(x.double())
        ref = blk.double()(x.double())
    assert torch.equal(masks.channel, masks64.channel.float()), "fp32/fp64 masks differ"
    return blk.float(), x, masks, ref


# (k, masker, layers, inplanes, planes, stride, hw, batch, rate[, seed])
CASES = [
    (1, "MLP", 2, 16, 8, 1, (13, 11), 3, 0.5),
    (2, "MLP", 1, 32, 8, 1, (7, 9), 3, 0.5),       # identity = x (32 == 4·8)
    (4, "conv_linear", 1, 16, 16, 2, (13, 11), 3, 0.5, 1),
    (2, "conv_linear", 1, 24, 8, 2, (7, 9), 1, 0.5),
    (4, "MLP", 2, 16, 8, 1, (13, 11), 1, 0.5),
    (1, "MLP", 1, 16, 4, 2, (7, 9), 3, 0.0),       # every channel inactive
    (2, "MLP", 2, 32, 8, 1, (7, 9), 3, 0.0),
    (1, "conv_linear", 1, 16, 8, 1, (13, 11), 3, 1.0),  # every channel active
    (4, "MLP", 2, 16, 8, 2, (7, 9), 1, 1.0),
    (2, "MLP", 2, 16, 8, 2, (1, 1), 3, 0.5),       # 1x1 map: every tap on the border
]


# a first sighting's two paths (``ops.channel.GEMM_ROWS``): weights gathered for the call
# and run as GEMMs (every case here, at 0), or the dense weights with the pattern's masks
FIRST = {"gemm": 0, "masked": 10**9}


@pytest.fixture(params=list(FIRST))
def first_path(request, monkeypatch):
    monkeypatch.setattr(channel, "GEMM_ROWS", FIRST[request.param])
    return request.param


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}-{c[1]}{c[2]}-s{c[5]}-"
                         f"{c[6][0]}x{c[6][1]}-b{c[7]}-r{c[8]}")
def test_slice_matches_reference(case, first_path):
    """Three calls: a pattern's first sighting runs on weights gathered for it alone
    (GEMMs) or on the dense weights with its masks, the second the sliced weights
    unpacked, the third packed."""
    batch, rate = case[7], case[8]
    blk, x, masks, ref = calibrated(*case)
    fb = fold_block(blk)
    assert fb.kappa1.abs().max() > 0 and fb.kappa2.abs().max() > 0
    for call in ("first sighting", "sliced", "sliced, packed"):
        out = slice_block(fb, x.contiguous(memory_format=CL), masks)
        assert out.dtype == torch.float32 and out.is_contiguous(memory_format=CL)
        assert_close(out, ref, name=call)
    partial = {tuple(r.tolist()) for r in masks.channel} - {
        (0.0,) * masks.channel.shape[1], (1.0,) * masks.channel.shape[1]}
    assert slice_cache(fb).deferred == len(partial)
    if batch > 1 and rate == 0.5:
        assert len({tuple(r.tolist()) for r in masks.channel}) > 1, "masks per sample agree"
    if rate in (0.0, 1.0):
        assert masks.channel.mean().item() == rate


@pytest.mark.parametrize("kappa", ["kappa1", "kappa2"])
def test_kappa_correction_matters(kappa, first_path):
    """Dropping either κ correction (taking inactive channels as zero) is wrong."""
    blk, x, masks, ref = calibrated(2, "MLP", 2, 16, 16, 1, (7, 9), 3, 0.5)
    fb = fold_block(blk)
    inactive = masks.channel.repeat_interleave(2, dim=1) < 0.5  # [B, w]
    assert (getattr(fb, kappa)[None] * inactive).abs().max() > 0.1
    assert_close(slice_block(fb, x.contiguous(memory_format=CL), masks), ref)
    bad = dataclasses.replace(fb, **{kappa: torch.zeros_like(getattr(fb, kappa))})
    for call in ("first sighting", "sliced"):
        with pytest.raises(AssertionError, match="max error"):
            assert_close(slice_block(bad, x.contiguous(memory_format=CL), masks), ref,
                         name=call)


@pytest.mark.parametrize("stride,hw", [(1, (7, 9)), (2, (8, 5))])
def test_slice_float64_unpacked_path(stride, hw):
    """Float64 weights take the plain F.conv2d path; it matches the fp64 reference tightly."""
    blk, x, masks, ref = calibrated(2, "MLP", 2, 16, 8, stride, hw, 3, 0.5, seed=3)
    fb = fold_block(blk, dtype=torch.float64)
    for call in ("first sighting", "sliced"):
        out = slice_block(fb, x.double().contiguous(memory_format=CL), masks)
        assert out.dtype == torch.float64
        assert_close(out, ref, tol=1e-10, name=call)


def test_slice_property_random_shapes(first_path):
    """Seeded random block shapes and random per-sample channel masks, sample 0 partly
    on in every trial (the κ1 border correction: G >= 2 groups)."""
    rng = random.Random(1234)
    for trial in range(8):
        k = rng.choice([1, 2, 4])
        planes = k * rng.randint(2, 4)
        inplanes = rng.choice([4 * planes, rng.randint(3, 20)])
        stride = rng.choice([1, 2])
        hw = (rng.randint(1, 12), rng.randint(1, 12))
        batch = rng.randint(1, 4)
        ds = stride != 1 or inplanes != 4 * planes
        blk = make_block(inplanes, planes, stride, mode="channel", channel_granularity=k,
                         downsample=ds, seed=trial)
        g = torch.Generator().manual_seed(trial)
        x = torch.randn(batch, inplanes, *hw, generator=g)
        channel = (torch.rand(batch, planes // k, generator=g) < rng.random()).float()
        channel[0, 0], channel[0, -1] = 1.0, 0.0
        masks = BlockMasks(None, None, None, channel)
        fb, ref = fold_block(blk), reference_with_masks(blk, x, channel)
        for call in ("first sighting", "sliced"):
            out = slice_block(fb, x.contiguous(memory_format=CL), masks)
            assert_close(out, ref, name=f"trial {trial}, {call}")


@pytest.mark.parametrize("stride,hw", [(1, (7, 9)), (2, (9, 6))])
def test_sliced_weights_match_the_kappa_definitions(stride, hw):
    """slice_weights gets the κ terms as totals minus the active part, from the sliced
    weights: equal to ops.kappa's defining forms (which index the inactive channels)."""
    blk = make_block(16, 12, stride=stride, mode="channel", channel_granularity=2, seed=3)
    fb = fold_block(blk)
    g = torch.Generator().manual_seed(1)
    ho, wo = (hw[0] - 1) // stride + 1, (hw[1] - 1) // stride + 1
    for pattern in ([1, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]):
        active = active_channels(torch.tensor(pattern, dtype=torch.bool), fb.width)
        sw = slice_weights(fb, active, hw)
        m = active.numel()
        mb = channel_bucket(m, fb.width)  # channels past m: zero weights, bias, correction
        assert sw.m == m and sw.conv1.weight.shape[0] == mb and mb in (8, 12)
        want2 = (conv2_correction(fb, active, hw) + fb.b2[active]).view(ho, wo, m)
        assert_close(sw.bias2[0, :m].permute(1, 2, 0), want2)
        assert_close(sw.b3, conv3_bias(fb, active))
        x = torch.randn(1, 16, *hw, generator=g).contiguous(memory_format=CL)
        h1 = sw.conv1(x, relu=False)
        assert_close(h1[:, :m], torch.nn.functional.conv2d(
            x, fb.w1[active][:, :, None, None], fb.b1[active]))
        w2 = torch.zeros(mb, mb, 3, 3)
        w2[:m, :m] = fb.w2[active][:, active]
        w3 = torch.zeros(fb.out_channels, mb)
        w3[:, :m] = fb.w3[:, active]
        assert sw.conv2.weight.equal(w2) and sw.conv3.weight[:, :, 0, 0].equal(w3)
        assert not h1[:, m:].any() and not sw.bias2[0, m:].any()
    assert slice_weights(fb, torch.arange(12), hw).bias2 is None  # all on: no correction
    assert slice_weights(fb, torch.arange(0), hw).m == 0


def test_channel_bucket():
    for width in (12, 64, 512):
        for m in range(1, width + 1):
            b = channel_bucket(m, width)
            assert m <= b <= width and (b == width or b % 8 == 0)
            assert b - m <= max(7, m // 8)
    assert channel_bucket(122, 256) == 128 and channel_bucket(250, 512) == 256


def test_slice_cache_hits_and_bound():
    blk, x, masks, ref = calibrated(1, "MLP", 2, 16, 8, 1, (7, 9), 3, 0.5)
    fb = fold_block(blk)
    xc = x.contiguous(memory_format=CL)
    first = slice_block(fb, xc, masks)
    cache = slice_cache(fb)
    patterns = len({tuple(r.tolist()) for r in masks.channel})
    assert 0 < masks.channel.mean() < 1 and all(0 < r.mean() < 1 for r in masks.channel)
    # first sightings run the dense weights (cached as the all-on pattern): nothing sliced
    assert (cache.deferred, cache.misses, cache.hits, len(cache)) == (
        patterns, 1, patterns - 1, 1)
    second = slice_block(fb, xc, masks)  # each pattern sliced
    assert (cache.misses, cache.hits, len(cache)) == (1 + patterns, patterns - 1,
                                                      1 + patterns)
    third = slice_block(fb, xc, masks)  # and found
    assert (cache.misses, cache.hits, cache.deferred) == (1 + patterns, 2 * patterns - 1,
                                                          patterns)
    assert_close(first, second)
    assert torch.equal(second, third)
    small = SliceCache(capacity=2)
    for i in range(4):
        pattern = torch.zeros(8, dtype=torch.bool)
        pattern[i] = True
        small.get(fb, pattern, (7, 9))
    assert len(small) == 2 and small.misses == 4
    with pytest.raises(ValueError, match="capacity"):
        SliceCache(capacity=0)
    with pytest.raises(ValueError, match="weights"):
        SliceCache(weights=0)


def test_slice_cache_byte_bound_keeps_the_recent_and_the_dense():
    """Sliced patterns are dropped least recently used first once their estimated bytes
    pass ``weights`` times the dense block's; the dense entry stays, shared by the
    one-group pattern and the all-on pattern of G groups."""
    blk, x, masks, ref = calibrated(1, "MLP", 2, 16, 8, 1, (7, 9), 3, 0.5)
    fb = fold_block(blk)
    dense_size = 4 * (fb.w1.numel() + fb.w2.numel() + fb.w3.numel() + fb.width * 7 * 9)
    cache = SliceCache(weights=6.0)
    dense = cache.get(fb, torch.ones(1, dtype=torch.bool), (7, 9))
    assert cache.get(fb, torch.ones(8, dtype=torch.bool), (7, 9)) is dense
    assert dense.nbytes >= 4 * (fb.w1.numel() + fb.w2.numel() + fb.w3.numel())
    g = torch.Generator().manual_seed(3)
    patterns = []
    while len(patterns) < 12:
        p = torch.rand(8, generator=g) < 0.5
        if 0 < p.sum() < 8 and not any(torch.equal(p, q) for q in patterns):
            patterns.append(p)
    sizes = []
    for p in patterns:
        sw = cache.get(fb, p, (7, 9))
        sizes.append(sw.nbytes)
        assert sw.nbytes > 0 and cache.nbytes == sum(e.nbytes for e in cache._entries.values())
        assert cache.nbytes <= 6.0 * dense_size or len(cache._entries) == 1
    kept = len(cache) - 1
    assert 2 <= kept < len(patterns) and sum(sizes[-kept:]) == cache.nbytes
    misses = cache.misses
    assert cache.get(fb, patterns[-1], (7, 9)) is sw and cache.misses == misses  # newest kept
    cache.get(fb, patterns[0], (7, 9))  # oldest dropped: sliced again
    assert cache.misses == misses + 1
    assert cache.get(fb, torch.ones(1, dtype=torch.bool), (7, 9)) is dense


def test_slice_cache_follows_weights_and_copies():
    """A weight changed in place or replaced invalidates the cache; copies start empty."""
    blk, x, masks, ref = calibrated(2, "MLP", 2, 16, 8, 2, (7, 9), 3, 0.5)
    fb = fold_block(blk)
    xc = x.contiguous(memory_format=CL)
    first = slice_block(fb, xc, masks)
    clone = copy.deepcopy(fb)
    assert len(slice_cache(clone)) == 0
    assert torch.equal(slice_block(clone, xc, masks), first)
    with torch.no_grad():
        blk.conv3.weight.mul_(-1.5)
        fb.w3.mul_(-1.5)
    new_ref = reference_with_masks(blk, x, masks.channel)
    assert_close(slice_block(fb, xc, masks), new_ref)
    fb.w2 = fb.w2 * 0.5
    with torch.no_grad():
        blk.conv2.weight.mul_(0.5)
    assert_close(slice_block(fb, xc, masks), reference_with_masks(blk, x, masks.channel))


@pytest.mark.parametrize("batch,hw,stride,k", [(1, 1, 1, 1), (3, 1, 2, 3), (2, 2, 2, 1),
                                               (3, 2, 2, 3)])
def test_packed_conv_with_an_add_on_a_1x1_output(batch, hw, stride, k):
    """torch 2.11's oneDNN raised "could not create a memory" for the fused add on a 1x1
    output map (any batch); PackedConv runs that case in place on a copy of the add: the
    sum of the plain convolution and the add, the caller's add left as it was."""
    g = torch.Generator().manual_seed(7)
    w, b = torch.randn(6, 5, k, k, generator=g), torch.randn(6, generator=g)
    x = torch.randn(batch, 5, hw, hw, generator=g).contiguous(memory_format=CL)
    pc = PackedConv.make(w, b, stride, k // 2, (hw, hw))
    y = torch.nn.functional.conv2d(x, w, b, stride=stride, padding=k // 2)
    assert tuple(y.shape[2:]) == (1, 1)
    for add in (torch.randn(1, 6, 1, 1, generator=g),  # broadcast over the batch
                torch.randn(batch, 6, 1, 1, generator=g).contiguous(memory_format=CL)):
        keep = add.clone()
        for relu in (True, False):
            out = pc(x, relu=relu, add=add)
            assert out.shape == y.shape and out.is_contiguous(memory_format=CL)
            assert_close(out, torch.relu(y + add) if relu else y + add)
        assert torch.equal(add, keep)


@pytest.mark.parametrize("stride,k,relu", [(1, 1, True), (2, 3, False), (1, 3, True)])
def test_packed_conv_matches_plain(stride, k, relu):
    g = torch.Generator().manual_seed(5)
    w, b = torch.randn(6, 5, k, k, generator=g), torch.randn(6, generator=g)
    x = torch.randn(2, 5, 9, 7, generator=g).contiguous(memory_format=CL)
    packed = PackedConv.make(w, b, stride, k // 2, (9, 7))
    plain = PackedConv.make(w, b, stride, k // 2, (9, 7), pack=False)
    lazy = PackedConv.make(w, b, stride, k // 2, (9, 7), lazy=True)
    assert plain.packed is None and len(lazy.packed) == 0
    y = torch.nn.functional.conv2d(x, w, b, stride=stride, padding=k // 2)
    add = torch.randn(1, *y.shape[1:], generator=g).contiguous(memory_format=CL)
    for pc in (packed, plain, lazy):  # lazy: 1st call on the plain weight, then packed
        assert_close(pc(x, relu=relu), torch.relu(y) if relu else y)
        want = torch.relu(y + add) if relu else y + add
        assert_close(pc(x, relu=relu, add=add), want)
        # in place into a batch slice of a larger tensor; the other samples stay put
        big = torch.randn(4, *y.shape[1:], generator=g).contiguous(memory_format=CL)
        keep = big.clone()
        out = pc.add_into_(big[1:3], x, relu=relu)
        assert out.data_ptr() == big[1:3].data_ptr()
        assert_close(big[1:3], torch.relu(y + keep[1:3]) if relu else y + keep[1:3])
        assert torch.equal(big[0], keep[0]) and torch.equal(big[3], keep[3])
    assert list(lazy.packed) == [tuple(x.shape)] and lazy.seen == {tuple(x.shape)}


def test_slice_registered_and_cost():
    v = get_variant("slice")
    spec = BlockSpec(64, 32, 128, 2, True, (14, 13), "channel", channel_groups=16, batch=2)
    assert v.supports(spec) and "cpu" in v.backends and "channel" in v.modes
    assert not v.supports(spec.with_(mode="spatial", granularity=2, channel_groups=0))
    assert slice_cost(spec, 1.0).flops == spec.dense_flops()
    ho, wo = spec.out_hw
    ds = 64 * 128 * ho * wo * 2
    assert slice_cost(spec, 0.0).flops == ds
    half = 2 * (64 * 16 * 14 * 13 + 9 * 16 * 16 * ho * wo + 16 * 128 * ho * wo) + ds
    assert slice_cost(spec, 0.5).flops == half
    assert slice_cost(spec, 0.5).bytes < slice_cost(spec, 1.0).bytes


def test_slice_bad_masks():
    blk = make_block(16, 8, 1, mode="channel", channel_granularity=2)
    fb = fold_block(blk)
    x = torch.randn(2, 16, 5, 5).contiguous(memory_format=CL)
    with pytest.raises(ValueError, match="masks.channel is None"):
        slice_block(fb, x, BlockMasks(None, None, None, None))
    for bad in (torch.ones(2, 3), torch.ones(3, 4), torch.ones(2, 0), torch.ones(2)):
        with pytest.raises(ValueError, match=r"slice: masks.channel has shape"):
            slice_block(fb, x, BlockMasks(None, None, None, bad))
    with pytest.raises(ValueError, match="x is torch.float64"):
        slice_block(fb, x.double(), BlockMasks(None, None, None, torch.ones(2, 4)))


def test_fingerprint_is_identity_and_version():
    """A cache key that a new tensor cannot match: not equal after a weight is replaced
    (even by an equal copy) or modified in place; equal otherwise."""
    fb = fold_block(make_block(16, 8, 1, mode="channel", channel_granularity=2))
    fp = fb.fingerprint()
    assert fp == fb.fingerprint() and fp.tensors[0] is fb.w1
    fb.w3 = fb.w3.clone()
    assert fp != fb.fingerprint()
    fp = fb.fingerprint()
    with torch.no_grad():
        fb.kappa1.add_(0.0)
    assert fp != fb.fingerprint()


def test_triton_tap_major_weight_follows_the_weights():
    """The channel_gemm variant's (dy, dx, out, in) copy of W2 is rebuilt after an
    in-place edit of fb.w2, and is not carried into copies."""
    import copy

    from laudtriton.ops.triton_channel import _w2_tap_major

    def tap_major(t):  # the values of W2, laid out (dy, dx, out, in) in memory
        return t.permute(2, 3, 0, 1).is_contiguous() and not t.is_contiguous()

    fb = fold_block(make_block(16, 8, 1, mode="channel", channel_granularity=2))
    w = _w2_tap_major(fb)
    assert torch.equal(w, fb.w2) and tap_major(w)
    with torch.no_grad():
        fb.w2.mul_(-2.0)
    assert torch.equal(_w2_tap_major(fb), fb.w2) and tap_major(_w2_tap_major(fb))
    clone = copy.deepcopy(fb)
    assert clone._channel_gemm_w2.value is None
    assert torch.equal(_w2_tap_major(clone), clone.w2) and tap_major(_w2_tap_major(clone))


def test_groups_read_every_mask_dtype_alike():
    """Samples are grouped by equal channel pattern, in order of first appearance, with
    the same pattern bytes whether the mask is read through numpy (float32/64, bool) or
    through torch (half types)."""
    from laudtriton.ops.channel import _groups

    m = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 0, 1], [1, 1, 1]], dtype=torch.float32)
    want = [([0, 2], [True, False, True]), ([1], [False] * 3), ([3], [True] * 3)]
    for dtype in (torch.float32, torch.float64, torch.bool, torch.float16, torch.bfloat16):
        got = _groups(m.to(dtype))
        assert [(s, p.tolist()) for s, p, _ in got] == want, dtype
        assert all(p.dtype == torch.bool and k == p.numpy().tobytes() for _, p, k in got)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(1, 1), (5, 8), (7, 4)])
def test_im2col_is_unfold(stride, hw):
    """_im2col's rows are F.unfold's 3x3 windows (padding 1), taps major, channels minor."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 3, *hw, generator=g)
    ho, wo = (hw[0] - 1) // stride + 1, (hw[1] - 1) // stride + 1
    want = torch.nn.functional.unfold(h, 3, padding=1, stride=stride)  # [2, 3·9, L]
    want = want.view(2, 3, 9, ho * wo).permute(0, 3, 2, 1).reshape(2 * ho * wo, 27)
    assert torch.equal(_im2col(h.permute(0, 2, 3, 1), stride), want)


def test_gemm_path_counts_and_fallback(monkeypatch):
    """With GEMMs for first sightings nothing is sliced, packed or cached on them (not even
    the dense weights); the second sighting slices as before. gemm_residual writes into
    an identity whose rows are not one block (NCHW) through a copy, exactly."""
    monkeypatch.setattr(channel, "GEMM_ROWS", 0)
    blk, x, masks, ref = calibrated(2, "MLP", 1, 32, 8, 1, (7, 9), 3, 0.5)  # identity = x
    fb = fold_block(blk)
    xc = x.contiguous(memory_format=CL)
    assert_close(slice_block(fb, xc, masks), ref)
    cache = slice_cache(fb)
    patterns = len({tuple(r.tolist()) for r in masks.channel})
    assert (cache.deferred, cache.misses, cache.hits, len(cache)) == (patterns, 0, 0, 0)
    assert_close(slice_block(fb, xc, masks), ref)
    assert (cache.misses, len(cache)) == (patterns, patterns)
    pattern = masks.channel[0] > 0.5
    active = active_channels(pattern, fb.width)
    parts = slice_parts(fb, active, (7, 9), kappa_totals(fb), active.numel())
    assert blk.downsample is None
    identity = xc[:1].contiguous()  # NCHW: its NHWC rows are not one block
    out = gemm_residual(fb, parts, xc[:1], identity, into=True)
    assert out is identity
    assert_close(out, ref[:1])
    fresh = gemm_residual(fb, parts, xc[:1], xc[:1], into=False)
    assert fresh.is_contiguous(memory_format=CL)
    assert_close(fresh, ref[:1])


def test_channel_work_reads_the_downsample_weights_only_where_there_is_one():
    """channel_work's weight count: at rate 1 every weight of the block
    (``BlockSpec.weight_count``), the downsample's only in a block that has one; at rate
    0.5 half the width in each of conv1, conv2 (both sides) and conv3."""
    from laudtriton.ops.kappa import channel_work

    with_ds = BlockSpec(64, 32, 128, 2, True, (14, 13), "channel", channel_groups=16, batch=2)
    no_ds = BlockSpec(128, 32, 128, 1, False, (14, 13), "channel", channel_groups=16, batch=2)
    for spec in (with_ds, no_ds):
        assert channel_work(spec, 1.0)[1] == spec.weight_count()
    assert channel_work(no_ds, 0.5)[1] == 128 * 16 + 9 * 16 * 16 + 16 * 128
    assert channel_work(with_ds, 0.5)[1] == 64 * 16 + 9 * 16 * 16 + 16 * 128 + 64 * 128


def test_slice_cost_at_rate_zero_counts_no_convolution_launches():
    """At channel rate 0 no convolution runs (the residual branch is the constant b3 +
    W3 @ κ2): fewer launches than at any positive rate, per group as at batch 1."""
    for batch in (1, 3):
        spec = BlockSpec(64, 32, 128, 2, True, (14, 13), "channel", channel_groups=16,
                         batch=batch)
        zero, low = slice_cost(spec, 0.0), slice_cost(spec, 1 / 16)
        assert zero.launches < low.launches
        assert low.launches - zero.launches >= 3 * (1 if batch == 1 else batch)  # conv1-3


def test_fingerprint_changes_with_the_stride():
    """The packed and sliced weights are built for a stride: a FoldedBlock whose stride
    is changed no longer matches the Fingerprint its caches were keyed on."""
    fb = fold_block(make_block(16, 8, 1, mode="channel", channel_granularity=2))
    fp = fb.fingerprint()
    fb.stride = 2
    assert fp != fb.fingerprint()
    assert all(a is b for a, b in zip(fp.tensors, fb.fingerprint().tensors))
    fb.stride = 1
    assert fp == fb.fingerprint()


def test_folded_block_to_converts_every_tensor_in_its_place():
    """FoldedBlock.to gives each weight, bias and κ its own converted value (κ1 and κ2
    differ, so a mix-up shows), the stride and the reference block unchanged."""
    fb = fold_block(make_block(16, 8, 2, mode="channel", channel_granularity=2))
    assert not torch.equal(fb.kappa1, fb.kappa2)
    d = fb.to(dtype=torch.float64)
    for name in ("w1", "b1", "w2", "b2", "w3", "b3", "wd", "bd", "kappa1", "kappa2"):
        got, want = getattr(d, name), getattr(fb, name)
        assert got.dtype == torch.float64 and torch.equal(got, want.double()), name
    assert d.stride == 2 and d.block is fb.block
