"""Index tables of ops.masks against explicit loops."""

import pytest
import torch

from laudtriton.nn.maskers import expand_mask1, upsample_mask
from laudtriton.ops import masks as mk
from laudtriton.ops.kappa import tap_validity
from laudtriton.ops.spec import BlockSpec
from laudtriton.ops.synthetic import synthetic_masks
from laudtriton.testing import make_block


def test_active_pixels_flat_over_batch():
    m = torch.zeros(2, 1, 3, 5)
    m[0, 0, 1, 4] = 1
    m[1, 0, 0, 0] = 1
    m[1, 0, 2, 3] = 1
    assert mk.active_pixels(m).tolist() == [9, 15, 28]
    assert mk.active_pixels(m > 0.5).tolist() == [9, 15, 28]
    assert mk.active_pixels(torch.zeros(1, 1, 2, 2)).numel() == 0
    with pytest.raises(ValueError, match=r"\[B, 1, h, w\]"):
        mk.active_pixels(torch.zeros(2, 3, 4))


@pytest.mark.parametrize("b,h,w,stride", [(1, 5, 7, 1), (2, 7, 6, 2), (3, 4, 4, 1), (1, 9, 8, 2)])
def test_tap_and_buffer_rows(b, h, w, stride):
    ho, wo = mk.out_hw_of((h, w), stride)
    pix = torch.arange(b * ho * wo)
    rows = mk.tap_rows(pix, b, (h, w), stride)
    valid = mk.tap_validity_rows(pix, b, (h, w), stride)
    assert torch.equal(valid, tap_validity((h, w), stride).repeat(b, 1))
    for p in range(b * ho * wo):
        n, i, j = p // (ho * wo), (p // wo) % ho, p % wo
        for t in range(9):
            y, x = i * stride + t // 3 - 1, j * stride + t % 3 - 1
            assert rows[p, t].item() == (n * (h + 2) + y + 1) * (w + 2) + x + 1
            assert valid[p, t].item() == float(0 <= y < h and 0 <= x < w)
    inp = torch.arange(b * h * w)
    brows = mk.buffer_rows(inp, b, (h, w))
    ys, xs = (inp // w) % h, inp % w
    assert torch.equal(brows, ((inp // (h * w)) * (h + 2) + ys + 1) * (w + 2) + xs + 1)


@pytest.mark.parametrize("b,h,w,stride,s", [(1, 8, 8, 1, 4), (2, 6, 4, 1, 2), (2, 15, 16, 2, 4),
                                            (1, 12, 8, 2, 2)])
def test_patch_rows(b, h, w, stride, s):
    ho, wo = mk.out_hw_of((h, w), stride)
    gh, gw = ho // s, wo // s
    cells = torch.arange(b * gh * gw)
    tin, tout = mk.patch_rows(cells, b, (h, w), stride, s)
    p = mk.patch_size(s, stride)
    assert tin.shape == (cells.numel(), p * p) and tout.shape == (cells.numel(), s * s)
    taps = mk.tap_rows(tout.reshape(-1), b, (h, w), stride).view(-1, s * s, 9)
    bcxy = mk.cells_to_bcxy(cells, (gh, gw))
    for c in range(cells.numel()):
        n, cy, cx = bcxy[c].tolist()
        want = [(n * ho + cy * s + u) * wo + cx * s + v for u in range(s) for v in range(s)]
        assert tout[c].tolist() == want
        # every tap of every output of the cell reads inside the cell's patch
        assert set(taps[c].flatten().tolist()) <= set(tin[c].tolist())
    with pytest.raises(ValueError, match="does not divide"):
        mk.patch_rows(cells, b, (h + 2, w), stride, s + 1)


def test_cover_counts():
    # 8 outputs in 2 cells of 4, stride 1: inputs 3 and 4 are read by both cells
    assert mk.cover_counts(8, 8, 2, 1) == [1, 1, 1, 2, 2, 1, 1, 1]
    # stride 2, 4 outputs in 2 cells from 8 inputs: input 3 is shared
    assert mk.cover_counts(8, 4, 2, 2) == [1, 1, 1, 2, 1, 1, 1, 1]


@pytest.mark.parametrize("hw,stride,s,rate", [((56, 56), 1, 4, 0.5), ((14, 14), 1, 2, 0.5),
                                              ((56, 56), 2, 4, 0.25), ((13, 11), 1, 4, 0.75)])
def test_expected_mask1_fraction_matches_sampling(hw, stride, s, rate):
    spec = BlockSpec(16, 4, 16, stride, stride > 1, hw, "spatial", s, batch=64)
    masks = synthetic_masks(spec, rate, seed=5)
    gh, gw = spec.grid
    want = mk.expected_mask1_fraction(hw, stride, (gh, gw), int(round(rate * gh * gw)))
    got = masks.mask1.float().mean().item()
    assert got == pytest.approx(want, abs=0.02)
    # the ends are exact
    assert mk.expected_mask1_fraction(hw, stride, (gh, gw), 0) == 0.0
    full = expand_mask1(upsample_mask(torch.ones(1, 1, gh, gw), spec.out_hw), stride, hw)
    assert mk.expected_mask1_fraction(hw, stride, (gh, gw), gh * gw) == pytest.approx(
        full.float().mean().item())


@pytest.mark.parametrize("hw,stride,grid", [
    ((14, 14), 1, (7, 7)), ((56, 56), 2, (7, 7)), ((13, 17), 1, (5, 4)), ((13, 17), 2, (3, 3)),
    ((74, 74), 1, (24, 24)), ((7, 9), 1, (7, 9)), ((9, 8), 2, (1, 1)), ((6, 6), 1, (2, 3)),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_spatial_masks_from_grid_equal_the_reference_expansion(hw, stride, grid, batch):
    """mask3 and mask1 from the cell tables equal upsample_mask / expand_mask1 exactly,
    uneven cells (S not dividing the map) included; batch 1 takes the 2-D mm path."""
    g = torch.Generator().manual_seed(1)
    ho, wo = mk.out_hw_of(hw, stride)
    for rate in (0.0, 0.3, 0.7, 1.0):
        cells = (torch.rand(batch, 1, *grid, generator=g) < rate).float()
        mask3, mask1 = mk.spatial_masks_from_grid(cells, hw, stride)
        ref3 = upsample_mask(cells, (ho, wo))
        assert torch.equal(mask3, ref3)
        assert mask1.dtype == torch.bool
        assert torch.equal(mask1, expand_mask1(ref3, stride, hw))


@pytest.mark.parametrize("shape,grid", [
    ((2, 24, 56, 56), (14, 14)), ((1, 40, 28, 28), (7, 7)), ((3, 16, 14, 14), (7, 7)),
    ((2, 8, 12, 18), (3, 6)), ((2, 8, 13, 17), (5, 4)), ((2, 8, 7, 9), (7, 9)),
    ((2, 24, 56, 56), (1, 1)), ((3, 16, 13, 11), (1, 1)),
])
@pytest.mark.parametrize("channels_last", [True, False])
def test_grid_pool_equals_adaptive_pooling(shape, grid, channels_last):
    """grid_pool is adaptive_avg_pool2d: bit-identical for grids larger than 1x1 (dividing
    the map or not), within float rounding for 1x1 (adaptive pooling takes mean() there)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = mk.grid_pool(x, grid)
    ref = torch.nn.functional.adaptive_avg_pool2d(x, grid)
    assert got.shape == ref.shape
    if grid == (1, 1):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    else:
        assert torch.equal(got, ref)


def test_global_pool_is_never_a_view_of_x():
    for hw in ((1, 1), (4, 3)):
        x = torch.randn(2, 5, *hw).contiguous(memory_format=torch.channels_last)
        p = mk.global_pool(x)
        assert p.shape == (2, 5) and p.data_ptr() != x.data_ptr()
        torch.testing.assert_close(p, x.mean((2, 3)))


@pytest.mark.parametrize("mode,granularity,stride,channel_granularity,kwargs", [
    ("spatial", 2, 1, 1, {}), ("spatial", 3, 2, 1, {}), ("spatial", 1, 1, 1, {}),
    ("layer", 1, 2, 1, {}), ("channel", 1, 1, 4, {}),
    ("channel", 1, 1, 4, {"channel_masker_layers": 1}),
    ("channel", 1, 1, 4, {"channel_masker": "conv_linear"}), ("both", 2, 2, 4, {}),
])
def test_gates_equal_compute_masks(mode, granularity, stride, channel_granularity, kwargs):
    """The compiled blocks' mask path gives the reference maskers' masks (rates near 0.5
    by a shifted masker bias, so both decisions occur)."""
    from laudtriton.testing import make_block

    blk = make_block(64, 16, stride, mode, granularity, channel_granularity, seed=3, **kwargs)
    with torch.no_grad():
        if blk.masker_spatial is not None:
            blk.masker_spatial.conv.bias.zero_()
        if blk.masker_channel is not None:
            blk.masker_channel.last_linear().bias.zero_()
    x = torch.randn(3, 64, 13, 11).contiguous(memory_format=torch.channels_last)
    ref, _ = blk.compute_masks(x)
    # the masker pools x itself, or reads the pooling a compiled model kept (used by the
    # channel MLP masker and the layer gate, ignored by a spatial grid larger than 1x1)
    gates = mk.Gates(blk)
    for got in (gates(x), gates(x, pooled=mk.global_pool(x))):
        for name in ("grid", "mask3", "mask1", "channel"):
            r, f = getattr(ref, name), getattr(got, name)
            assert (r is None) == (f is None), name
            if r is not None:
                assert r.shape == f.shape and r.dtype == f.dtype, name
                assert torch.equal(r, f), name
    for m in (ref.grid, ref.channel):
        if m is not None:
            assert 0 < float(m.mean()) < 1
    # a snapshot: changing the maskers afterwards changes the reference's masks only
    with torch.no_grad():  # every "keep" logit pushed down: the reference skips all
        if blk.masker_spatial is not None:
            blk.masker_spatial.conv.bias[0] = -1e4
        if blk.masker_channel is not None:
            blk.masker_channel.last_linear().bias[:blk.masker_channel.groups] = -1e4
    ref2, _ = blk.compute_masks(x)
    after = gates(x)
    for name in ("grid", "channel"):
        if getattr(ref, name) is not None:
            assert torch.equal(getattr(after, name), getattr(ref, name)), name
            assert not getattr(ref2, name).any(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool, torch.float16])
def test_active_pixels_same_on_every_path(dtype):
    """The numpy path (CPU, numpy dtypes) and torch.nonzero agree, on contiguous,
    expanded and strided masks; the result is int64 and ascending."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(3, 1, 7, 9, generator=g) > 0.5
    masks = [base, base[:1].expand(3, 1, 7, 9), base.transpose(2, 3), base[:, :, ::2, 1::3]]
    for m in masks:
        m = m.to(dtype)
        out = mk.active_pixels(m)
        ref = torch.nonzero(m.reshape(-1).float() > 0.5).squeeze(1)
        assert out.dtype == torch.int64
        assert torch.equal(out, ref)


def test_dispatch_rate_is_the_mask_mean():
    from laudtriton.nn.block import BlockMasks
    from laudtriton.ops.masks import dispatch_rate

    grid = (torch.arange(12.0).view(1, 1, 3, 4) % 3 == 0).float()
    channel = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0]])
    masks = BlockMasks(grid, None, None, channel)
    shape = dict(in_channels=8, width=5, out_channels=16, stride=1, downsample=True,
                 in_hw=(6, 8))
    for spec, t in ((BlockSpec(**shape, mode="spatial", granularity=2), grid),
                    (BlockSpec(**shape, mode="channel", channel_groups=5), channel)):
        r = dispatch_rate(spec, masks)
        assert isinstance(r, float) and r == pytest.approx(float(t.mean()), abs=1e-7)


def test_host_array_only_where_numpy_reads_without_a_torch_op():
    """host_array: the tensor's own memory as numpy for a CPU tensor of a numpy dtype
    without grad (so writes show through); None for other dtypes and for a tensor that
    needs grad (numpy() would raise)."""
    for dtype in mk.NUMPY_DTYPES:
        t = torch.zeros(2, 3, dtype=dtype)
        a = mk.host_array(t)
        assert a is not None and a.shape == (2, 3)
        t[1, 2] = 1
        assert a[1, 2] == 1
    assert mk.host_array(torch.zeros(3, dtype=torch.float16)) is None
    assert mk.host_array(torch.zeros(3, dtype=torch.int64)) is None
    assert mk.host_array(torch.zeros(3, requires_grad=True)) is None


def test_cover_counts_follow_interpolate_where_the_integer_rule_does_not():
    """At Ho = 74 with 24 cells, interpolate puts output pixel 37 in cell 11, not 12
    (⌊37·24/74⌋); the counts the predictor reads must be those of the masks built."""
    from laudtriton.nn.maskers import expand_mask1, upsample_mask

    assert mk._cell_of(74, 24)[37] == 11 != 37 * 24 // 74
    covered = [sum(bool(expand_mask1(upsample_mask(
        torch.eye(24)[c].view(1, 1, 24, 1), (74, 1)), 1, (74, 1))[0, 0, y, 0]) for c in range(24))
        for y in range(74)]
    assert mk.cover_counts(74, 74, 24, 1) == covered


@pytest.mark.parametrize("shape,grid", [
    ((2, 8, 12, 13), (3, 4)),  # H divides, W does not (13 = 4·3 + 1)
    ((2, 8, 13, 12), (4, 3)),  # W divides, H does not
    ((2, 8, 12, 14), (4, 4)),
    ((2, 8, 14, 12), (4, 4)),
])
@pytest.mark.parametrize("channels_last", [True, False])
def test_grid_pool_where_one_side_divides(shape, grid, channels_last):
    """grid_pool takes avg_pool2d only where the grid divides both sides; where it divides
    one, its windows are adaptive pooling's (the existing cases divided both or neither,
    so a fast path taken on one dividing side passed them; mutation audit, session 47)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(mk.grid_pool(x, grid),
                       torch.nn.functional.adaptive_avg_pool2d(x, grid))


@pytest.mark.parametrize("hw", [(12, 13), (13, 12)])
@torch.no_grad()
def test_gates_equal_compute_masks_where_one_side_divides(hw):
    """S = 3 on a 12x13 map: a 4x4 grid, 12 divisible by 4, 13 not."""
    blk = make_block(64, 16, 1, "spatial", 3, seed=3)
    blk.masker_spatial.conv.bias.zero_()
    x = torch.randn(3, 64, *hw, generator=torch.Generator().manual_seed(5))
    x = x.contiguous(memory_format=torch.channels_last)
    ref, _ = blk.compute_masks(x)
    assert 0 < float(ref.grid.mean()) < 1
    got = mk.Gates(blk)(x)
    for name in ("grid", "mask3", "mask1"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
