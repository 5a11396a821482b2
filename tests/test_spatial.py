"""Spatial variants ``gather`` and ``patch`` (modes spatial and both) against the reference
LAUD bottleneck in eval mode (DESIGN.md sections 2 and 3)."""

import copy
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from laudtriton.nn.block import BlockMasks
from laudtriton.nn.calibrate import calibrate_block
from laudtriton.nn.maskers import expand_mask1, upsample_mask
from laudtriton.ops import packed, rows, spatial
from laudtriton.ops.dense import dense_block
from laudtriton.ops.fold import fold_block
from laudtriton.ops.packed import onednn_fusion_available
from laudtriton.ops.registry import get_variant, variants_for
from laudtriton.ops.spec import BlockSpec
from laudtriton.ops.synthetic import synthetic_masks
from laudtriton.testing import assert_close, make_block, reference_on_masks

CL = torch.channels_last

# (Cin, planes, stride, S, (H, W), batch); Cin != 4·planes or stride 2 gives a downsample.
CASES = [
    (32, 8, 1, 1, (9, 7), 1),
    (32, 8, 1, 2, (8, 10), 3),
    (32, 8, 1, 4, (8, 8), 1),
    (32, 8, 1, 4, (16, 12), 3),  # patch at S = 4 with different masks per sample
    (32, 8, 1, 7, (14, 21), 3),
    (32, 8, 1, 8, (16, 8), 1),
    (32, 8, 1, 4, (13, 11), 3),  # S divides neither 13 nor 11: cells of unequal size
    (16, 8, 2, 2, (13, 11), 3),  # stride 2 + downsample, output 7x6, unequal cells
    (16, 8, 2, 2, (12, 8), 3),   # stride 2 + downsample, uniform 2x2 cells
    (16, 8, 2, 4, (15, 16), 1),  # stride 2, odd H, uniform 4x4 cells
    (16, 8, 2, 1, (9, 7), 3),    # stride 2, S = 1
    (16, 8, 2, 7, (27, 27), 3),  # stride 2, output 14x14, uniform 7x7 cells
    (16, 8, 2, 8, (31, 31), 3),  # stride 2, output 16x16, uniform 8x8 cells
]


def _uniform(stride, s, hw):
    ho, wo = (hw[0] - 1) // stride + 1, (hw[1] - 1) // stride + 1
    return ho % s == 0 and wo % s == 0


def _params():
    out = []
    for case in CASES:
        cin, planes, stride, s, hw, b = case
        for variant in ("gather", "patch", "dense"):
            if variant == "patch" and (s < 2 or not _uniform(stride, s, hw)):
                continue
            for mode in ("spatial", "both"):
                for rate in (0.0, 0.5, 1.0):
                    out.append(pytest.param(
                        variant, mode, rate, case,
                        id=f"{variant}-{mode}-r{rate}-{cin}x{planes}-s{stride}-S{s}-"
                           f"{hw[0]}x{hw[1]}-b{b}"))
    return out


@pytest.mark.parametrize("variant,mode,rate,case", _params())
@torch.no_grad()
def test_matches_reference_block(variant, mode, rate, case):
    cin, planes, stride, s, hw, b = case
    block = make_block(cin, planes, stride, mode, s, channel_granularity=2, seed=b + s)
    x = torch.randn(b, cin, *hw)
    if mode == "both":  # a per-sample offset: the channel masks differ per sample too
        x = x + 2 * torch.randn(b, cin, 1, 1)  # (the masker's initial bias would decide
        block.masker_channel.last_linear().bias.zero_()  # alone for every sample)
    calibrate_block(block, x, rate, channel_rate=0.5 if mode == "both" else None)
    ref = block(x)
    masks, _ = block.compute_masks(x)
    assert masks.grid.mean().item() == pytest.approx(rate, abs=0.5 / masks.grid.numel() + 1e-6)
    if b > 1 and 0 < rate < 1:  # the batch really has different masks per sample
        assert not torch.equal(masks.grid[0], masks.grid[1]) or not torch.equal(
            masks.grid[1], masks.grid[2])
    if b > 1 and mode == "both":
        assert any(not torch.equal(masks.channel[0], c) for c in masks.channel[1:])
    fb = fold_block(block)
    out = get_variant(variant).run(fb, x.contiguous(memory_format=CL), masks, {})
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=CL)
    assert_close(out, ref, name=f"{variant} {mode} rate {rate}")


def _inject(block, masks):
    """Make ``block`` use ``masks`` instead of its maskers (float64 reference)."""
    block.compute_masks = lambda x: (masks, 0.0)
    return block


@pytest.mark.parametrize("variant", ["gather", "patch", "dense"])
@pytest.mark.parametrize("channel", [[[1, 1, 1, 1], [0, 0, 0, 0], [0, 1, 1, 0]],
                                     [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
                                     [[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]])
@torch.no_grad()
def test_both_edge_channel_masks(variant, channel):
    """Samples with no active channel (conv3 sees only κ2), all channels, and mixes."""
    block = make_block(32, 8, 1, "both", 2, channel_granularity=2, seed=3)
    spec = BlockSpec(32, 8, 32, 1, False, (10, 6), "both", 2, 4, batch=3)
    m = synthetic_masks(spec, 0.5, seed=4)
    masks = BlockMasks(m.grid, m.mask3, m.mask1, torch.tensor(channel, dtype=torch.float32))
    x = torch.randn(3, 32, 10, 6)
    m64 = BlockMasks(m.grid.double(), m.mask3.double(), m.mask1, masks.channel.double())
    ref = _inject(block.double(), m64)(x.double())
    fb = fold_block(block, dtype=torch.float32)
    out = get_variant(variant).run(fb, x.contiguous(memory_format=CL), masks, {})
    assert_close(out, ref)


@pytest.mark.parametrize("variant", ["gather", "patch"])
@pytest.mark.parametrize("mode", ["spatial", "both"])
@pytest.mark.parametrize("stride,hw", [(1, (8, 12)), (2, (15, 7))])
@torch.no_grad()
def test_float64_matches_the_reference_tightly(variant, mode, stride, hw):
    """In float64 the fold, the κ corrections and the row gathers leave no rounding to
    hide behind: a 0.1% error in the κ1 taps of ``both`` passed the float32 bound."""
    block = make_block(16, 8, stride, mode, 2, channel_granularity=2, seed=7)
    spec = BlockSpec.from_block(block, (3, 16, *hw))
    m = synthetic_masks(spec, 0.5, seed=2)
    masks = BlockMasks(m.grid.double(), m.mask3.double(), m.mask1,
                       None if m.channel is None else m.channel.double())
    x = torch.randn(3, 16, *hw, dtype=torch.float64)
    ref = _inject(copy.deepcopy(block).double(), masks)(x)
    out = get_variant(variant).run(fold_block(block, dtype=torch.float64),
                                   x.contiguous(memory_format=CL), masks, {})
    assert out.dtype == torch.float64
    assert_close(out, ref, tol=1e-10, name=f"{variant} {mode}")


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    cin=st.sampled_from([8, 12, 32]), planes=st.sampled_from([4, 6, 8]),
    stride=st.sampled_from([1, 2]), s=st.integers(1, 5), h=st.integers(5, 15),
    w=st.integers(5, 15), b=st.integers(1, 3), rate=st.floats(0.15, 0.85),
    both=st.booleans(), seed=st.integers(0, 2**16),
)
@torch.no_grad()
def test_property_random_shapes_and_masks(cin, planes, stride, s, h, w, b, rate, both, seed):
    """Random shapes and random masks vs the reference block in float64. Rates 0 and 1
    are the CASES' (here a grid drawn all off would run no convolution: the first cell
    is turned on then)."""
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    s = min(s, ho, wo)
    mode = "both" if both else "spatial"
    block = make_block(cin, planes, stride, mode, s, channel_granularity=2, seed=seed)
    g = torch.Generator().manual_seed(seed)
    grid = (torch.rand(b, 1, ho // s, wo // s, generator=g) < rate).double()
    if not grid.any():
        grid.view(-1)[0] = 1.0
    mask3 = upsample_mask(grid, (ho, wo))
    mask1 = expand_mask1(mask3, stride, (h, w))
    channel = (torch.rand(b, planes // 2, generator=g) < 0.5).double() if both else None
    masks = BlockMasks(grid, mask3, mask1, channel)
    x = torch.randn(b, cin, h, w, generator=g)
    ref = _inject(block.double(), masks)(x.double())
    fb = fold_block(block, dtype=torch.float32)
    m32 = BlockMasks(grid.float(), mask3.float(), mask1,
                     None if channel is None else channel.float())
    xc = x.contiguous(memory_format=CL)
    assert_close(spatial.gather_block(fb, xc, m32), ref, name="gather")
    if s >= 2 and ho % s == 0 and wo % s == 0:
        assert_close(spatial.patch_block(fb, xc, m32), ref, name="patch")


@torch.no_grad()
def test_without_mkldnn_matches(monkeypatch):
    """The torch.addmm path (used off CPU fp32) gives the same result: no oneDNN row GEMM
    and no packed (bucketed) GEMM."""
    monkeypatch.setattr(rows, "_use_mkldnn", lambda t: False)
    monkeypatch.setattr(spatial, "_bucketed", lambda wt, a: False)
    calls, addmm = [], torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(1) or addmm(*a, **k))
    block = make_block(16, 8, 2, "spatial", 2, seed=7)
    x = torch.randn(2, 16, 12, 8)
    calibrate_block(block, x, 0.5)
    ref = block(x)
    masks, _ = block.compute_masks(x)
    fb = fold_block(block)
    calls.clear()
    out = spatial.gather_block(fb, x.contiguous(memory_format=CL), masks)
    assert_close(out, ref)
    assert_close(spatial.patch_block(fb, x.contiguous(memory_format=CL), masks), ref)
    assert calls  # the addmm path ran


@torch.no_grad()
def test_clustered_masks_match_the_reference():
    """Synthetic clustered masks: gather, patch and dense against the reference block
    (float64) running the same masks."""
    block = make_block(64, 16, 1, "spatial", 4, seed=11)
    spec = BlockSpec(64, 16, 64, 1, False, (16, 12), "spatial", 4, batch=2)
    masks = synthetic_masks(spec, 0.5, seed=2, clustered=True)
    fb = fold_block(block)
    x = torch.randn(2, 64, 16, 12).contiguous(memory_format=CL)
    m64 = BlockMasks(masks.grid.double(), masks.mask3.double(), masks.mask1, None)
    ref = _inject(copy.deepcopy(block).double(), m64)(x.double())
    assert_close(spatial.gather_block(fb, x, masks), ref)
    assert_close(spatial.patch_block(fb, x, masks), ref)
    assert_close(dense_block(fb, x, masks), ref)


def test_errors_name_the_argument():
    block = make_block(16, 4, 1, "spatial", 2)
    fb = fold_block(block)
    x = torch.randn(1, 16, 9, 9)
    masks, _ = block.compute_masks(x)
    with pytest.raises(ValueError, match="does not cut the output map 9x9"):
        spatial.patch_block(fb, x, masks)
    with pytest.raises(ValueError, match="x has 8 channels"):
        spatial.gather_block(fb, torch.randn(1, 8, 9, 9), masks)
    with pytest.raises(ValueError, match="mask3 has shape"):
        spatial.gather_block(fb, torch.randn(1, 16, 8, 8), masks)
    with pytest.raises(ValueError, match="need masks.grid"):
        spatial.gather_block(fb, x, BlockMasks(None, None, None, None))
    with pytest.raises(ValueError, match="x is torch.float64"):
        spatial.gather_block(fb, x.double(), masks)


def test_bad_grid_and_channel_masks_raise():
    """A grid of another batch (patch reads the grid alone) and channel masks that are
    not [B, G] with G dividing the width: a ValueError naming them, not a wrong result."""
    block = make_block(32, 8, 1, "both", 2, channel_granularity=2)
    fb = fold_block(block)
    x = torch.randn(2, 32, 8, 8).relu().contiguous(memory_format=CL)
    m, _ = block.compute_masks(x)
    for run in (spatial.gather_block, spatial.patch_block):
        with pytest.raises(ValueError, match=r"masks.grid has shape \(1, 1, 4, 4\)"):
            run(fb, x, BlockMasks(m.grid[:1], m.mask3, m.mask1, None))
        for bad in (torch.ones(2, 0), torch.ones(2), torch.ones(2, 3), torch.ones(1, 4)):
            with pytest.raises(ValueError, match="masks.channel has shape"):
                run(fb, x, BlockMasks(m.grid, m.mask3, m.mask1, bad))


def test_folded_block_copies_after_spatial_run():
    """The packed weights a spatial run caches on the FoldedBlock are not copied: the copy
    (deepcopy or pickle) starts empty and gives the same result."""
    block = make_block(16, 8, 1, "spatial", 2, seed=3)
    x = torch.randn(2, 16, 8, 8).relu().contiguous(memory_format=CL)
    masks, _ = block.compute_masks(x)
    fb = fold_block(block)
    first = spatial.gather_block(fb, x, masks)
    assert fb._spatial_weights.value.packed  # packings made (CPU float32)
    for clone in (copy.deepcopy(fb), pickle.loads(pickle.dumps(fb))):
        assert clone._spatial_weights.value is None  # empty until its first run
        assert torch.equal(spatial.gather_block(clone, x, masks), first)
        assert torch.equal(spatial.patch_block(clone, x, masks),
                           spatial.patch_block(fb, x, masks))


def test_registry_and_supports():
    uniform = BlockSpec(256, 64, 256, 1, False, (56, 56), "spatial", 4)
    ragged = uniform.with_(in_hw=(13, 11))
    s1 = uniform.with_(granularity=1)
    names = [v.name for v in variants_for(uniform, "cpu")]
    assert {"dense", "gather", "patch"} <= set(names) and names[0] == "dense"
    assert "patch" not in [v.name for v in variants_for(ragged, "cpu")]
    assert "patch" not in [v.name for v in variants_for(s1, "cpu")]
    assert "gather" in [v.name for v in variants_for(ragged.with_(mode="both",
                                                                  channel_groups=4), "cpu")]
    assert "gather" not in [v.name for v in variants_for(uniform.with_(mode="channel"), "cpu")]


@pytest.mark.parametrize("name", ["gather", "patch"])
@pytest.mark.parametrize("downsample,stride", [(False, 1), (True, 2)])
def test_cost(name, downsample, stride):
    spec = BlockSpec(256, 64, 256, stride, downsample, (56, 56), "spatial", 4)
    cost = get_variant(name).cost
    full, half, zero = cost(spec, 1.0), cost(spec, 0.5), cost(spec, 0.0)
    assert full.flops == pytest.approx(spec.dense_flops())  # rate 1: every pixel
    ds = 256 * 256 * 28 * 28 if downsample else 0
    assert zero.flops == ds and zero.launches < half.launches
    assert ds < half.flops < 0.75 * full.flops
    assert zero.bytes < half.bytes < full.bytes
    both = cost(spec.with_(mode="both", channel_groups=32), 0.5)
    assert both.flops < half.flops  # half the channels on as well


def test_row_bucket_pads_at_most_an_eighth():
    from laudtriton.ops.rows import row_bucket

    seen = set()
    for n in range(1, 5000):
        b = row_bucket(n)
        assert n <= b <= max(n + 15, n * 9 // 8 + 1), (n, b)
        seen.add(b)
    assert len(seen) < 120  # few distinct buckets: few packed weights per block
    assert row_bucket(0) == 0


@torch.no_grad()
@pytest.mark.parametrize("linear", [True, False])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_packed_rows_equal_linear(monkeypatch, linear, relu, with_bias):
    """PackedRows (oneDNN's linear op, or the packed 1x1 convolution where that op is
    missing) gives F.linear(+ReLU), on the row count it was packed for and on others."""
    if not linear:
        monkeypatch.setattr(rows, "onednn_linear_available", lambda: False)
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(24, 40, generator=g), torch.randn(24, generator=g)
    pr = rows.PackedRows(w, b if with_bias else None, 48)
    assert (pr.conv is None) == (linear and rows.onednn_linear_available())
    for n in (48, 33, 1):
        a = torch.randn(2 * n, 40, generator=g)[::2]  # not contiguous
        ref = torch.nn.functional.linear(a, w, b if with_bias else None)
        out = pr(a, relu)
        assert out.shape == (n, 24)
        assert_close(out, ref.relu() if relu else ref, name=f"{n} rows")


def _probe_afresh() -> tuple[bool, bool]:
    """Both oneDNN capability probes run again now (their cached answers dropped)."""
    packed.onednn_fusion_available.cache_clear()
    rows.onednn_linear_available.cache_clear()
    return packed.onednn_fusion_available(), rows.onednn_linear_available()


def test_onednn_probes_leave_the_global_rng_alone():
    """The oneDNN capability probes draw their inputs from a private generator: a caller
    who seeds torch gets the same random numbers whether or not a probe ran in between,
    and each probe gives the same answer every time it runs."""
    answers = []
    for _ in range(2):
        torch.manual_seed(123)
        expected = torch.rand(8)
        torch.manual_seed(123)
        answers.append(_probe_afresh())
        assert torch.equal(torch.rand(8), expected)
    assert answers[0] == answers[1]


def test_onednn_probes_ignore_the_default_dtype():
    """The probes test float32 whatever torch's default dtype is when they first run (their
    answer is cached for the process)."""
    answers = []
    for dtype in (torch.float32, torch.float64, torch.float32):
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            answers.append(_probe_afresh())
        finally:
            torch.set_default_dtype(old)
    assert answers[0] == answers[1] == answers[2]


def test_spatial_row_gemms_use_packed_rows(monkeypatch):
    """With the full weights on CPU fp32 the spatial variants' row GEMMs run PackedRows,
    one per (GEMM, row count), and give the reference block's output."""
    made = []
    init = rows.PackedRows.__init__
    monkeypatch.setattr(rows.PackedRows, "__init__",
                        lambda self, w, b, n: made.append(n) or init(self, w, b, n))
    block = make_block(32, 8, 1, "spatial", 2, seed=5)
    x = torch.randn(1, 32, 8, 8)
    calibrate_block(block, x, 0.5)
    with torch.no_grad():
        ref = block(x)
        masks, _ = block.compute_masks(x)
        fb = fold_block(block)
        out = spatial.gather_block(fb, x.contiguous(memory_format=CL), masks)
    assert_close(out, ref)
    # bucketed wherever oneDNN's fused ops exist (CI's CPU build); rows_linear elsewhere
    bucketed = spatial._bucketed(spatial._full_weights(fb), x)
    assert bucketed == onednn_fusion_available()
    assert len(made) == (3 if bucketed else 0)  # conv1, conv2 (im2col) and conv3


@pytest.mark.parametrize("stride", [1, 2])
def test_patch_conv_packs_once_for_every_patch_count(stride):
    """The patch variant's conv2 runs every number of active cells on one packing (made
    for one patch, ``PackedConv.make(any_batch=True)``), not one packing per count, and
    gives the reference block's output at each count."""
    block = make_block(16, 8, stride, "spatial", 2, seed=7)
    x = torch.randn(1, 16, 16, 16)
    fb = fold_block(block)
    xc = x.contiguous(memory_format=CL)
    for active in (1, 5, 9, 16):  # cells of the 4x4 (stride 2) or 8x8 grid
        masks = synthetic_masks(BlockSpec.from_block(block, (1, 16, 16, 16)),
                                active / (16 if stride == 2 else 64), seed=active)
        with torch.no_grad():
            ref = _inject(block, masks)(x)
            out = spatial.patch_block(fb, xc, masks)
        assert_close(out, ref)
    convs = [v for k, v in spatial._full_weights(fb).packed.items() if k[0] == "patch"]
    assert len(convs) == 1 and convs[0].any_batch
    if onednn_fusion_available():  # one packing, for a batch of one patch
        assert [shape[0] for shape in convs[0].packed] == [1]


@pytest.mark.parametrize("call", ["run", "run_inplace"])
@pytest.mark.parametrize("variant", ["dense", "gather", "patch", "slice", "compact"])
def test_every_cpu_variant_names_an_input_on_another_device(variant, call):
    """FoldedBlock.check_input's device test, which every CPU variant runs first, in place
    too (CompiledModel runs a LaudResNet's blocks through run_inplace): an input on another
    device (meta here, the one other device every machine has) is a ValueError naming both
    devices, not a wrong result or an error from deep in a kernel."""
    mode = {"slice": "channel", "compact": "layer"}.get(variant, "spatial")
    block = make_block(16, 4, 1, mode, 2, channel_granularity=2)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        masks, _ = block.compute_masks(x)
    meta = torch.empty(1, 16, 8, 8, device="meta").contiguous(memory_format=CL)
    with pytest.raises(ValueError, match=r"x is torch.float32 on meta; the folded weights "
                                         r"are torch.float32 on cpu"):
        getattr(get_variant(variant), call)(fold_block(block), meta, masks, {})


def test_patch_refuses_maps_whose_nearest_cells_are_not_its_patches():
    """S dividing the map is not enough: at 82x82 with S = 41 the reference's nearest
    upsampling puts pixel 41 in cell 0, and ``patch`` (cell i // S) gave relative error
    0.44, reported nowhere. The registry's supports now refuses such maps (compile and
    the dispatch fall back to another variant); every map of ResNet-50/101 keeps it."""
    from laudtriton.ops import nearest_cells_are_patches

    assert not nearest_cells_are_patches((82, 82), 41)
    assert nearest_cells_are_patches((84, 82), 2) and nearest_cells_are_patches((56, 56), 4)
    spec = BlockSpec(16, 4, 16, 1, False, (82, 82), "spatial", 41)
    assert not get_variant("patch").supports(spec)
    assert get_variant("patch").supports(spec.with_(in_hw=(84, 84), granularity=42))
    assert "patch" not in {v.name for v in variants_for(spec, "cpu")}
    block = make_block(16, 4, 1, "spatial", 41, seed=2)
    x = torch.randn(1, 16, 82, 82)
    calibrate_block(block, x, 0.5)
    with torch.no_grad():  # called directly, the variant refuses too
        masks = block.compute_masks(x)[0]
    with pytest.raises(ValueError, match="does not make 41x41 patches"):
        spatial.patch_block(fold_block(block), x.contiguous(memory_format=CL), masks)
    import laudtriton

    with pytest.raises(ValueError, match="variants patch: no block of this model runs any "
                                         "of them on cpu; accepted here: dense, gather"):
        laudtriton.compile(block, x, backend="cpu", tune="off", variants=["patch"])
    cm = laudtriton.compile(block, x, backend="cpu", tune="off")
    with torch.no_grad():
        assert_close(cm(x), block(x))
    assert cm.last_stats[0].variant in ("dense", "gather")


@pytest.mark.parametrize("variant", ["gather", "patch"])
@pytest.mark.parametrize("mode", ["spatial", "both"])
@pytest.mark.parametrize("edit", ["in place", "replaced"])
@pytest.mark.parametrize("stride,hw", [(1, (8, 12)), (2, (15, 8))])
@torch.no_grad()
def test_spatial_variants_follow_weight_edits(variant, mode, edit, stride, hw):
    """The weights gather and patch derive and cache (the im2col conv2 weight, the oneDNN
    packings) must not outlive the folded tensors they were made from: a cache not keyed
    by ``FoldedBlock.fingerprint`` passed every other CPU test (a mutation audit,
    session 47; the slice cache has its own test in test_channel.py)."""
    block = make_block(16, 8, stride, mode, 2, channel_granularity=2, seed=5)
    spec = BlockSpec.from_block(block, (2, 16, *hw))
    m = synthetic_masks(spec, 0.5, seed=3)
    channel = None
    if mode == "both":  # sample 0 on every channel (the full, cached weights), 1 partly
        channel = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    masks = BlockMasks(m.grid, m.mask3, m.mask1, channel)
    x = torch.randn(2, 16, *hw)
    xc = x.contiguous(memory_format=CL)
    fb = fold_block(block)
    run = get_variant(variant).run
    for _ in range(2):  # the second call runs on the cached (packed) weights
        assert_close(run(fb, xc, masks, {}), reference_on_masks(block, x, masks))
    # conv2 and conv3 have no bias: scaling a weight scales its folded weight alone
    for name, conv, f in (("w2", block.conv2, -0.5), ("w3", block.conv3, 1.5)):
        conv.weight.mul_(f)
        if edit == "in place":
            getattr(fb, name).mul_(f)
        else:
            setattr(fb, name, getattr(fb, name) * f)
    ref = reference_on_masks(block, x, masks)
    for call in ("first call after the edit", "second call"):
        assert_close(run(fb, xc, masks, {}), ref, name=f"{variant} {mode} {edit}: {call}")


@pytest.mark.parametrize("with_bias", [True, False])
def test_rows_linear_of_no_rows_is_empty(with_bias):
    """Zero rows (no active pixel) give a [0, o] result on every path, not an error of the
    1x1 convolution that the CPU fp32 path runs."""
    from laudtriton.ops.rows import rows_linear

    w = torch.randn(6, 5)
    for dtype in (torch.float32, torch.float64):
        b = torch.randn(6, dtype=dtype) if with_bias else None
        got = rows_linear(torch.empty(0, 5, dtype=dtype), w.to(dtype), b)
        assert got.shape == (0, 6) and got.dtype == dtype


@pytest.mark.parametrize("variant", ["gather", "patch"])
def test_a_mask1_of_another_shape_is_refused(variant):
    """mask1 must be [B, 1, H, W] of x: a transposed one (same size, H != W) is a ValueError
    naming it, not conv1 run on the wrong pixels."""
    block = make_block(16, 4, 1, "spatial", 2, seed=1)
    spec = BlockSpec.from_block(block, (2, 16, 8, 12))
    m = synthetic_masks(spec, 0.5, seed=1)
    x = torch.randn(2, 16, 8, 12).contiguous(memory_format=CL)
    bad = BlockMasks(m.grid, m.mask3, m.mask1.transpose(-1, -2).contiguous(), None)
    fb = fold_block(block)
    with pytest.raises(ValueError, match=r"masks.mask1 has shape \(2, 1, 12, 8\); "
                                         r"expected \(2, 1, 8, 12\)"):
        get_variant(variant).run(fb, x, bad, {})
    assert_close(get_variant(variant).run(fb, x, m, {}), reference_on_masks(block, x, m))


@pytest.mark.parametrize("name", ["gather", "patch"])
@pytest.mark.parametrize("mode", ["spatial", "both"])
def test_cost_of_a_rate_is_the_cost_of_the_whole_cells_and_groups_it_turns_on(name, mode):
    """Masks at rate r have exactly round(r·N) active cells (and, in ``both``, channel
    groups: DESIGN.md section 5), so the cost model rounds as the masks do: on a 5x2 grid
    with 4 channel groups, 0.29 and 0.3 both turn on 3 cells and 1 group, 0.2 only 2."""
    spec = BlockSpec(32, 8, 32, 1, False, (10, 4), mode, 2,
                     channel_groups=4 if mode == "both" else 0)
    assert spec.grid == (5, 2)
    cost = get_variant(name).cost
    assert cost(spec, 0.29) == cost(spec, 0.3)
    assert cost(spec, 0.29).flops > cost(spec, 0.2).flops
    if mode == "both":  # 0.29 and 0.3 of 4 groups: 1 group, a quarter of conv1's work
        assert cost(spec, 0.3).flops < cost(spec.with_(mode="spatial", channel_groups=0),
                                             0.3).flops / 3


@pytest.mark.parametrize("name", ["gather", "patch"])
def test_cost_counts_the_downsample_output_written_and_read_back(name):
    """The identity of a downsample block is a new [B, Cout, Ho, Wo] map: at rate 0 the
    block moves at least its weights and that map twice (written, then read by the ReLU
    pass) more than the same block whose identity is x."""
    ds = BlockSpec(64, 16, 64, 1, True, (14, 14), "spatial", 2, batch=2)
    plain = ds.with_(downsample=False)
    el, (ho, wo) = 4, ds.out_hw
    cost = get_variant(name).cost
    extra = cost(ds, 0.0).bytes - cost(plain, 0.0).bytes
    assert extra >= el * (64 * 64 + 2 * 2 * 64 * ho * wo)


@pytest.mark.parametrize("name", ["gather", "patch"])
def test_cost_of_a_batch_is_the_batch_times_the_flops_of_one_sample(name):
    """Every multiply-add of the block, the dense downsample's included, is done once per
    sample: at every rate the flops of batch 3 are three times those of batch 1 (at rate 0
    only the downsample's remain)."""
    one = BlockSpec(64, 16, 64, 2, True, (16, 16), "spatial", 2)
    cost = get_variant(name).cost
    for rate in (0.0, 0.5, 1.0):
        assert cost(one.with_(batch=3), rate).flops == pytest.approx(
            3 * cost(one, rate).flops)
    assert cost(one.with_(batch=3), 0.0).flops == 3 * 64 * 64 * 8 * 8


def test_patch_moves_fewer_conv2_input_bytes_than_the_nine_taps_of_gather():
    """conv2's input: gather writes and reads an im2col of 9 taps per active output pixel,
    patch one (S+2)x(S+2) halo patch per S x S cell (stride 1): at S = 4, 36 values per
    16 pixels instead of 144. Same flops; the byte difference is exactly that."""
    spec = BlockSpec(64, 16, 64, 1, False, (16, 16), "spatial", 4, batch=2)
    g, p = get_variant("gather").cost(spec, 0.5), get_variant("patch").cost(spec, 0.5)
    assert g.flops == p.flops
    n2, m = 2 * 16 * 16 * 0.5, 16  # active output pixels (8 of 16 cells), width
    assert g.bytes - p.bytes == pytest.approx(4 * 2 * (n2 * 9 * m - n2 * m * 36 / 16))


@pytest.mark.parametrize("name", ["gather", "patch"])
def test_cost_in_both_mode_gathers_conv1_rows_per_channel_group_however_many(name):
    """In ``both`` mode at batch > 1 each channel pattern runs its own conv1 on its
    samples' mask1 rows (``spatial._run``: the dense conv1 is for a single group only):
    at rate 0.7 on an 8x8 grid mask1 covers 97% of the map (past
    ``DENSE_CONV1_FRACTION``), yet conv1 is counted on those rows, not on every pixel."""
    from laudtriton.ops import masks as mk

    spec = BlockSpec(32, 8, 32, 1, False, (16, 16), "both", 2, channel_groups=4, batch=2)
    r1 = mk.expected_mask1_fraction((16, 16), 1, (8, 8), 45)  # round(0.7 * 64) cells
    assert r1 >= rows.DENSE_CONV1_FRACTION
    m, n2 = 8 * 0.75, 2 * 16 * 16 * 45 / 64  # round(0.7 * 4) = 3 of 4 groups on
    n1 = 2 * 16 * 16 * r1
    assert get_variant(name).cost(spec, 0.7).flops == pytest.approx(
        n1 * 32 * m + n2 * 9 * m * m + n2 * m * 32)


def test_a_variant_name_is_registered_once_and_backends_are_known(monkeypatch):
    """register refuses a second variant of a taken name (the first stays) and
    variants_for refuses a backend it does not know rather than offering nothing."""
    import dataclasses

    from laudtriton.ops import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    dense = get_variant("dense")
    with pytest.raises(ValueError, match="variant 'dense' is already registered"):
        registry.register(dataclasses.replace(dense, description="another"))
    assert get_variant("dense") is dense
    spec = BlockSpec(64, 16, 64, 1, False, (8, 8), "spatial", 2)
    with pytest.raises(ValueError, match="backend 'gpu' unknown"):
        variants_for(spec, "gpu")


def test_variants_for_offers_a_variant_only_for_its_modes_and_dense_first(monkeypatch):
    """A variant registered with the default supports (every spec) is offered for the
    modes it declares only; whatever the registration order (``slice`` is registered
    before ``dense``), dense comes first."""
    from laudtriton.ops import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register(registry.Variant(
        name="layer_only", modes=("layer",), backends=("cpu",), run=lambda *a: None,
        cost=lambda spec, rate: registry.Cost(0.0, 0.0, 1)))
    spatial_spec = BlockSpec(64, 16, 64, 1, False, (8, 8), "spatial", 2)
    layer_spec = spatial_spec.with_(mode="layer", granularity=1)
    assert "layer_only" not in [v.name for v in variants_for(spatial_spec, "cpu")]
    assert [v.name for v in variants_for(layer_spec, "cpu")] == ["dense", "compact",
                                                                 "layer_only"]
    channel_spec = spatial_spec.with_(mode="channel", granularity=1, channel_groups=4)
    assert [v.name for v in variants_for(channel_spec, "cpu")] == ["dense", "slice"]


def test_dense_cost_by_hand_half_types_two_bytes_and_a_launch_for_the_downsample():
    """dense: every multiply-add of the block; bytes of the input, the output written and
    read back (2 x Cout x Ho x Wo) and the weights, 2 per element in float16 and bfloat16,
    4 in float32; four launches, five with the downsample."""
    from laudtriton.ops.registry import Cost

    cost = get_variant("dense").cost
    spec = BlockSpec(64, 16, 64, 1, False, (8, 8), "spatial", 2)
    act, wts = 64 * 64 + 2 * 64 * 64, 64 * 16 + 9 * 16 * 16 + 16 * 64
    flops = 64 * 16 * 64 + 16 * 16 * 9 * 64 + 16 * 64 * 64
    assert cost(spec, 0.5) == Cost(float(flops), 4.0 * (act + wts), 4)
    for dt in ("float16", "bfloat16"):
        assert cost(spec.with_(dtype=dt), 0.5).bytes == 2.0 * (act + wts)
    ds = spec.with_(stride=2, downsample=True, batch=2)
    act = 2 * (64 * 64 + 2 * 64 * 16)
    wts += 64 * 64
    flops = 2 * (64 * 16 * 64 + 16 * 16 * 9 * 16 + 16 * 64 * 16 + 64 * 64 * 16)
    assert cost(ds, 1.0) == Cost(float(flops), 4.0 * (act + wts), 5)
