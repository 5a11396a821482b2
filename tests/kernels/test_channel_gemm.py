"""Channel-sliced GEMM and 3x3 conv under the interpreter vs float64 references."""

import pytest
import torch

from laudtriton.kernels import channel_conv3x3 as cc
from laudtriton.kernels import channel_gemm as cg
from laudtriton.testing import assert_close

SMALL = cg.GemmConfig(16, 16, 16, 1, 1)


def _lists(batch, width, counts, seed):
    """idx [B, width] int32 with the active channels first (random sets), n [B] int32."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(width, generator=g) for _ in range(batch)])
    rows = []
    for b, m in enumerate(counts):
        act = idx[b, :m].sort().values
        rest = idx[b, m:]
        rows.append(torch.cat([act, rest]))
    return torch.stack(rows).int(), torch.tensor(counts, dtype=torch.int32)


# every float torch.empty (the launchers' outputs) starts as NaN (tests/kernels/conftest.py)
pytestmark = pytest.mark.usefixtures("nan_empty")


def _compare(y, ref, n, tol=None):
    for b in range(y.shape[0]):
        m = int(n[b]) if n is not None else y.shape[-1]
        if m == 0:
            continue
        assert_close(y[b, ..., :m], ref[b, ..., :m], tol, name=f"sample {b}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("stage", ["conv1", "conv3"])
def test_channel_gemm(dtype, stage):
    batch, p, cin, width, cout = 3, 21, 19, 24, 37
    counts = [0, 13, width]  # rate 0, partial, rate 1 in one batch
    idx, n = _lists(batch, width, counts, seed=1)
    if stage == "conv1":
        x = torch.randn(batch, p, cin).to(dtype)
        w = torch.randn(width, cin).to(dtype)
        bias = torch.randn(width)
        kw = dict(out_idx=idx, n_out=n, relu=True)
    else:
        x = torch.randn(batch, p, width).to(dtype)
        w = torch.randn(cout, width).to(dtype)
        bias = torch.randn(batch, cout)  # per-sample (κ2-corrected) bias
        res = torch.randn(batch, p, cout).to(dtype)
        kw = dict(in_idx=idx, n_in=n, residual=res, relu=True)
    ref = cg.channel_gemm_torch(x, w, bias, **kw)
    # k-major (as conv1 runs) and n-major (as the channel_gemm variant gives conv3)
    for weight in (w, w.t().contiguous().t()):
        y = cg.channel_gemm(x, weight, bias, config=SMALL, **kw)
        assert y.dtype == dtype
        _compare(y, ref, n if stage == "conv1" else None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("stride", [1, 2])
def test_channel_conv3x3(dtype, stride):
    """Implicit-GEMM 3x3 conv over active channels with the κ1 taps, odd 7x5 map, a batch
    at rate 0, partial and 1, tap-major weight (the variant's layout) and a plain one."""
    batch, h, wd, width = 3, 7, 5, 20
    idx, n = _lists(batch, width, [0, 9, width], seed=5)
    x = torch.randn(batch, h, wd, width).to(dtype)  # compact: column k = channel idx[b, k]
    w = torch.randn(width, width, 3, 3).to(dtype)
    bias = torch.randn(batch, width)
    taps = torch.randn(batch, 9, width).to(dtype)
    kw = dict(in_idx=idx, n_in=n, out_idx=idx, n_out=n, taps=taps, stride=stride,
              relu=True)
    ref = cc.channel_conv3x3_torch(x, w, bias, **kw)
    assert ref.shape == (batch, (h - 1) // stride + 1, (wd - 1) // stride + 1, width)
    for weight in (w.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1), w):
        y = cc.channel_conv3x3(x, weight, bias, config=SMALL, **kw)
        assert y.dtype == dtype
        _compare(y, ref, n)


def test_channel_gemm_unwritten_columns_stay_poisoned(nan_empty):
    """Programs past n_out write nothing: columns >= n_out[b] keep the NaN poison."""
    x = torch.randn(2, 5, 16)
    w = torch.randn(40, 16)
    idx, n = _lists(2, 40, [3, 40], seed=2)
    y = cg.channel_gemm(x, w, torch.zeros(40), out_idx=idx, n_out=n, config=SMALL)
    assert y.shape == (2, 5, 40)
    assert torch.isnan(y[0, :, 3:]).all()
    _compare(y, cg.channel_gemm_torch(x, w, torch.zeros(40), out_idx=idx, n_out=n), n)


@pytest.mark.parametrize("config", [None, cg.DEFAULT], ids=["fp32_default", "64x64"])
def test_default_config_dense_odd_shape(config):
    """No index lists: a plain GEMM + shared bias, 70 outputs (past a 64-wide tile), on the
    float32 default (16x32x64) and on the half types' 64x64 default (the float32 tuning
    space's too); channel_conv3x3 once on each."""
    x = torch.randn(1, 7, 33)
    w = torch.randn(70, 33)
    bias = torch.randn(70)
    y = cg.channel_gemm(x, w, bias, config=config)
    assert_close(y, x.double() @ w.double().T + bias.double())
    idx, n = _lists(1, 20, [13], seed=8)
    kw = dict(in_idx=idx, n_in=n, out_idx=idx, n_out=n)
    xc, wc, bc = torch.randn(1, 5, 3, 20), torch.randn(20, 20, 3, 3), torch.randn(20)
    _compare(cc.channel_conv3x3(xc, wc, bc, config=config, **kw),
             cc.channel_conv3x3_torch(xc, wc, bc, **kw), n)


def test_empty_input_lists_give_the_bias():
    """Every input channel off (empty in_idx, zero counts): y = act(bias), as the
    reference; the counts of an empty list are still checked (test below)."""
    x, w, bias = torch.randn(2, 5, 0), torch.randn(24, 16), torch.randn(24)
    kw = dict(in_idx=torch.zeros(2, 0, dtype=torch.int32), n_in=torch.zeros(2, dtype=torch.int32),
              relu=True)
    y = cg.channel_gemm(x, w, bias, **kw, config=SMALL)
    assert y.shape == (2, 5, 24)
    assert torch.equal(y, bias.clamp_min(0).expand(2, 5, 24))
    assert_close(y, cg.channel_gemm_torch(x, w, bias, **kw))


@pytest.mark.parametrize("case,match", [  # each message names the bad tensor and value
    ("dtype", "w has dtype torch.float16"), ("device_dims", r"x must be 3-D, got shape \(5, 16\)"),
    ("noncontig", "x must be contiguous"), ("range", r"out_idx values in \[0, 24\]"),
    ("count", r"n_out values in \[3, 25\]"), ("idx_dtype", "out_idx has dtype torch.int64"),
    ("k_mismatch", "x has 16 channels but w has 15 input channels"),
    ("bias", r"bias has shape \(1, 23\)"), ("stride", "stride must be 1 or 2, got 3"),
    ("w_noncontig", r"w must be contiguous along one dim, got strides \(32, 2\)"),
    ("device", "w is on meta, expected cpu like the input"),
])
def test_bad_inputs(case, match):
    x = torch.randn(2, 5, 16)
    w = torch.randn(24, 16)
    idx, n = _lists(2, 24, [3, 24], seed=4)
    kw = dict(out_idx=idx, n_out=n)
    bias = torch.zeros(24)
    if case == "dtype":
        w = w.half()
    elif case == "device_dims":
        x = x[0]
    elif case == "noncontig":
        x = torch.randn(2, 16, 5).transpose(1, 2)
    elif case == "range":
        kw["out_idx"] = idx.clone()
        kw["out_idx"][1, 2] = 24
    elif case == "count":
        kw["n_out"] = torch.tensor([3, 25], dtype=torch.int32)
    elif case == "idx_dtype":
        kw["out_idx"] = idx.long()
    elif case == "k_mismatch":
        w = torch.randn(24, 15)
    elif case == "bias":
        bias = torch.zeros(23)
    elif case == "w_noncontig":
        w = torch.randn(24, 32)[:, ::2]
    elif case == "device":
        w = torch.empty(24, 16, device="meta")
    if case == "stride":
        xc = torch.randn(2, 4, 4, 24)
        with pytest.raises(ValueError, match=match):
            cc.channel_conv3x3(xc, torch.randn(24, 24, 3, 3), bias, in_idx=idx, n_in=n,
                               out_idx=idx, n_out=n, stride=3)
        return
    with pytest.raises(ValueError, match=match):
        cg.channel_gemm(x, w, bias, **kw)


def test_aot_specs_cover_every_config():
    specs = cg.aot_specs() + cc.aot_specs()
    names = {s.name for s in specs}
    assert len(names) == len(specs)
    assert sum(s.default for s in specs) == 9  # (conv1, conv3, 3x3) x 3 dtypes
    for cfg in cg.CONFIGS:
        assert any(s.constexprs["BLOCK_P"] == cfg.block_p and s.num_warps == cfg.num_warps
                   for s in specs)


def test_gemm_config_validation():
    """A K tile under 16 ran under the interpreter and failed tl.dot's compile on sm_90;
    an unknown key raised a TypeError. Both are ValueErrors naming the field now."""
    with pytest.raises(ValueError, match="block_k=8; accepted: a power of two >= 16"):
        cg.GemmConfig(block_k=8)
    with pytest.raises(ValueError, match="block_p=48"):
        cg.GemmConfig(block_p=48)
    for fields, says in ((dict(num_warps=3), "num_warps=3"), (dict(num_warps=64), "num_warps=64"),
                         (dict(num_stages=0), "num_stages=0; accepted: an int >= 1"),
                         (dict(num_stages=-1), "num_stages=-1")):
        with pytest.raises(ValueError, match=says):
            cg.GemmConfig(**fields)
    with pytest.raises(ValueError, match=r"unknown keys \['block_m'\]"):
        cg.GemmConfig.from_dict({"block_m": 64})
    assert cg.GemmConfig.from_dict(cg.DEFAULT.to_dict()) == cg.DEFAULT


@pytest.mark.parametrize("dtype,name", [(torch.float32, "fp32"), (torch.float16, "fp16")])
def test_launchers_without_a_config_launch_the_aot_default_of_their_dtype(launched, dtype,
                                                                          name):
    """Given no config (None or {}), both channel launchers run the config their AOT specs
    mark default for the input's dtype, the one the AOT tests check for spills: in float32
    the smallest tile (the 64x64 one spills in channel_conv3x3 on sm_80, docs/kernels.md)."""
    seen = launched.patch(cg, cc)
    batch, width = 2, 20
    idx, n = _lists(batch, width, [9, width], seed=6)
    x, w = torch.randn(batch, 4, 5, width).to(dtype), torch.randn(width, width, 3, 3).to(dtype)
    kw = dict(in_idx=idx, n_in=n, out_idx=idx, n_out=n)
    want = cg.DEFAULT_FP32 if dtype == torch.float32 else cg.DEFAULT
    for config in (None, {}):
        seen.clear()
        cc.channel_conv3x3(x, w, torch.randn(width), config=config, **kw)
        cg.channel_gemm(x.reshape(batch, 20, width), w[:, :, 1, 1].contiguous(),
                        torch.randn(width), config=config, **kw)
        for mod in (cg, cc):
            assert seen[mod.__name__] == launched.aot_defaults(mod.aot_specs(), name) == {
                launched.of_config(want)}, (mod.__name__, config)
    assert want.block_p == (16 if name == "fp32" else 64)


def test_channel_gemm_does_not_claim_float64_or_a_stride_its_conv3x3_lacks():
    """The kernels take fp32/fp16/bf16: a float64 spec (compile(dtype=torch.float64) on
    CUDA) must not list the variant, which then failed every timing; nor a stride-3 spec
    (the 3x3 kernel takes stride 1 or 2), which the torch ``slice`` variant runs."""
    from laudtriton.ops import BlockSpec, get_variant

    spec = BlockSpec(64, 16, 64, 1, False, (7, 7), "channel", 1, 8, dtype="float64")
    assert not get_variant("channel_gemm").supports(spec)
    assert get_variant("channel_gemm").supports(spec.with_(dtype="float16"))
    spec = spec.with_(dtype="float32")
    for stride, claimed in ((1, True), (2, True), (3, False)):
        assert get_variant("channel_gemm").supports(spec.with_(stride=stride)) == claimed
    assert get_variant("slice").supports(spec.with_(stride=3))


def test_variant_configs_mirror_kernel_configs():
    from laudtriton.ops import triton_channel as tc

    assert [cg.GemmConfig.from_dict(c) for c in tc._CONFIGS] == list(cg.CONFIGS)
    # channel_gemm_configs puts _CONFIGS[-1] first in float32 as the kernels' default there
    assert cg.DEFAULT_FP32 == cg.CONFIGS[-1]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_channel_gemm_variant_end_to_end(stride, rate):
    """The registered variant vs the reference block (float64) with the same channel mask."""
    from laudtriton.ops import fold_block, get_variant, triton_channel  # noqa: F401
    from laudtriton.ops.spec import BlockSpec
    from laudtriton.ops.synthetic import synthetic_masks
    from laudtriton.testing import make_block

    block = make_block(16, 4, stride, mode="channel", channel_granularity=2, seed=stride)
    x = torch.randn(2, 16, 7, 9)
    spec = BlockSpec.from_block(block, x.shape)
    masks = synthetic_masks(spec, rate, seed=5)
    if rate == 0.5:  # two samples, two different masks
        masks.channel = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ref_block = block.double()
    ref_block.masker_channel.forward = lambda inp, temperature=1.0: (
        masks.channel.double(), 0.0)
    with torch.no_grad():
        ref = ref_block(x.double())
    v = get_variant("channel_gemm")
    assert v.supports(spec) and v.needs_triton and v.backends == ("cuda",)
    fb = fold_block(block.float())
    cfg = {"block_p": 16, "block_n": 16, "block_k": 16, "num_warps": 1, "num_stages": 1}
    out = v.run(fb, x.contiguous(memory_format=torch.channels_last), masks, cfg)
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close(out, ref)


def test_channel_gemm_variant_without_a_config_uses_the_dtype_default(launched):
    """No config (None or {}): both channel kernels launch their float32 default, the
    smallest tile, which does not spill (docs/kernels.md), and the output is still the
    reference's."""
    from laudtriton.ops import fold_block, get_variant, triton_channel  # noqa: F401
    from laudtriton.ops.spec import BlockSpec
    from laudtriton.ops.synthetic import synthetic_masks
    from laudtriton.testing import make_block, reference_on_masks

    block = make_block(16, 4, 1, mode="channel", channel_granularity=2, seed=3)
    x = torch.randn(2, 16, 7, 9).contiguous(memory_format=torch.channels_last)
    masks = synthetic_masks(BlockSpec.from_block(block, x.shape), 0.5, seed=2)
    v, fb = get_variant("channel_gemm"), fold_block(block)
    assert_close(v.run(fb, x, masks, None), reference_on_masks(block, x, masks))
    seen = launched.patch(cg, cc)
    want = {launched.of_config(cg.DEFAULT_FP32)}
    for config in (None, {}):  # conv1 and conv3 through channel_gemm, conv2 the 3x3
        seen.clear()
        v.run(fb, x, masks, config)
        assert seen == {cg.__name__: want, cc.__name__: want}, config


@pytest.mark.parametrize("stride,hw,batch,k", [(1, (13, 11), 1, 2), (2, (13, 11), 3, 2),
                                               (1, (7, 9), 3, 4), (2, (9, 7), 1, 1)])
@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
@pytest.mark.usefixtures("nan_empty")
def test_channel_gemm_variant_on_calibrated_masks(stride, hw, batch, k, rate):
    """Batch 1 and 3 (different masks per sample at 0.5), 1, 2 and 4 channels per group,
    odd maps, the masks the block's own masker gives, against the reference block."""
    from laudtriton.nn import calibrate_block
    from laudtriton.ops import fold_block, get_variant, triton_channel  # noqa: F401
    from laudtriton.testing import make_block

    block = make_block(24, 16, stride, mode="channel", channel_granularity=k, seed=batch)
    x = torch.randn(batch, 24, *hw) + 2 * torch.randn(batch, 24, 1, 1)
    calibrate_block(block, x, rate)
    with torch.no_grad():
        ref = block(x)
        masks, _ = block.compute_masks(x)
    assert masks.channel.mean().item() == rate if rate in (0.0, 1.0) else \
        0 < masks.channel.mean().item() < 1
    if batch > 1 and rate == 0.5:
        assert any(not torch.equal(masks.channel[0], c) for c in masks.channel[1:])
    cfg = {"block_p": 16, "block_n": 16, "block_k": 16, "num_warps": 1, "num_stages": 1}
    out = get_variant("channel_gemm").run(
        fold_block(block), x.contiguous(memory_format=torch.channels_last), masks, cfg)
    assert_close(out, ref)


def test_batch_past_cudas_grid_limit_is_refused():
    """The batch is grid axis z: CUDA refuses more than 65535 there only as an invalid
    argument at launch (the interpreter has no limit), so the launchers say so first."""
    batch = 65536
    idx = torch.arange(16, dtype=torch.int32).repeat(batch, 1)
    n = torch.full((batch,), 16, dtype=torch.int32)
    with pytest.raises(ValueError, match="channel_gemm: 65536 programs on launch grid axis z"):
        cg.channel_gemm(torch.randn(batch, 1, 16), torch.randn(16, 16), torch.zeros(16),
                        out_idx=idx, n_out=n, validate=False)
    with pytest.raises(ValueError, match="channel_conv3x3: 65536 programs on launch grid"):
        cc.channel_conv3x3(torch.randn(batch, 1, 1, 16), torch.randn(16, 16, 3, 3),
                           torch.zeros(16), in_idx=idx, n_in=n, out_idx=idx, n_out=n,
                           validate=False)


def test_channel_gemm_variant_refuses_masks_that_do_not_fit():
    """Masks of another batch reached the kernels unchecked (they index by them), and a
    mask with no group divided by zero: each is a ValueError naming masks.channel."""
    from laudtriton.nn.block import BlockMasks
    from laudtriton.ops import fold_block, get_variant
    from laudtriton.testing import make_block

    block = make_block(16, 4, 1, mode="channel", channel_granularity=2)
    fb = fold_block(block)
    x = torch.randn(2, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    v = get_variant("channel_gemm")
    for channel in (torch.ones(3, 2), torch.ones(1, 2), torch.ones(2, 0), torch.ones(2, 3)):
        with pytest.raises(ValueError, match=r"channel_gemm: masks.channel has shape "):
            v.run(fb, x, BlockMasks(None, None, None, channel), None)
    with pytest.raises(ValueError, match="channel_gemm: x has 8 channels"):
        v.run(fb, x[:, :8], BlockMasks(None, None, None, torch.ones(2, 2)), None)


@pytest.mark.parametrize("stride", [1, 2])
def test_channel_gemm_variant_follows_weight_edits(stride):
    """The n-major copy of w3 (and the tap-major w2) the variant caches on the
    FoldedBlock is made again when ``FoldedBlock.fingerprint`` changes: a w3 cache keyed
    without it passed every other kernel test (mutation audit, session 47)."""
    from laudtriton.nn.block import BlockMasks
    from laudtriton.ops import fold_block, get_variant, triton_channel  # noqa: F401
    from laudtriton.testing import make_block, reference_on_masks

    block = make_block(16, 4, stride, mode="channel", channel_granularity=2, seed=stride)
    x = torch.randn(2, 16, 7, 9, generator=torch.Generator().manual_seed(3))
    masks = BlockMasks(None, None, None, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    fb = fold_block(block)
    run = get_variant("channel_gemm").run
    xc = x.contiguous(memory_format=torch.channels_last)
    cfg = {"block_p": 16, "block_n": 16, "block_k": 16, "num_warps": 1, "num_stages": 1}
    assert_close(run(fb, xc, masks, cfg), reference_on_masks(block, x, masks))
    with torch.no_grad():  # no bias: the folded weights scale as the convolutions'
        block.conv2.weight.mul_(-0.5)
        block.conv3.weight.mul_(1.5)
        fb.w2.mul_(-0.5)
        fb.w3.mul_(1.5)
    assert_close(run(fb, xc, masks, cfg), reference_on_masks(block, x, masks),
                 name="channel_gemm after an in-place edit of w2 and w3")


def test_channel_lists_give_each_samples_active_channels_first_in_increasing_order():
    """``channel_lists``: idx[b, :n[b]] are sample b's active channels (k = width / G per
    group) in increasing order, the rest of the row its inactive ones; ``active`` is the
    group mask repeated per channel. An unstable argsort kept the end-to-end results
    (every stage indexes by the same lists) but listed the active channels out of
    order."""
    from laudtriton.ops.triton_channel import channel_lists

    chan = (torch.rand(4, 24, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    chan[0], chan[1] = 0.0, 1.0
    active, idx, n = channel_lists(chan, 96)
    assert idx.dtype == n.dtype == torch.int32 and idx.shape == active.shape == (4, 96)
    for b in range(4):
        on = (torch.nonzero(chan[b]).flatten()[:, None] * 4 + torch.arange(4)).flatten()
        assert int(n[b]) == on.numel() == 4 * int(chan[b].sum())
        assert idx[b, :on.numel()].tolist() == on.tolist()
        assert sorted(idx[b, on.numel():].tolist()) == sorted(set(range(96)) - set(on.tolist()))
        assert torch.nonzero(active[b]).flatten().tolist() == on.tolist()


def test_channel_gemm_cost_by_hand_batch_half_types_and_the_downsample():
    """channel_gemm at channel rate r (m = r·width active channels): multiply-adds
    conv1·r + conv2·r² + conv3·r (+ the dense downsample) per sample; bytes of the input,
    the identity and the output, h1 and h2 written and read once, and the active weights,
    2 per element in float16 and bfloat16, 4 in float32; 9 launches, 10 with the
    downsample."""
    from laudtriton.ops.registry import Cost
    from laudtriton.ops.spec import BlockSpec
    from laudtriton.ops.triton_channel import channel_gemm_cost

    spec = BlockSpec(64, 16, 64, 1, False, (8, 8), "channel", 1, 4, batch=2)
    m = 8  # rate 0.5 of width 16
    flops = 2 * (64 * 16 * 64 * 0.5 + 9 * 16 * 16 * 64 * 0.25 + 16 * 64 * 64 * 0.5)
    act = 2 * (64 * 64 + 2 * 64 * 64 + 2 * m * 64 + 2 * m * 64)
    wts = 64 * m + 9 * m * m + m * 64
    assert channel_gemm_cost(spec, 0.5) == Cost(flops, 4.0 * (act + wts), 9)
    for dt in ("float16", "bfloat16"):
        assert channel_gemm_cost(spec.with_(dtype=dt), 0.5).bytes == 2.0 * (act + wts)
    ds = spec.with_(stride=2, downsample=True)  # 8x8 -> 4x4, a 64 -> 64 1x1 downsample
    flops = 2 * (64 * 16 * 64 * 0.5 + 9 * 16 * 16 * 16 * 0.25 + 16 * 64 * 16 * 0.5
                 + 64 * 64 * 16)
    act = 2 * (64 * 64 + 2 * 64 * 16 + 2 * m * 64 + 2 * m * 16)
    assert channel_gemm_cost(ds, 0.5) == Cost(flops, 4.0 * (act + wts + 64 * 64), 10)


def test_channel_gemm_config_space_is_pruned_to_the_map_and_the_width():
    """No P tile wider than the next power of two of Ho·Wo, no N tile wider than that of
    the width; a block narrower than every N tile keeps the smallest config, not none
    (the sweep times a variant over its configs only: an empty space never timed it).
    The dtype's kernel default comes first (a predicted choice launches the first)."""
    from laudtriton.ops.spec import BlockSpec
    from laudtriton.ops.triton_channel import _CONFIGS, channel_gemm_configs

    def tiles(spec):
        return [(c["block_p"], c["block_n"]) for c in channel_gemm_configs(spec)]

    spec = BlockSpec(64, 64, 256, 1, False, (8, 8), "channel", 1, 4)  # 64 pixels
    assert spec.dtype == "float32"  # first: the float32 default (it does not spill)
    assert tiles(spec) == [(16, 32), (64, 64), (32, 64)]
    assert tiles(spec.with_(in_hw=(9, 9))) == [(16, 32), (64, 64), (128, 64), (32, 64)]
    half = spec.with_(in_hw=(9, 9), dtype="float16")  # first: the half types' default
    assert tiles(half) == [(64, 64), (128, 64), (32, 64), (16, 32)]
    narrow = spec.with_(width=16)
    assert channel_gemm_configs(narrow) == [dict(_CONFIGS[-1])]


def test_launch_accepts_cudas_grid_limit_itself_on_axes_y_and_z():
    """65535 programs on grid axis y or z is CUDA's limit, not past it: launched; 65536
    on either axis is refused, naming the axis."""
    from laudtriton.kernels import tiles

    launched = []

    class FakeKernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append(grid)

    like = torch.zeros(1)
    tiles.launch(FakeKernel(), (3, 65535, 65535), like, "k")
    assert launched == [(3, 65535, 65535)]
    with pytest.raises(ValueError, match="k: 65536 programs on launch grid axis y"):
        tiles.launch(FakeKernel(), (1, 65536), like, "k")
    with pytest.raises(ValueError, match="k: 65536 programs on launch grid axis z"):
        tiles.launch(FakeKernel(), (1, 1, 65536), like, "k")
    assert len(launched) == 1


@pytest.mark.parametrize("num_warps", [1, 2, 4, 8, 16, 32])
def test_every_power_of_two_warp_count_up_to_32_is_accepted(num_warps):
    from laudtriton.kernels import gather_conv as g_mod
    from laudtriton.kernels import maskers as mk

    assert cg.GemmConfig(num_warps=num_warps).num_warps == num_warps
    assert g_mod.TileConfig(num_warps=num_warps).num_warps == num_warps
    assert mk.MaskerConfig(num_warps=num_warps).num_warps == num_warps


def _gemm_case(case):
    """(args, kwargs) of channel_gemm with one thing wrong (``case``)."""
    x = torch.randn(2, 5, 16)
    w = torch.randn(24, 16)
    idx, n = _lists(2, 24, [3, 24], seed=4)
    kw = dict(out_idx=idx, n_out=n)
    if case == "in_idx_alone":
        x = torch.randn(2, 5, 24)
        w = torch.randn(16, 24)
        kw = dict(in_idx=idx)
    elif case == "n_out_alone":
        kw = dict(n_out=n)
    elif case == "negative_count":
        kw["n_out"] = torch.tensor([-1, 24], dtype=torch.int32)
    elif case == "count_batch":
        kw["n_out"] = torch.tensor([3, 24, 24], dtype=torch.int32)
    elif case == "empty_list":  # no index values to check, so only the counts can be
        x = torch.randn(2, 5, 0)
        kw = dict(in_idx=torch.zeros(2, 0, dtype=torch.int32),
                  n_in=torch.tensor([0, 3], dtype=torch.int32))
    elif case == "residual_rows":
        kw = dict(residual=torch.randn(2, 4, 24))
    elif case == "residual_listed":
        kw["residual"] = torch.randn(2, 5, 24)
    return (x, w, torch.zeros(w.shape[0])), kw


@pytest.mark.parametrize("case,match", [
    ("in_idx_alone", "pass in_idx with n_in and out_idx with n_out, or neither"),
    ("n_out_alone", "pass in_idx with n_in and out_idx with n_out, or neither"),
    ("negative_count", r"n_out values in \[-1, 24\]; accepted \[0, 24\]"),
    ("count_batch", r"out_idx \(2, 24\) / n_out \(3,\) must have the batch size 2"),
    ("empty_list", r"n_in values in \[0, 3\]; accepted \[0, 0\]"),
    ("residual_rows", r"residual has shape \(2, 4, 24\), expected \(2, 5, 24\)"),
    ("residual_listed", "residual is only accepted with dense outputs"),
])
def test_channel_gemm_refuses_unpaired_lists_bad_counts_and_residuals(case, match):
    args, kw = _gemm_case(case)
    with pytest.raises(ValueError, match=match):
        cg.channel_gemm(*args, **kw, config=SMALL)


@pytest.mark.parametrize("case,match", [
    ("narrow_x", r"compact x has 16 columns; in_idx has 20"),
    ("taps_width", r"taps has shape \(3, 9, 16\), expected \(3, 9, 20\)"),
    ("taps_count", r"taps has shape \(3, 8, 20\), expected \(3, 9, 20\)"),
    ("kernel_3x1", r"w must be \[NW, KW, 3, 3\], got \(20, 20, 3, 1\)"),
])
def test_channel_conv3x3_refuses_narrow_inputs_bad_taps_and_non_3x3_weights(case, match):
    batch, width = 3, 20
    idx, n = _lists(batch, width, [0, 9, width], seed=5)
    x = torch.randn(batch, 7, 5, width)
    w = torch.randn(width, width, 3, 3)
    taps = torch.randn(batch, 9, width)
    if case == "narrow_x":
        x = x[..., :16].contiguous()
    elif case == "taps_width":
        taps = taps[..., :16].contiguous()
    elif case == "taps_count":
        taps = taps[:, :8].contiguous()
    else:
        w = w[..., :1]
    with pytest.raises(ValueError, match=match):
        cc.channel_conv3x3(x, w, torch.randn(width), in_idx=idx, n_in=n, out_idx=idx,
                           n_out=n, taps=taps, config=SMALL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_channel_dots_are_ieee_in_fp32_and_not_in_half_types(dot_precisions, dtype):
    """``dot_acc`` multiplies fp32 tiles with ``input_precision="ieee"`` (the 1e-4 fp32
    contract; TF32 is ~3e-4 on a GPU) and half types with the default (tensor cores). The
    interpreter computes every precision alike: an inverted or lost IEEE flag passed
    every value test (mutation audit, session 52)."""
    batch, width = 2, 20
    idx, n = _lists(batch, width, [9, width], seed=5)
    x = torch.randn(batch, 5, 4, width).to(dtype)
    w = torch.randn(width, width, 3, 3).to(dtype)
    bias = torch.randn(width)
    kw = dict(in_idx=idx, n_in=n, out_idx=idx, n_out=n)
    _compare(cc.channel_conv3x3(x, w, bias, config=SMALL, **kw),
             cc.channel_conv3x3_torch(x, w, bias, **kw), n)
    conv3x3_dots = len(dot_precisions)
    xg, wg = x.reshape(batch, 20, width), w[:, :, 1, 1].contiguous()
    _compare(cg.channel_gemm(xg, wg, bias, config=SMALL, **kw),
             cg.channel_gemm_torch(xg, wg, bias, **kw), n)
    assert 0 < conv3x3_dots < len(dot_precisions)  # both kernels ran their dots
    if dtype == torch.float32:
        assert set(dot_precisions) == {"IEEE"}
    else:  # the default precision (tensor cores), whatever TRITON_F32_DEFAULT names it
        assert "IEEE" not in dot_precisions


@pytest.mark.parametrize("stride", [1, 2])
def test_channel_kernels_reach_a_lone_channel_past_full_k_tiles(guarded_empty, stride):
    """Input counts of 1 and 17 over 16-wide K tiles (a last K tile holding one channel)
    and output counts of 1 and 17 over 16-wide N tiles, odd 5x7 map: every listed input
    channel is summed (a K loop stopping at count − 1 dropped that lone channel: the
    tests' counts 9, 13 and 20 never end a tile on one), columns past n_out keep the NaN
    poison, and no store lands past the output's end (the last pixel's columns past its
    row spilled into the heap and aborted the run only by luck)."""
    batch, width = 2, 20
    idx, n = _lists(batch, width, [1, 17], seed=7)
    x = torch.randn(batch, 5, 7, width)
    w = torch.randn(width, width, 3, 3)
    bias, taps = torch.randn(batch, width), torch.randn(batch, 9, width)
    kw = dict(in_idx=idx, n_in=n, out_idx=idx, n_out=n)
    y = cc.channel_conv3x3(x, w, bias, taps=taps, stride=stride, relu=True, config=SMALL, **kw)
    _compare(y, cc.channel_conv3x3_torch(x, w, bias, taps=taps, stride=stride, relu=True,
                                         **kw), n)
    assert torch.isnan(y[0, ..., 1:]).all() and torch.isnan(y[1, ..., 17:]).all()
    xg, wg = x.reshape(batch, 35, width), w[:, :, 0, 0].t().contiguous().t()
    res = torch.randn(batch, 35, width)
    gkw = dict(in_idx=idx, n_in=n, residual=res, relu=True)
    yg = cg.channel_gemm(xg, wg, bias, config=SMALL, **gkw)
    _compare(yg, cg.channel_gemm_torch(xg, wg, bias, **gkw), None)
    assert len(guarded_empty) == 2  # y and yg were made by the fixture
    assert all(torch.isnan(t).all() for t in guarded_empty), "a store landed past y's end"


def test_channel_gemm_variant_refuses_spatial_masks(both_case):
    """A 'both' block's masks carry mask3 too: the channel kernels compute every pixel
    and ran the channel mask alone (max error 2.1 on this block), silently. The variant
    the message names computes the reference."""
    from laudtriton.ops import get_variant, triton_channel  # noqa: F401

    fb, xc, masks, ref = both_case
    with pytest.raises(ValueError, match="^channel_gemm: masks.mask3 is set .*'gather'"):
        get_variant("channel_gemm").run(fb, xc, masks, dict(SMALL.to_dict()))
    assert_close(get_variant("gather").run(fb, xc, masks, None), ref)


@pytest.mark.parametrize("stride", [2.0, True, "2"])
def test_channel_conv3x3_refuses_a_stride_that_is_not_the_int_1_or_2(stride):
    """2.0 passed ``stride in (1, 2)`` and failed in the output's allocation with a
    TypeError of torch.empty; True passed as 1."""
    idx, n = _lists(1, 16, [16], seed=1)
    with pytest.raises(ValueError, match=f"stride must be 1 or 2, got {stride!r}"):
        cc.channel_conv3x3(torch.randn(1, 5, 5, 16), torch.randn(16, 16, 3, 3),
                           torch.randn(16), in_idx=idx, n_in=n, out_idx=idx, n_out=n,
                           stride=stride)


def test_channel_gemm_names_a_0_dim_bias():
    """A 0-dim bias raised IndexError (tuple index out of range) in the checks."""
    with pytest.raises(ValueError, match=r"bias has shape \(\); accepted \[16\]"):
        cg.channel_gemm(torch.randn(1, 4, 16), torch.randn(16, 16), torch.tensor(1.0))
