"""The CUDA spatial variants ``fused`` and ``masked`` end to end under the interpreter,
against the reference block (DESIGN.md section 2)."""

import pytest
import torch

from laudtriton.kernels import gather_conv
from laudtriton.nn import calibrate_block
from laudtriton.nn.block import BlockMasks
from laudtriton.ops import registry
from laudtriton.ops import triton_spatial as ts
from laudtriton.ops.fold import fold_block
from laudtriton.ops.spec import BlockSpec
from laudtriton.ops.synthetic import synthetic_masks
from laudtriton.testing import assert_close, make_block, reference_on_masks

TINY = {s: dict(block_m=16, block_n=16, block_k=16, num_warps=1, num_stages=1)
        for s in ts.STAGES}
RUNS = {"fused": ts.run_fused, "masked": ts.run_masked}


def _case(inplanes, stride, rate, granularity=2, hw=(7, 9), batch=2):
    block = make_block(inplanes, 4, stride, mode="spatial", granularity=granularity)
    x = torch.randn(batch, inplanes, *hw)
    calibrate_block(block, x, rate)
    with torch.no_grad():
        ref = block(x)
        masks, _ = block.compute_masks(x)
    return block, x.contiguous(memory_format=torch.channels_last), masks, ref


@pytest.mark.parametrize("variant", ["fused", "masked"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_variant_matches_reference(variant, stride, rate):
    block, x, masks, ref = _case(16, stride, rate)
    if 0 < rate < 1:  # the case is not degenerate: some cells on, some off
        assert 0 < masks.grid.mean().item() < 1
    out = RUNS[variant](fold_block(block), x, masks, TINY)
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close(out, ref)


@pytest.mark.parametrize("variant", ["fused", "masked"])
@pytest.mark.parametrize("stride,s,hw,batch,rate", [
    (1, 1, (9, 7), 1, 0.5), (2, 1, (9, 7), 3, 0.5), (1, 1, (9, 7), 1, 0.0),
    (2, 1, (9, 7), 3, 1.0), (1, 2, (8, 10), 1, 0.5), (2, 2, (12, 8), 3, 0.5),
    (1, 4, (8, 12), 1, 0.5), (2, 4, (15, 16), 3, 0.5), (2, 4, (15, 16), 3, 0.0),
    (1, 4, (8, 12), 1, 1.0), (1, 7, (14, 14), 3, 0.5), (2, 7, (27, 29), 3, 0.5),
    (1, 8, (16, 24), 1, 0.5), (2, 8, (32, 32), 3, 0.5),
])
def test_cells_strides_batches_and_rates(variant, stride, s, hw, batch, rate):
    """S = 1, 2, 4, 7, 8 at stride 1 and 2 (S = 7 at 27x29: a map S does not divide;
    9x7 and 15x16 at stride 2: odd input sizes), batch 1 and 3 with different masks per
    sample, rates 0, 0.5 and 1 (at 0.5 some cells on and some off: S = 8 at 16x16 in, a
    1x1 grid at batch 1 calibrated to 0.5, was all off, and no kernel ran)."""
    block, x, masks, ref = _case(16, stride, rate, granularity=s, hw=hw, batch=batch)
    assert masks.grid.mean().item() == rate if rate in (0.0, 1.0) else \
        0 < masks.grid.mean().item() < 1
    if batch > 1 and 0 < rate < 1:
        assert any(not torch.equal(masks.grid[0], g) for g in masks.grid[1:])
    assert_close(RUNS[variant](fold_block(block), x, masks, TINY), ref)


@pytest.mark.parametrize("variant", ["fused", "masked"])
def test_downsample_at_stride_1_and_uneven_cells(variant):
    # Cin 8 != Cout 16: the identity is the dense downsample; S=3 does not divide 7 or 9-1
    block, x, masks, ref = _case(8, 1, 0.5, granularity=3, hw=(7, 8))
    out = RUNS[variant](fold_block(block), x, masks, TINY)
    assert_close(out, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types(dtype):
    block, x, masks, ref = _case(16, 2, 0.5)
    fb = fold_block(block, dtype=dtype)
    out = ts.run_masked(fb, x.to(dtype), masks, TINY)
    assert out.dtype == dtype
    assert_close(out, ref.to(dtype))


def test_default_config_and_empty_config(launched):
    """No config, or none for a stage: that stage launches its kernel's default for the
    input's dtype (float32: the 32-row tile, which does not spill; docs/kernels.md)."""
    block, x, masks, ref = _case(16, 1, 0.5, hw=(4, 5))
    fb = fold_block(block)
    assert_close(ts.run_fused(fb, x, masks, {}), ref)
    assert_close(ts.run_masked(fb, x, masks, None), ref)
    from laudtriton.kernels import conv1x1_residual, conv3x3

    seen = launched.patch(gather_conv, conv3x3, conv1x1_residual)
    ts.run_masked(fb, x, masks, {"conv2": TINY["conv2"]})
    fp32, tiny = gather_conv.DEFAULT_FP32, gather_conv.TileConfig(**TINY["conv2"])
    for mod, cfg in ((gather_conv, fp32), (conv3x3, tiny), (conv1x1_residual, fp32)):
        assert seen[mod.__name__] == {launched.of_config(cfg)}, mod.__name__


def test_bad_config_and_masks():
    block, x, masks, _ = _case(16, 1, 0.5, hw=(4, 5))
    fb = fold_block(block)
    with pytest.raises(ValueError, match="conv4"):
        ts.run_fused(fb, x, masks, {"conv4": {}})
    with pytest.raises(ValueError, match="mask3 and mask1"):
        ts.run_masked(fb, x, type(masks)(None, None, None, None), {})


@pytest.mark.parametrize("variant", ["fused", "masked"])
def test_masks_that_do_not_fit_x_are_refused(variant):
    """The kernels index the conv1 buffer and the output by the masks' positions: masks
    of another batch or map wrote out of bounds (heap corruption) or left a sample
    unwritten."""
    block, x, masks, _ = _case(16, 1, 0.5, hw=(6, 6), batch=2)
    fb = fold_block(block)

    def batch(keep):
        return BlockMasks(*(getattr(masks, f)[keep] for f in ("grid", "mask3", "mask1")),
                          None)

    with pytest.raises(ValueError, match=r"masks.grid has shape \(3, 1"):
        RUNS[variant](fb, x, batch([0, 1, 0]), TINY)
    with pytest.raises(ValueError, match=r"masks.grid has shape \(1, 1"):
        RUNS[variant](fb, x, batch([0]), TINY)
    _, _, masks8, _ = _case(16, 1, 0.5, hw=(8, 8), batch=2)
    with pytest.raises(ValueError, match=r"masks.mask3 has shape \(2, 1, 8, 8\)"):
        RUNS[variant](fb, x, masks8, TINY)
    with pytest.raises(ValueError, match=f"^{variant}: x has 8 channels"):
        RUNS[variant](fb, x[:, :8], masks, TINY)


def test_registration():
    spec = BlockSpec(256, 64, 256, 1, False, (56, 56), "spatial", granularity=4, batch=8,
                     dtype="float16")
    names = [v.name for v in registry.variants_for(spec, "cuda")]
    assert "fused" in names and "masked" in names
    assert "fused" not in [v.name for v in registry.variants_for(spec, "cpu")]
    assert "fused" not in [v.name for v in
                           registry.variants_for(spec.with_(mode="channel"), "cuda")]
    for name in ("fused", "masked"):
        v = registry.get_variant(name)
        assert v.needs_triton and v.modes == ("spatial",) and v.backends == ("cuda",)
        space = v.configs(spec)
        assert space and all(set(c) == set(ts.STAGES) for c in space)


def test_config_space_is_the_kernel_space():
    kernel = {tuple(c.to_dict().values()) for c in gather_conv.configs()}
    assert {tuple(t) for t in ts._SPACE} == kernel


def test_cost_grows_with_rate():
    spec = BlockSpec(512, 128, 512, 2, True, (56, 56), "spatial", granularity=4, batch=4)
    costs = [ts.spatial_cost(spec, r) for r in (0.0, 0.25, 0.5, 1.0)]
    assert all(a.flops < b.flops and a.bytes < b.bytes for a, b in zip(costs, costs[1:]))
    # at rate 1 the convolutions are the dense block's (downsample included)
    assert costs[-1].flops == pytest.approx(spec.dense_flops())
    assert costs[0].flops == spec.batch * 512 * 512 * 28 * 28  # only the downsample


def _scale_w2_w3(block, fb, f2=-0.5, f3=1.5):
    """conv2 and conv3 scaled in place (no bias: their folded weights scale alike)."""
    with torch.no_grad():
        block.conv2.weight.mul_(f2)
        block.conv3.weight.mul_(f3)
        fb.w2.mul_(f2)
        fb.w3.mul_(f3)


@pytest.mark.parametrize("variant", ["fused", "masked"])
@pytest.mark.parametrize("stride", [1, 2])
def test_spatial_variants_follow_weight_edits(variant, stride):
    """The HWIO copy of w2 that the variants cache on the FoldedBlock is made again when
    ``FoldedBlock.fingerprint`` changes: a cache keyed without it passed every other
    kernel test (mutation audit, session 47)."""
    block = make_block(16, 4, stride, mode="spatial", granularity=2, seed=stride)
    x = torch.randn(2, 16, 8, 10, generator=torch.Generator().manual_seed(3))
    masks = synthetic_masks(BlockSpec.from_block(block, x.shape), 0.5, seed=1)
    fb = fold_block(block)
    xc = x.contiguous(memory_format=torch.channels_last)
    assert_close(RUNS[variant](fb, xc, masks, TINY), reference_on_masks(block, x, masks))
    _scale_w2_w3(block, fb)
    assert_close(RUNS[variant](fb, xc, masks, TINY), reference_on_masks(block, x, masks),
                 name=f"{variant} after an in-place edit of w2 and w3")


def test_cost_by_hand_at_stride_2_with_the_downsample_and_in_half_types():
    """fused/masked at rate r: conv1 on r1 = min(1, r·((S−1)·s+3)²/(S·s)²) of the input
    (the halo of isolated S x S cells), conv2 and conv3 on r of the output, the dense
    downsample; bytes of the gathered rows, the zero-filled buffer, conv2's rows, identity
    and output (prefill, then the active pixels again), the downsample's input and output,
    the weights (2 per element in half types, 4 in float32) and the int32 index lists
    (read, scanned and written for mask1 and mask3); 10 launches, 11 with the downsample."""
    from laudtriton.ops.registry import Cost

    spec = BlockSpec(16, 8, 32, 2, True, (8, 8), "spatial", 2, batch=2)  # 8x8 -> 4x4
    r1, r3 = 0.5 * 25 / 16, 0.5  # a 2x2 cell at stride 2 reads 5x5 of 4x4 input pixels
    flops = 2 * (16 * 8 * 64 * r1 + 9 * 8 * 8 * 16 * r3 + 8 * 32 * 16 * r3 + 16 * 32 * 16)
    act = 2 * (16 * 64 * r1 + 10 * 10 * 8 + 8 * 64 * r1 + 2 * 8 * 16 * r3 + 2 * 32 * 16
               + 2 * 32 * 16 * r3 + 16 * 64 + 32 * 16)
    wts = 16 * 8 + 9 * 8 * 8 + 8 * 32 + 16 * 32
    idx = 4 * 2 * (64 + 16) * 3
    for name in ("fused", "masked"):
        cost = registry.get_variant(name).cost
        assert cost(spec, 0.5) == Cost(flops, 4.0 * (act + wts) + idx, 11)
        assert cost(spec.with_(dtype="float16"), 0.5).bytes == 2.0 * (act + wts) + idx
        plain = cost(spec.with_(stride=1, downsample=False, in_channels=32), 1.0)
        assert plain.launches == 10 and plain.flops == pytest.approx(
            2 * (32 * 8 * 64 + 9 * 8 * 8 * 64 + 8 * 32 * 64))


def test_fused_and_masked_claim_only_the_strides_and_dtypes_of_their_kernels():
    """The 3x3 kernel takes stride 1 or 2 and the kernels fp32, fp16 and bf16: a stride-3
    or float64 spec (which ``gather`` runs) must not list them, else every timing of
    theirs fails."""
    spec = BlockSpec(64, 16, 64, 1, False, (8, 8), "spatial", 2)
    for name in ("fused", "masked"):
        supports = registry.get_variant(name).supports
        assert supports(spec) and supports(spec.with_(stride=2))
        assert supports(spec.with_(dtype="bfloat16"))
        assert not supports(spec.with_(stride=3))
        assert not supports(spec.with_(dtype="float64"))
    assert registry.get_variant("gather").supports(spec.with_(stride=3, dtype="float64"))


def test_config_space_of_a_narrow_block_keeps_the_64_wide_tiles():
    """Only N tiles wider than 64 and than the block's channels are dropped: a block of
    width 8 and 32 output channels keeps the three 64-wide tiles (dropping every tile
    wider than its channels left no config, and the sweep never timed fused or masked)."""
    spec = BlockSpec(32, 8, 32, 1, False, (8, 8), "spatial", 2)
    assert [c["conv1"]["block_n"] for c in ts.spatial_configs(spec)] == [64, 64, 64]
    wide = spec.with_(in_channels=256, width=64, out_channels=256)
    assert [c["conv3"]["block_n"] for c in ts.spatial_configs(wide)] == [64, 64, 64, 128]


@pytest.mark.parametrize("variant", ["fused", "masked"])
def test_masks_of_a_both_block_are_refused(variant, both_case):
    """A 'both' block's masks carry a channel mask too: the kernels have no channel lists
    and no κ correction, and ran the spatial masks alone (max error 0.55 of max|ref| 4.1
    on this block), silently. The variant the message names computes the reference."""
    fb, xc, masks, ref = both_case
    with pytest.raises(ValueError, match=f"^{variant}: masks.channel is set .*'gather'"):
        RUNS[variant](fb, xc, masks, TINY)
    assert_close(registry.get_variant("gather").run(fb, xc, masks, None), ref)
