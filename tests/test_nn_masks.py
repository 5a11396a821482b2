"""Masks of laudtriton.nn on hand-made inputs (DESIGN.md section 2).

Every expectation is computed here independently of the code under test: the mask grid
by explicit adaptive-average windows, mask3 by the integer rule pixel i -> cell
floor(i*g/Ho), mask1 by brute force over (input pixel, output pixel) pairs, and block
outputs by a float64 re-implementation of the official Bottleneck.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from laudtriton.nn import LaudBottleneck, expand_mask1, upsample_mask
from laudtriton.testing import assert_close, make_block

# ----------------------------------------------------------------------------- helpers


def steer_spatial(block: LaudBottleneck) -> None:
    """Make the spatial masker's margin (keep - skip logit) equal to 2 * pooled channel 0."""
    conv = block.masker_spatial.conv
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[1, 0] = -1.0
        conv.bias.zero_()


def steer_channel(block: LaudBottleneck, group_mask) -> None:
    """Make the channel masker output ``group_mask`` ([G] of 0/1) for every input."""
    lin = block.masker_channel.last_linear()
    g = block.masker_channel.groups
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.bias[:g] = torch.tensor([1.0 if m else -1.0 for m in group_mask])


def pooled_windows(x0: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Adaptive average pooling by explicit windows [floor(i*H/g), ceil((i+1)*H/g)).

    x0: [B, H, W] float64. The official masker pools only when the grid is smaller than
    the map; a grid equal to the map is the map itself.
    """
    b, h, w = x0.shape
    gh, gw = grid
    if (gh, gw) == (h, w):
        return x0.copy()
    out = np.zeros((b, gh, gw))
    for i in range(gh):
        r0, r1 = (i * h) // gh, -((-(i + 1) * h) // gh)
        for j in range(gw):
            c0, c1 = (j * w) // gw, -((-(j + 1) * w) // gw)
            out[:, i, j] = x0[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def brute_mask3(grid: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """[B, 1, gh, gw] -> [B, 1, Ho, Wo]: output pixel i takes cell min(floor(i * scale),
    g - 1) with scale = g / Ho rounded to float32 (PyTorch's ``nearest``, which
    ``nn.maskers.upsample_mask`` uses). That is DESIGN.md's floor(i * g / Ho) except
    where the rounded scale puts a pixel one cell lower (Ho = 74, g = 24: pixel 37 in
    cell 11; ``test_mask3_follows_nearest_not_exact_floor``)."""
    def cells(g: int, n: int) -> list[int]:
        i = np.arange(n, dtype=np.float32)
        return np.minimum(np.floor(i * np.float32(g / n)), g - 1).astype(int).tolist()

    (gh, gw), (ho, wo) = grid.shape[-2:], out_hw
    return grid[:, :, cells(gh, ho)][:, :, :, cells(gw, wo)]


def brute_mask1(mask3: torch.Tensor, stride: int, in_hw: tuple[int, int]) -> torch.Tensor:
    """[B, 1, Ho, Wo] -> bool [B, 1, H, W]: input pixel (p, q) is needed iff some active
    output (i, j) has max(|p - i*s|, |q - j*s|) <= 1. Brute force over all pairs."""
    m = mask3[:, 0].numpy() > 0.5
    b, ho, wo = m.shape
    h, w = in_hw
    p = np.arange(h)[:, None, None, None]
    q = np.arange(w)[None, :, None, None]
    i = np.arange(ho)[None, None, :, None]
    j = np.arange(wo)[None, None, None, :]
    near = np.maximum(np.abs(p - i * stride), np.abs(q - j * stride)) <= 1  # [H, W, Ho, Wo]
    out = np.einsum("hwij,bij->bhw", near.astype(np.int64), m.astype(np.int64)) > 0
    return torch.from_numpy(out)[:, None]


def bn64(bn: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Eval BatchNorm in float64."""
    d = torch.float64
    return F.batch_norm(x, bn.running_mean.to(d), bn.running_var.to(d), bn.weight.to(d),
                        bn.bias.to(d), False, 0.0, bn.eps)


def reference_block(block: LaudBottleneck, x: torch.Tensor, mask3=None, channel=None):
    """Official Bottleneck in eval, float64: channel mask before BN, spatial mask after bn3.

    mask3: [B, 1, Ho, Wo] or None; channel: [B, G] group mask or None.
    """
    d = torch.float64
    x = x.to(d)
    cm = None
    if channel is not None:
        k = block.width // channel.shape[1]
        cm = channel.to(d).repeat_interleave(k, dim=1)[:, :, None, None]
    out = F.conv2d(x, block.conv1.weight.to(d))
    out = F.relu(bn64(block.bn1, out * cm if cm is not None else out))
    out = F.conv2d(out, block.conv2.weight.to(d), stride=block.stride, padding=1)
    out = F.relu(bn64(block.bn2, out * cm if cm is not None else out))
    out = bn64(block.bn3, F.conv2d(out, block.conv3.weight.to(d)))
    if mask3 is not None:
        out = out * mask3.to(d)
    identity = x
    if block.downsample is not None:
        conv, bn = block.downsample
        identity = bn64(bn, F.conv2d(x, conv.weight.to(d), stride=block.stride))
    return F.relu(out + identity)


def spatial_block(s: int, stride: int, mode: str = "spatial", seed: int = 0, **kw):
    block = make_block(8, 3, stride=stride, mode=mode, granularity=s, seed=seed, **kw)
    steer_spatial(block)
    return block


def check_inactive_is_relu_identity(block, x, out, mask3):
    """At every inactive output pixel the block must return relu(identity) exactly."""
    with torch.no_grad():
        identity = x if block.downsample is None else block.downsample(x)
    inactive = (mask3 < 0.5).expand_as(out)
    assert torch.equal(out[inactive], F.relu(identity)[inactive])


# ----------------------------------------------------------- spatial masks, S divides the map

# (S, Ho, Wo): S divides both sides; non-square maps included.
DIVIDING = [(1, 5, 4), (2, 4, 6), (4, 8, 4), (7, 7, 14), (8, 16, 8)]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("s,ho,wo", DIVIDING)
def test_spatial_masks_hand_pattern(s, ho, wo, stride):
    """Channel 0 of x is +1 on chosen cells and -1 elsewhere: the grid is that pattern,
    mask3 its S x S patches, mask1 the brute-force receptive field."""
    b = 2
    gh, gw = ho // s, wo // s
    g = torch.Generator().manual_seed(s * 10 + stride)
    pattern = (torch.rand(b, 1, gh, gw, generator=g) < 0.4).float()
    pattern[0, 0, 0, 0] = 1.0  # a corner cell active: exercises clipping at the border
    pattern[1].zero_()
    pattern[1, 0, gh - 1, gw - 1] = 1.0  # sample 1: only the far corner
    h, w = ho * stride, wo * stride
    x = torch.randn(b, 8, h, w, generator=g)
    x[:, 0] = F.interpolate(pattern * 2 - 1, size=(h, w), mode="nearest")[:, 0]

    block = spatial_block(s, stride)
    masks, _ = block.compute_masks(x)
    assert masks.grid.shape == (b, 1, gh, gw)
    assert torch.equal(masks.grid, pattern)
    assert torch.equal(masks.mask3, pattern.repeat_interleave(s, 2).repeat_interleave(s, 3))
    assert masks.mask1.dtype == torch.bool
    assert torch.equal(masks.mask1, brute_mask1(masks.mask3, stride, (h, w)))
    assert masks.channel is None


@pytest.mark.parametrize("stride", [1, 2])
def test_mask1_single_corner_output_by_hand(stride):
    """One active output pixel at (0, 0): conv1 needs rows/cols 0..1 (clipped at -1)."""
    mask3 = torch.zeros(1, 1, 4, 4)
    mask3[0, 0, 0, 0] = 1
    m1 = expand_mask1(mask3, stride, (4 * stride, 4 * stride))
    want = torch.zeros(1, 1, 4 * stride, 4 * stride, dtype=torch.bool)
    want[0, 0, :2, :2] = True
    assert torch.equal(m1, want)
    # the far corner (3, 3): centre (3s, 3s); rows 3s-1..3s+1, clipped to the image
    mask3.zero_()
    mask3[0, 0, 3, 3] = 1
    m1 = expand_mask1(mask3, stride, (4 * stride, 4 * stride))
    want.zero_()
    c = 3 * stride
    want[0, 0, c - 1 : c + 2, c - 1 : c + 2] = True
    assert torch.equal(m1, want)
    assert int(m1.sum()) == (9 if stride == 2 else 4)


# ------------------------------------------------------ spatial masks, S does not divide

# (S, Ho, Wo): at least one side not a multiple of S; the cells then have unequal sizes.
# (3, 74, 74): a 24x24 grid, where nearest upsampling and floor(i * g / Ho) disagree
NOT_DIVIDING = [(2, 5, 7), (4, 9, 6), (7, 10, 15), (8, 9, 17), (4, 13, 13), (3, 74, 74)]


@pytest.mark.parametrize("stride,odd_input", [(1, False), (2, False), (2, True)])
@pytest.mark.parametrize("s,ho,wo", NOT_DIVIDING)
def test_spatial_masks_uneven_cells(s, ho, wo, stride, odd_input):
    """Odd input (stride 2): H = 2*Ho - 1, the last output centre sits on the border."""
    b = 3
    h = ho * stride - (1 if odd_input else 0)
    w = wo * stride - (1 if odd_input else 0)
    block = spatial_block(s, stride)
    assert block.out_hw((h, w)) == (ho, wo)
    g = torch.Generator().manual_seed(ho * 100 + wo + stride)
    grid_hw = (ho // s, wo // s)
    x = torch.randn(b, 8, h, w, generator=g)
    # a smooth random field whose sign changes at scales that do not align with the cells
    field = torch.randn(b, 1, grid_hw[0] + 1, grid_hw[1] + 1, generator=g)
    x[:, 0] = F.interpolate(field, size=(h, w), mode="bilinear")[:, 0] + 0.1 * x[:, 0]
    pooled = pooled_windows(x[:, 0].double().numpy(), grid_hw)
    assert np.abs(pooled).min() > 1e-4, "test input has a tie; change the seed"
    want_grid = torch.from_numpy(pooled >= 0).float()[:, None]

    masks, _ = block.compute_masks(x)
    assert torch.equal(masks.grid, want_grid)
    assert 0 < int(want_grid.sum()) < want_grid.numel()
    assert torch.equal(masks.mask3, brute_mask3(want_grid, (ho, wo)))
    assert torch.equal(masks.mask1, brute_mask1(masks.mask3, stride, (h, w)))

    with torch.no_grad():
        out = block(x)
    assert_close(out, reference_block(block, x, mask3=masks.mask3))
    check_inactive_is_relu_identity(block, x, out, masks.mask3)


def _upsample_rule_breaks(pairs):
    bad = []
    for s, ho in pairs:
        gh = ho // s
        grid = torch.arange(gh, dtype=torch.float32).view(1, 1, gh, 1)
        up = upsample_mask(grid, (ho, 1))[0, 0, :, 0]
        want = torch.tensor([(i * gh) // ho for i in range(ho)], dtype=torch.float32)
        if not torch.equal(up, want):
            bad.append((s, ho))
    return bad


def test_upsample_rule_every_small_map():
    """mask3 pixel i belongs to cell floor(i*g/Ho), g = Ho // S, for every S and every map
    Ho <= 73 (inputs up to 292 at layer1). Beyond that PyTorch's float 'nearest'
    (floor(i * fp32(g/Ho))) and the integer rule part ways for some S (first: S=3, Ho=74)."""
    pairs = [(s, ho) for ho in range(1, 74) for s in range(1, ho + 1)]
    assert not _upsample_rule_breaks(pairs)


def test_upsample_rule_power_of_two_patches_large_maps():
    """S in {2, 4, 8} (the LAUDNet choices besides 7): the rule holds up to Ho = 256."""
    assert not _upsample_rule_breaks([(s, ho) for ho in range(74, 257) for s in (2, 4, 8)])


def test_mask3_follows_nearest_not_exact_floor():
    """Where the two rules part ways, mask3 is PyTorch's nearest (F.interpolate), and
    brute_mask3 computes that rule for every map up to 128."""
    assert _upsample_rule_breaks([(3, 74)]) == [(3, 74)]
    grid = torch.arange(24, dtype=torch.float32).view(1, 1, 24, 1)
    assert upsample_mask(grid, (74, 1))[0, 0, 37, 0] == 11  # floor(37 * 24 / 74) = 12
    for ho in range(1, 129):  # 118 of these (S, Ho) pairs part ways
        for s in range(1, ho + 1):
            g = torch.arange(ho // s, dtype=torch.float32).view(1, 1, -1, 1)
            assert torch.equal(brute_mask3(g, (ho, 1)), upsample_mask(g, (ho, 1))), (s, ho)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("ho,wo,rate", [(1, 1, 1.0), (3, 5, 0.3), (6, 6, 0.0), (7, 4, 0.7)])
def test_mask1_random_masks(ho, wo, rate, stride):
    g = torch.Generator().manual_seed(ho * wo)
    mask3 = (torch.rand(2, 1, ho, wo, generator=g) < rate).float()
    for trim in (0, 1) if stride == 2 else (0,):
        hw = (ho * stride - trim, wo * stride - trim)
        assert torch.equal(expand_mask1(mask3, stride, hw), brute_mask1(mask3, stride, hw))


_MASK = torch.ones(2, 1, 4, 4)


@pytest.mark.parametrize("call,match", [
    (lambda: upsample_mask(_MASK, (0, 8)), r"upsample_mask: out_hw must be a pair of ints"),
    (lambda: upsample_mask(_MASK, 8), r"out_hw must be a pair .* got 8"),
    (lambda: upsample_mask(_MASK, (8.5, 8)), r"out_hw must be a pair .* got \(8.5, 8\)"),
    (lambda: upsample_mask(_MASK, (True, 8)), r"out_hw must be a pair"),
    (lambda: upsample_mask(torch.ones(2, 3, 4, 4), (8, 8)),
     r"upsample_mask: grid_mask must be a \[B, 1, h, w\] tensor, got \(2, 3, 4, 4\)"),
    (lambda: upsample_mask(_MASK[0], (8, 8)), r"grid_mask must be a \[B, 1, h, w\]"),
    (lambda: expand_mask1(_MASK, 0, (4, 4)), r"expand_mask1: stride must be an int >= 1, got 0"),
    (lambda: expand_mask1(_MASK, True, (4, 4)), r"stride must be an int >= 1, got True"),
    (lambda: expand_mask1(_MASK, 1.5, (8, 8)), r"stride must be an int >= 1, got 1.5"),
    (lambda: expand_mask1(_MASK, 1, (0, 4)), r"expand_mask1: in_hw must be a pair"),
    (lambda: expand_mask1(_MASK, 2, (2, 2)),
     r"mask2 is 4x4, but a 3x3 convolution at stride 2 on in_hw 2x2 gives 1x1"),
    (lambda: expand_mask1(_MASK, 1, (5, 4)), r"on in_hw 5x4 gives 5x4"),
    (lambda: expand_mask1(torch.ones(2, 3, 4, 4), 1, (4, 4)), r"mask2 must be a \[B, 1"),
    (lambda: upsample_mask(_MASK, np.array([8.0, 8.0])), r"out_hw must be a pair"),
    (lambda: upsample_mask(_MASK, torch.tensor([8, 8, 8])), r"out_hw must be a pair"),
    (lambda: expand_mask1(_MASK, torch.tensor(2.0), (8, 8)), r"stride must be an int >= 1"),
])
def test_mask_helpers_refuse_bad_arguments(call, match):
    """Bad sizes, strides and masks are refused with the argument named; before, a mask of
    three channels was upsampled, stride True or an in_hw of another map's size gave a
    mask of the wrong pixels, and other values raised torch's own errors."""
    with pytest.raises(ValueError, match=match):
        call()


def test_mask_helpers_take_numpy_ints_and_sizes():
    """The sizes a caller computes with numpy, or reads off a tensor, are taken, as they
    were before the checks: numpy ints, torch.Size, integer arrays and tensors of two,
    a 0-d integer tensor stride."""
    g = torch.ones(1, 1, 2, 2)
    m = upsample_mask(g, (np.int64(8), np.int32(8)))
    assert m.shape == (1, 1, 8, 8)
    assert expand_mask1(m, np.int64(2), torch.Size([15, 16])).shape == (1, 1, 15, 16)
    for size in (np.array([8, 8]), torch.tensor([8, 8]), [8, 8]):
        assert torch.equal(upsample_mask(g, size), m)
    assert torch.equal(expand_mask1(m, torch.tensor(2), np.array([15, 16])),
                       expand_mask1(m, 2, (15, 16)))


@pytest.mark.parametrize("mode", ["spatial", "both"])
def test_a_block_exports_with_dynamic_sizes(mode):
    """torch.export (non-strict) hands the map sides to the mask helpers as SymInts,
    which the size checks refused at first."""
    from torch.export import Dim

    block = make_block(16, 4, 2, mode=mode, granularity=2).eval()
    x = torch.randn(2, 16, 9, 9)
    ep = torch.export.export(block, (x,),
                             dynamic_shapes=({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},))
    x5 = torch.randn(5, 16, 9, 9)
    assert_close(ep.module()(x5), block(x5))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("s", [1, 2, 4, 7, 8])
def test_spatial_block_output(s, stride):
    """Output = reference with the mask; inactive pixels are relu(identity) exactly."""
    ho = wo = max(s, 2) * 2 + (1 if s > 1 else 0)  # 2 or 3 cells per side, uneven for S > 1
    h, w = ho * stride, wo * stride
    block = spatial_block(s, stride, seed=s)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 8, h, w, generator=g)
    with torch.no_grad():
        out = block(x)
    m = block.last_masks
    assert 0 < int(m.grid.sum()) < m.grid.numel(), "want a mixed mask"
    assert_close(out, reference_block(block, x, mask3=m.mask3))
    check_inactive_is_relu_identity(block, x, out, m.mask3)


# ------------------------------------------------------------------------------ layer mode


@pytest.mark.parametrize("stride", [1, 2])
def test_layer_gate(stride):
    """One decision per sample; a skipped sample outputs relu(identity) exactly."""
    block = make_block(8, 3, stride=stride, mode="layer", seed=3)
    steer_spatial(block)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, 9, 10, generator=g)
    keep = torch.tensor([True, False, False, True])
    x[:, 0] = torch.where(keep[:, None, None], x[:, 0].abs() + 0.1, -x[:, 0].abs() - 0.1)
    with torch.no_grad():
        out = block(x)
    m = block.last_masks
    ho, wo = block.out_hw((9, 10))
    assert m.grid.shape == (4, 1, 1, 1)
    assert torch.equal(m.grid.flatten(), keep.float())
    assert torch.equal(m.mask3, keep.float().view(4, 1, 1, 1).expand(4, 1, ho, wo))
    assert torch.equal(m.mask1, keep.view(4, 1, 1, 1).expand(4, 1, 9, 10))
    assert block.last_stats.rate3.item() == pytest.approx(0.5)
    assert_close(out, reference_block(block, x, mask3=m.mask3))
    check_inactive_is_relu_identity(block, x, out, m.mask3)
    # the kept samples are the plain dense block
    assert_close(out[keep], reference_block(block, x[keep]))


def test_layer_gate_ignores_granularity():
    block = make_block(8, 3, mode="layer", granularity=4)
    assert block.grid_size((3, 3)) == (1, 1)  # a map smaller than S is fine for a gate


# ---------------------------------------------------------------------------- channel mode


def _capture_inputs(block):
    seen = {}
    hooks = [
        getattr(block, n).register_forward_pre_hook(
            lambda mod, args, n=n: seen.__setitem__(n, args[0].detach().clone()))
        for n in ("conv2", "conv3")
    ]
    return seen, hooks


def test_channel_mask_before_bn_hand_built():
    """Width 2, two groups of one channel; group 1 off. The official order (mask before
    BN) makes channel 1 carry kappa1 = relu(bn1(0)) = 0.7 into conv2 and
    kappa2 = relu(bn2(0)) = 0.4 into conv3, not zero."""
    block = make_block(4, 2, mode="channel", channel_granularity=1,
                       channel_masker_layers=1, downsample=True, seed=5)
    with torch.no_grad():
        for bn, bias in ((block.bn1, [0.3, 0.7]), (block.bn2, [-0.2, 0.4])):
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.tensor(bias))
    steer_channel(block, [1, 0])
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 5, 6, generator=g)
    seen, hooks = _capture_inputs(block)
    with torch.no_grad():
        out = block(x)
    for hk in hooks:
        hk.remove()
    assert torch.equal(block.last_masks.channel, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(seen["conv2"][:, 1], torch.full((2, 5, 6), 0.7), atol=1e-7, rtol=0)
    assert torch.allclose(seen["conv3"][:, 1], torch.full((2, 5, 6), 0.4), atol=1e-7, rtol=0)

    # by hand, float64: the active channel follows the dense path, channel 1 is constant
    d = torch.float64
    x64 = x.to(d)
    eps = block.bn1.eps  # bn(v) = v / sqrt(1 + eps) + bias with mean 0, var 1, weight 1
    t1 = F.relu(F.conv2d(x64, block.conv1.weight.to(d))[:, :1] / (1 + eps) ** 0.5 + 0.3)
    a1 = torch.cat([t1, torch.full_like(t1, 0.7)], dim=1)
    t2 = F.conv2d(a1, block.conv2.weight.to(d), padding=1)[:, :1]
    a2 = torch.cat([F.relu(t2 / (1 + eps) ** 0.5 - 0.2), torch.full_like(t1, 0.4)], dim=1)
    conv, bn = block.downsample
    want = F.relu(bn64(block.bn3, F.conv2d(a2, block.conv3.weight.to(d)))
                  + bn64(bn, F.conv2d(x64, conv.weight.to(d))))
    assert_close(out, want)
    # and the "mask after BN" reading (inactive channel carries zero) is different
    a2_zero = a2.clone()
    a2_zero[:, 1] = 0
    wrong = F.relu(bn64(block.bn3, F.conv2d(a2_zero, block.conv3.weight.to(d)))
                   + bn64(bn, F.conv2d(x64, conv.weight.to(d))))
    assert (wrong - want).abs().max() > 1e-3


@pytest.mark.parametrize("masker,layers", [("MLP", 1), ("MLP", 2), ("conv_linear", 2)])
def test_channel_groups_are_contiguous(masker, layers):
    """Width 8, group size 2: groups [1, 0, 0, 1] keep channels 0,1,6,7; the others carry
    kappa1 / kappa2 (random BN statistics) into conv2 / conv3."""
    block = make_block(16, 8, mode="channel", channel_granularity=2, channel_masker=masker,
                       channel_masker_layers=layers, channel_masker_reduction=4, seed=9)
    steer_channel(block, [1, 0, 0, 1])
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 16, 7, 5, generator=g)
    seen, hooks = _capture_inputs(block)
    with torch.no_grad():
        out = block(x)
    for hk in hooks:
        hk.remove()
    cmask = block.last_masks.channel
    assert torch.equal(cmask, torch.tensor([[1.0, 0, 0, 1]]).expand(3, 4))
    off = [2, 3, 4, 5]
    for name, bn in (("conv2", block.bn1), ("conv3", block.bn2)):
        kappa = F.relu(bn64(bn, torch.zeros(1, 8, 1, 1, dtype=torch.float64)))[0, :, 0, 0]
        got = seen[name][:, off].double()
        assert torch.allclose(got, kappa[off].view(1, 4, 1, 1).expand_as(got), atol=1e-6)
    assert (F.relu(bn64(block.bn1, torch.zeros(1, 8, 1, 1, dtype=torch.float64)))[0, off] > 0).any()
    assert_close(out, reference_block(block, x, channel=cmask))


def test_channel_mask_per_sample():
    """Different samples get different channel masks (the masker reads the input)."""
    block = make_block(16, 8, mode="channel", channel_granularity=4, channel_masker_layers=1,
                       seed=11)
    lin = block.masker_channel.last_linear()
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[0, 0] = 1.0  # group 0 keep logit = mean of input channel 0
        lin.bias[1] = 1.0  # group 1 always on
    x = torch.randn(2, 16, 6, 6)
    x[0, 0] = 1.0
    x[1, 0] = -1.0
    with torch.no_grad():
        out = block(x)
    cmask = block.last_masks.channel
    assert torch.equal(cmask, torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    assert block.last_stats.channel_rate.item() == pytest.approx(0.75)
    assert_close(out, reference_block(block, x, channel=cmask))


# --------------------------------------------------------------------------------- both


@pytest.mark.parametrize("stride", [1, 2])
def test_both_masks(stride):
    block = make_block(16, 8, stride=stride, mode="both", granularity=2, channel_granularity=2,
                       channel_masker_layers=1, seed=13)
    steer_spatial(block)
    steer_channel(block, [0, 1, 1, 0])
    g = torch.Generator().manual_seed(6)
    h = 6 * stride - (stride - 1)
    x = torch.randn(2, 16, h, h + stride, generator=g)
    with torch.no_grad():
        out = block(x)
    m = block.last_masks
    assert m.grid is not None and m.channel is not None
    ho, wo = block.out_hw(tuple(x.shape[-2:]))
    assert torch.equal(m.mask3, brute_mask3(m.grid, (ho, wo)))
    assert torch.equal(m.mask1, brute_mask1(m.mask3, stride, tuple(x.shape[-2:])))
    assert 0 < int(m.grid.sum()) < m.grid.numel()
    assert_close(out, reference_block(block, x, mask3=m.mask3, channel=m.channel))
    check_inactive_is_relu_identity(block, x, out, m.mask3)


# ----------------------------------------------------------------------- determinism


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer", "both"])
def test_eval_is_deterministic(mode):
    block = make_block(16, 4, mode=mode, granularity=2, seed=1)
    with torch.no_grad():
        block.masker_spatial is not None and block.masker_spatial.conv.bias.zero_()
    x = torch.randn(2, 16, 8, 8)
    torch.manual_seed(1)
    with torch.no_grad():
        a = block(x)
        ma = block.last_masks
    torch.manual_seed(2)
    with torch.no_grad():
        b = block(x)
        mb = block.last_masks
    assert torch.equal(a, b)
    for f in ("grid", "mask3", "mask1", "channel"):
        u, v = getattr(ma, f), getattr(mb, f)
        assert (u is None and v is None) or torch.equal(u, v)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,match", [
    (dict(dyn_mode="sparse"), r"dyn_mode.*'sparse'"),
    (dict(granularity=0), r"granularity.*0"),
    (dict(granularity=-2), r"granularity.*-2"),
    (dict(channel_granularity=3), r"channel_granularity 3.*width 8"),
    (dict(channel_granularity=0), r"channel_granularity 0"),
    (dict(channel_masker="attention"), r"channel_masker.*'attention'"),
    (dict(dyn_mode="channel", channel_masker_layers=3), r"channel_masker_layers.*3"),
    (dict(granularity=8, feature_size=7), r"granularity 8.*7x7"),
    (dict(granularity=4, feature_size=(8, 3)), r"granularity 4.*8x3"),
    (dict(granularity=2, feature_size=0), r"feature_size 0 must be a positive int"),
    (dict(granularity=2, feature_size=8.0), r"feature_size 8.0 must be a positive int"),
    (dict(granularity=2, feature_size=(8, 8, 8)), r"feature_size \(8, 8, 8\) must be"),
    (dict(dyn_mode="channel", feature_size=(8, -1)), r"feature_size \(8, -1\) must be"),
    # was accepted, and the first forward failed calling it
    (dict(downsample="conv"), r"downsample must be an nn.Module or None, got str"),
    (dict(dyn_mode="channel", channel_masker_layers="2"),  # was printed as 2
     r"channel_masker_layers must be 1 or 2, got '2'"),
    # the block's name for the masker's argument (the masker says "reduction")
    (dict(dyn_mode="both", channel_masker="conv_linear", channel_masker_reduction=32),
     r"^channel_masker_reduction 32 leaves no channel of 16$"),
])
def test_block_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LaudBottleneck(16, 8, **kwargs)


def test_block_bad_input():
    block = make_block(8, 2, granularity=4)
    with pytest.raises(ValueError, match=r"4D input.*\(8, 6, 6\)"):
        block(torch.randn(8, 6, 6))
    with pytest.raises(ValueError, match=r"8 input channels, got 5"):
        block(torch.randn(1, 5, 6, 6))
    with pytest.raises(ValueError, match=r"granularity 4.*3x6"):
        block(torch.randn(1, 8, 3, 6))
    # not a tensor, or not of the block's dtype: named (were an AttributeError on
    # x.dim and a RuntimeError inside conv1)
    with pytest.raises(ValueError, match=r"4D input tensor .*, got ndarray"):
        block(np.zeros((1, 8, 6, 6), np.float32))
    with pytest.raises(ValueError, match=r"x is torch.int64; the model is torch.float32"):
        block(torch.zeros(1, 8, 6, 6, dtype=torch.int64))
    assert block(torch.randn(1, 8, 4, 6)).shape == (1, 8, 4, 6)


@pytest.mark.parametrize("inplanes,planes,stride", [
    (1, 4, 1),    # [B, 1, H, W] was broadcast over the 16 output channels: no error
    (16, 4, 2),   # torch's "size of tensor a ... must match" in forward
    (16, 8, 1),
])
def test_block_without_downsample_needs_an_identity_of_the_output_shape(inplanes, planes,
                                                                        stride):
    with pytest.raises(ValueError, match=rf"downsample is None.*got stride {stride}, "
                                         rf"inplanes {inplanes}"):
        LaudBottleneck(inplanes, planes, stride, None, "spatial", 1)
    # with a downsample that maps the input to the output's shape, the same block is fine
    ds = torch.nn.Conv2d(inplanes, 4 * planes, 1, stride=stride)
    out = LaudBottleneck(inplanes, planes, stride, ds, "spatial", 1).eval()(
        torch.randn(2, inplanes, 8, 8))
    assert out.shape == (2, 4 * planes, 8 // stride, 8 // stride)
    # and a downsample set to None after the block was built: refused in forward
    block = LaudBottleneck(inplanes, planes, stride, ds, "spatial", 1).eval()
    block.downsample = None
    with pytest.raises(ValueError, match=rf"downsample is None.*got stride {stride}, "
                                         rf"inplanes {inplanes}"):
        block(torch.randn(2, inplanes, 8, 8))


def test_upsample_mask_refuses_a_map_smaller_than_the_grid():
    """It returned a nearest down-sample: the one active cell of a 4x4 grid vanished from
    a 2x2 'mask3'."""
    g = torch.zeros(1, 1, 4, 4)
    g[0, 0, 1, 1] = 1
    with pytest.raises(ValueError, match=r"out_hw \(2, 2\) is smaller than the mask grid 4x4"):
        upsample_mask(g, (2, 2))
    with pytest.raises(ValueError, match=r"out_hw \(4, 3\) is smaller"):
        upsample_mask(g, (4, 3))
    assert torch.equal(upsample_mask(g, (4, 4)), g)  # equal sizes: the grid itself


def test_spatial_masker_refuses_a_grid_larger_than_its_input():
    """adaptive_avg_pool2d upsampled the 4x4 input to a 16x16 'mask' in silence."""
    from laudtriton.nn.maskers import MaskerSpatial

    masker = MaskerSpatial(8).eval()
    x = torch.randn(1, 8, 4, 4)
    with pytest.raises(ValueError, match=r"grid \(16, 16\) is larger than the input's map "
                                         r"\(4, 4\)"):
        masker(x, (16, 16))
    with pytest.raises(ValueError, match=r"grid \(4, 5\)"):
        masker.logits(x, (4, 5))
    mask, _ = masker(x, (2, 2))
    assert mask.shape == (1, 1, 2, 2)


def test_eval_masks_keep_where_the_logits_tie():
    """In eval a mask cell or channel group is kept where its keep and drop logits are
    equal (keep >= drop, the rule the Triton masker kernels and ``kernelchecks`` use):
    maskers whose weights and biases are zero keep everything, not nothing."""
    from laudtriton.nn.maskers import MaskerChannelMLP, MaskerSpatial

    x = torch.randn(2, 8, 4, 4)
    spatial = MaskerSpatial(8).eval()
    channel = MaskerChannelMLP(8, groups=4, layers=1).eval()
    with torch.no_grad():
        for p in (*spatial.parameters(), *channel.parameters()):
            p.zero_()
    mask, _ = spatial(x, (2, 2))
    assert torch.equal(mask, torch.ones(2, 1, 2, 2))
    mask, _ = channel(x)
    assert torch.equal(mask, torch.ones(2, 4))


def test_fresh_maskers_start_with_the_official_biases():
    """The official initialisation, which makes training start dense: the spatial
    masker's keep logit bias is +5, and a channel masker's last linear has keep biases +2
    and drop biases -2 (from the second drop logit on: the official code sets
    bias[G + 1:])."""
    from laudtriton.nn.maskers import MaskerChannelConvLinear, MaskerChannelMLP, MaskerSpatial

    torch.manual_seed(0)
    assert MaskerSpatial(8).conv.bias[0].item() == 5.0
    for masker in (MaskerChannelMLP(16, 4, layers=1), MaskerChannelMLP(16, 4, layers=2),
                   MaskerChannelConvLinear(16, 4, reduction=4)):
        bias = masker.last_linear().bias
        assert bias[:4].tolist() == [2.0] * 4
        assert bias[5:].tolist() == [-2.0] * 3
