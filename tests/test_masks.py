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
                                            (1, 12, 8, 2, 2), (2, 7, 7, 2, 2)])
def test_patch_rows(b, h, w, stride, s):
    """A cell's output rows, and its conv2 halo patch of P x P = (S+2)² buffer rows at
    stride 1, (2S+1)² at stride 2 (DESIGN.md section 3, ``patch``): exactly the rows its
    outputs' taps read, none more (a larger patch reads past the buffer of the last
    sample, 7x7 at stride 2)."""
    assert mk.patch_size(s, stride) == (s + 2 if stride == 1 else 2 * s + 1)
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
        # the taps of the cell's outputs read the cell's patch, all of it
        assert set(taps[c].flatten().tolist()) == set(tin[c].tolist())
    assert int(tin.max()) < b * (h + 2) * (w + 2)
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


def test_active_pixels_refuses_a_mask_of_several_channels():
    """A [B, C, h, w] mask with C > 1 is an error, not a flat index list over B·C·h·w
    that the caller would read as pixels of other samples."""
    with pytest.raises(ValueError, match=r"\[B, 1, h, w\]"):
        mk.active_pixels(torch.ones(2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"\[B, 1, h, w\]"):
        mk.active_pixels(torch.ones(1, 3, 2, 2, dtype=torch.bool))


def test_dispatch_rate_reads_the_grid_of_both_mode_as_run_rate_does():
    """Mode ``both`` is dispatched on its spatial rate (the grid's mean), as
    ``schedule.run_rate`` records its timings; only mode ``channel`` reads the channel mask."""
    from laudtriton.nn.block import BlockMasks
    from laudtriton.schedule import run_rate

    grid = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)  # mean 0.25
    channel = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # mean 0.75
    masks = BlockMasks(grid, None, None, channel)
    shape = dict(in_channels=8, width=4, out_channels=16, stride=1, downsample=True,
                 in_hw=(4, 4))
    for mode, want in (("both", 0.25), ("spatial", 0.25), ("channel", 0.75)):
        spec = BlockSpec(**shape, mode=mode, granularity=2,
                         channel_groups=4 if mode != "spatial" else 1)
        assert mk.dispatch_rate(spec, masks) == want, mode
        assert run_rate(spec, masks) == want, mode


@pytest.mark.parametrize("mode,granularity,kwargs", [
    ("spatial", 2, {}), ("layer", 1, {}), ("channel", 1, {}),
    ("channel", 1, {"channel_masker_layers": 1}), ("both", 2, {}),
])
@torch.no_grad()
def test_gates_keep_where_the_two_logits_tie_as_the_reference_does(mode, granularity, kwargs):
    """Eval masks are logits[:, 0] >= logits[:, 1] (DESIGN.md section 2): a tie keeps. With
    the keep logits made equal to the skip logits (spatial masker everywhere; channel
    groups 0 and 2, groups 1 and 3 pushed to skip), the reference keeps the tied cells and
    groups, and the compiled blocks' Gates give the same masks."""
    blk = make_block(64, 16, 1, mode, granularity, 4 if mode in ("channel", "both") else 1,
                     seed=3, **kwargs)
    if blk.masker_spatial is not None:
        conv = blk.masker_spatial.conv
        conv.weight[0] = conv.weight[1]
        conv.bias[0] = conv.bias[1]
    if blk.masker_channel is not None:
        last = blk.masker_channel.last_linear()
        g = blk.masker_channel.groups
        last.weight[:g] = last.weight[g:]
        last.bias[:g] = last.bias[g:]
        last.bias[1:g:2] -= 1e4  # groups 1, 3, ...: the keep logit far below
    x = torch.randn(3, 64, 12, 10, generator=torch.Generator().manual_seed(4))
    x = x.contiguous(memory_format=torch.channels_last)
    ref, _ = blk.compute_masks(x)
    if ref.grid is not None:
        assert bool(ref.grid.bool().all())
    if ref.channel is not None:
        want = torch.tensor([1.0, 0.0] * (ref.channel.shape[1] // 2)).expand_as(ref.channel)
        assert torch.equal(ref.channel, want)
    got = mk.Gates(blk)(x)
    for name in ("grid", "mask3", "mask1", "channel"):
        r, f = getattr(ref, name), getattr(got, name)
        assert (r is None) == (f is None), name
        if r is not None:
            assert torch.equal(f, r), name


@torch.no_grad()
def test_gates_are_a_snapshot_of_the_hidden_layers_of_the_channel_masker_too():
    """Gates reads every layer of a channel MLP masker once: editing the hidden layer's
    weights in place afterwards (as a training step on the source model does) changes the
    reference's masks, not those of a Gates made before (compiled blocks share the source's
    parameters through a shallow copy)."""
    blk = make_block(64, 16, 1, "channel", 1, 4, seed=3)
    assert len(blk.masker_channel.linears()) == 2
    blk.masker_channel.last_linear().bias.zero_()
    x = torch.randn(3, 64, 9, 7, generator=torch.Generator().manual_seed(6))
    ref, _ = blk.compute_masks(x)
    gates = mk.Gates(blk)
    assert torch.equal(gates(x).channel, ref.channel)
    hidden = blk.masker_channel.linears()[0]
    hidden.weight.neg_()
    hidden.bias.neg_()
    ref2, _ = blk.compute_masks(x)
    assert not torch.equal(ref2.channel, ref.channel)  # the edit matters to the reference
    assert torch.equal(gates(x).channel, ref.channel)
    assert torch.equal(mk.Gates(blk)(x).channel, ref2.channel)  # a new Gates reads it


def _is_one_blob(cells: torch.Tensor) -> bool:
    """Whether the active cells of a [gh, gw] 0/1 grid are the cells nearest to some cell
    of the grid (``synthetic._exact_rate``, clustered: ties within 0.5 broken at random,
    so every active cell is no farther, squared, than every inactive one)."""
    gh, gw = cells.shape
    yy, xx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    on = cells.bool()
    for cy in range(gh):
        for cx in range(gw):
            d = (yy - cy) ** 2 + (xx - cx) ** 2
            if d[on].max() <= d[~on].min():
                return True
    return False


def test_clustered_synthetic_masks_are_one_blob_on_a_grid_that_is_not_square():
    """clustered=True draws per sample the k cells nearest to a random centre: a disc of
    the grid's own rows and columns (3 x 8 here, so swapping them scatters the cells)."""
    spec = BlockSpec(16, 4, 16, 1, False, (6, 16), "spatial", 2, batch=6)
    for rate in (0.25, 0.5):
        m = synthetic_masks(spec, rate, seed=3, clustered=True)
        assert m.grid.shape == (6, 1, 3, 8)
        for i in range(6):
            assert m.grid[i, 0].sum().item() == round(rate * 24)
            assert _is_one_blob(m.grid[i, 0]), (rate, m.grid[i, 0])


def test_synthetic_layer_masks_turn_on_round_rate_times_batch_samples():
    """Layer mode: N is the batch, exactly round(r·B) samples on (not each sample on with
    round(r) of one cell: at 0.5 that turned every sample off), each sample's mask3 and
    mask1 all on or all off with its gate."""
    spec = BlockSpec(16, 4, 16, 2, True, (9, 8), "layer", batch=4)
    for rate, on in ((0.25, 1), (0.5, 2), (0.75, 3), (1.0, 4)):
        m = synthetic_masks(spec, rate, seed=2)
        assert m.grid.shape == (4, 1, 1, 1) and m.grid.sum().item() == on, rate
        assert m.mask3.shape == (4, 1, 5, 4) and m.mask1.shape == (4, 1, 9, 8)
        for i in range(4):
            assert bool(m.mask3[i].all()) == bool(m.grid[i].item() == 1) == bool(m.mask1[i].all())
            assert bool(m.mask3[i].any()) == bool(m.grid[i].item() == 1)


def test_synthetic_masks_of_both_mode_draw_channel_groups_at_their_own_rate():
    """``both`` gets a spatial grid at ``rate`` and channel groups at ``channel_rate``
    (default ``rate``), each with exactly round(r·N) active per sample."""
    spec = BlockSpec(32, 8, 32, 1, False, (8, 8), "both", 2, channel_groups=4, batch=3)
    m = synthetic_masks(spec, 0.5, seed=1, channel_rate=0.25)
    assert m.grid.sum(dim=(1, 2, 3)).tolist() == [8.0] * 3  # 16 cells of 2x2
    assert m.channel.shape == (3, 4) and m.channel.sum(1).tolist() == [1.0] * 3
    m = synthetic_masks(spec, 0.75, seed=1)
    assert m.channel.sum(1).tolist() == [3.0] * 3
    channel = synthetic_masks(spec.with_(mode="channel", granularity=1), 0.5, seed=1,
                              channel_rate=1.0)
    assert channel.grid is None and channel.channel.sum(1).tolist() == [4.0] * 3


def test_synthetic_masks_refuse_a_rate_outside_zero_to_one():
    spec = BlockSpec(16, 4, 16, 1, False, (8, 8), "spatial", 2, batch=2)
    for rate in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
            synthetic_masks(spec, rate)
    assert synthetic_masks(spec, 1.0).grid.all() and not synthetic_masks(spec, 0.0).grid.any()


def test_synthetic_masks_are_put_on_the_given_device():
    """Every mask on ``device`` (meta here, the one other device every machine has)."""
    spec = BlockSpec(32, 8, 32, 1, False, (8, 8), "both", 2, channel_groups=4, batch=2)
    m = synthetic_masks(spec, 0.5, seed=1, device="meta")
    assert {t.device.type for t in (m.grid, m.mask3, m.mask1, m.channel)} == {"meta"}
    assert synthetic_masks(spec, 0.5, seed=1).grid.device.type == "cpu"
