"""The spatial Triton kernels (gather_conv1x1, conv3x3, conv1x1_residual) under the
interpreter against their float64 torch references, with poisoned outputs."""

import pytest
import torch

from laudtriton.kernels import conv1x1_residual as res_mod
from laudtriton.kernels import conv3x3 as c3_mod
from laudtriton.kernels import gather_conv as g_mod
from laudtriton.kernels import indices
from laudtriton.testing import assert_close

SMALL = g_mod.TileConfig(16, 16, 16, 1, 1)
WIDE_K = g_mod.TileConfig(16, 32, 32, 1, 1)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, H, W, K, N): odd sizes, K over one BLOCK_K, N under and over one BLOCK_N
SHAPES = [(2, 7, 9, 20, 5), (1, 5, 3, 37, 18)]


def _mask(shape, rate):
    if rate in (0.0, 1.0):
        return torch.full(shape, bool(rate))
    m = torch.rand(shape) < rate
    m.view(-1)[0] = True  # at least one active entry
    return m


def _lists(mask, padded):
    """(idx, count): the padded device list (masked variant) or the exact one (fused)."""
    idx, count = indices.compact(mask)
    return (idx, count) if padded else (idx[: int(count)], count)


@pytest.fixture
def poison(monkeypatch):
    """Make every launcher's output NaN where the kernel must write it."""
    def buffer(bsz, h, wd, n, dtype, device):
        return torch.zeros(bsz, h + 2, wd + 2, n, dtype=dtype, device=device)

    monkeypatch.setattr(g_mod, "_alloc_buffer", buffer)  # interior poisoned per test below
    monkeypatch.setattr(c3_mod, "_alloc_rows",
                        lambda r, n, dt, dev: torch.full((r, n), float("nan"), dtype=dt,
                                                         device=dev))

    def prefill(identity, idx, count):
        out = torch.relu(identity)
        out.view(-1, identity.shape[-1])[idx[: int(count)].long()] = float("nan")
        return out

    monkeypatch.setattr(res_mod, "_prefill", prefill)

    def poison_gather(idx, count):
        def buf(bsz, h, wd, n, dtype, device):
            out = torch.zeros(bsz, h + 2, wd + 2, n, dtype=dtype, device=device)
            p = idx[: int(count)].long()
            out[:, 1:-1, 1:-1][p // (h * wd), (p % (h * wd)) // wd, p % wd] = float("nan")
            return out
        monkeypatch.setattr(g_mod, "_alloc_buffer", buf)

    return poison_gather


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("padded", [False, True])
def test_gather_conv1x1(poison, dtype, shape, rate, padded):
    b, h, w, k, n = shape
    x = torch.randn(b, h, w, k).to(dtype)
    wt = torch.randn(n, k).to(dtype)
    bias = torch.randn(n)
    idx, count = _lists(_mask((b, 1, h, w), rate), padded)
    poison(idx, count)
    out = g_mod.gather_conv1x1(x, idx, count, wt, bias, SMALL)
    ref = g_mod.gather_conv1x1_torch(x, idx, count, wt, bias)
    assert out.shape == (b, h + 2, w + 2, n) and out.dtype == dtype
    assert_close(out, ref)
    # the border and every unlisted cell stay exactly zero (conv2's zero padding)
    assert bool((out.double()[ref == 0] == 0).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_conv3x3(poison, dtype, shape, stride, rate):
    b, h, w, k, n = shape
    # a bordered buffer with random interior (and zero border, as gather leaves it)
    buf = torch.zeros(b, h + 2, w + 2, k)
    buf[:, 1:-1, 1:-1] = torch.randn(b, h, w, k)
    buf = buf.to(dtype)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    wt = torch.randn(3, 3, k, n).to(dtype)
    bias = torch.randn(n)
    # padded at rate 0 too: the masked variant's list with count 0, rows allocated and
    # none written (unpadded, rate 0 left an empty output and nothing to check)
    padded = rate < 1.0
    idx, count = _lists(_mask((b, 1, ho, wo), rate), padded)
    assert idx.shape[0] > int(count) or rate == 1.0
    # the wide tiles (wider than K and N) where they run: at rate 0 nothing launches
    out = c3_mod.conv3x3(buf, idx, count, wt, bias, stride, WIDE_K if rate == 1.0 else SMALL)
    c = int(count)
    assert out.shape == (idx.shape[0], n) and out.dtype == dtype
    ref = c3_mod.conv3x3_torch(buf, idx, count, wt, bias, stride)
    if c:  # (assert_close needs a non-empty reference)
        assert_close(out[:c], ref)
    assert ref.shape == (c, n)
    assert bool(torch.isnan(out[c:]).all())  # past the count: nothing written


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("padded", [False, True])
def test_conv1x1_residual(poison, dtype, shape, rate, padded):
    b, ho, wo, k, n = shape
    idx, count = _lists(_mask((b, 1, ho, wo), rate), padded)
    a = torch.randn(idx.shape[0], k).to(dtype)
    wt = torch.randn(n, k).to(dtype)
    bias = torch.randn(n)
    ident = torch.randn(b, ho, wo, n).to(dtype)
    out = res_mod.conv1x1_residual(a, idx, count, wt, bias, ident, SMALL)
    ref = res_mod.conv1x1_residual_torch(a, idx, count, wt, bias, ident)
    assert out.shape == ident.shape and out.dtype == dtype
    assert_close(out, ref)


@pytest.mark.parametrize("config", [None, g_mod.DEFAULT], ids=["fp32_default", "64x64"])
def test_default_config_runs(config):
    """The GPU-sized default tiles of the three kernels under the interpreter, once, on a
    tiny problem: the float32 default (32x64x32) and the half types' 64x64 one (in the
    float32 space too)."""
    idx, count = indices.compact(torch.ones(1, 1, 3, 5))
    _three_stages(torch.randn(1, 3, 5, 16), idx, count, 16, config)


@pytest.mark.parametrize("dtype,name", [(torch.float32, "fp32"), (torch.float16, "fp16")])
def test_launchers_without_a_config_launch_the_aot_default_of_their_dtype(launched, dtype,
                                                                          name):
    """Given no config, each spatial launcher runs the config its ``aot_specs()`` mark
    default for the input's dtype, the one the AOT tests check for spills: in float32 the
    32-row tile (the 64x64 one spills on sm_80, docs/kernels.md), else 64x64."""
    seen = launched.patch(g_mod, c3_mod, res_mod)
    b, h, w, k = 1, 3, 5, 16
    idx, count = indices.compact(torch.ones(b, 1, h, w))
    wt, bias = torch.randn(k, k).to(dtype), torch.randn(k)
    g_mod.gather_conv1x1(torch.randn(b, h, w, k).to(dtype), idx, count, wt, bias)
    rows = c3_mod.conv3x3(torch.zeros(b, h + 2, w + 2, k, dtype=dtype), idx, count,
                          torch.randn(3, 3, k, k).to(dtype), bias, 1)
    res_mod.conv1x1_residual(rows, idx, count, wt, bias, torch.randn(b, h, w, k).to(dtype))
    want = g_mod.DEFAULT_FP32 if dtype == torch.float32 else g_mod.DEFAULT
    assert want.block_m == (32 if name == "fp32" else 64)
    for mod in (g_mod, c3_mod, res_mod):
        assert seen[mod.__name__] == launched.aot_defaults(mod.aot_specs(), name) == {
            launched.of_config(want)}, mod.__name__


def _gather_args():
    x = torch.randn(1, 3, 5, 16)
    idx, count = indices.compact(torch.ones(1, 1, 3, 5))
    return dict(x=x, idx=idx, count=count, w=torch.randn(8, 16), b=torch.randn(8))


@pytest.mark.parametrize("change, match", [
    (dict(x=torch.randn(1, 3, 5, 16).double()), "x has dtype"),
    (dict(x=torch.randn(1, 3, 16, 5).transpose(2, 3)), "x is not contiguous"),
    (dict(x=torch.randn(3, 5, 16)), "x has shape"),
    (dict(w=torch.randn(8, 15)), "w has shape"),
    (dict(w=torch.randn(8, 16).half()), "w has dtype"),
    (dict(b=torch.randn(7)), "b has shape"),
    (dict(b=torch.randn(8, device="meta")), "b is on meta"),
    (dict(idx=torch.arange(15)), "idx has dtype"),
    (dict(idx=torch.arange(15, dtype=torch.int32) + 1), r"spans \[1, 15\]"),
    (dict(idx=torch.arange(15, dtype=torch.int32) - 1), r"spans \[-1, 13\]"),
    (dict(count=torch.tensor([16], dtype=torch.int32)), "count is 16"),
    (dict(count=torch.tensor(3, dtype=torch.int32)), "count has shape"),
])
def test_gather_bad_input(change, match):
    args = _gather_args()
    args.update(change)
    with pytest.raises(ValueError, match=match):
        g_mod.gather_conv1x1(**args, config=SMALL)


def test_conv3x3_bad_input():
    buf = torch.zeros(1, 5, 7, 16)
    idx, count = indices.compact(torch.ones(1, 1, 3, 5))
    wt, bias = torch.randn(3, 3, 16, 8), torch.randn(8)
    with pytest.raises(ValueError, match="stride is 3"):
        c3_mod.conv3x3(buf, idx, count, wt, bias, 3)
    with pytest.raises(ValueError, match=r"w has shape .*expected \[3, 3, 16, \*\]"):
        c3_mod.conv3x3(buf, idx, count, torch.randn(8, 16, 3, 3), bias, 1)
    with pytest.raises(ValueError, match=r"spans \[0, 14\]; accepted \[0, 6\)"):
        c3_mod.conv3x3(buf, idx, count, wt, bias, 2)  # 3x5 output at stride 2 is 2x3


def test_conv1x1_residual_bad_input():
    idx, count = indices.compact(torch.ones(1, 1, 3, 5))
    a, wt, bias = torch.randn(15, 8), torch.randn(16, 8), torch.randn(16)
    ident = torch.randn(1, 3, 5, 16)
    with pytest.raises(ValueError, match="identity has shape"):
        res_mod.conv1x1_residual(a, idx, count, wt, bias, ident[..., :8].contiguous())
    with pytest.raises(ValueError, match="identity has dtype"):
        res_mod.conv1x1_residual(a, idx, count, wt, bias, ident.half())
    with pytest.raises(ValueError, match="idx has shape"):
        res_mod.conv1x1_residual(a[:14], idx, count, wt, bias, ident)


def test_tile_config_validation():
    with pytest.raises(ValueError, match="block_k=8"):
        g_mod.TileConfig(16, 16, 8)
    with pytest.raises(ValueError, match="block_m=48"):
        g_mod.TileConfig(48, 16, 16)
    with pytest.raises(ValueError, match="unknown keys"):
        g_mod.TileConfig.from_dict({"block_p": 16})
    assert g_mod.TileConfig.from_dict(g_mod.DEFAULT.to_dict()) == g_mod.DEFAULT


@pytest.mark.parametrize("mod", [g_mod, c3_mod, res_mod])
def test_aot_specs(mod):
    specs = mod.aot_specs()
    assert sum(s.default for s in specs) == 3  # the default config in fp16, fp32, bf16
    for s in specs:
        assert set(s.constexprs) == {"UPCAST", "BLOCK_M", "BLOCK_N", "BLOCK_K"}
        assert not s.constexprs["UPCAST"]
        assert all(v >= 16 and v & (v - 1) == 0 for k, v in s.constexprs.items()
                   if k.startswith("BLOCK"))


@pytest.mark.parametrize("mod", [g_mod, c3_mod, res_mod])
def test_default_and_first_configs_are_compiled_ahead_of_time_in_every_dtype(mod):
    """gpucheck's fp32 and bf16 variant checks launch the default and the first (smallest)
    config: both are compiled for sm_80/sm_90 in fp16, fp32 and bf16; the others in fp16."""
    specs = mod.aot_specs()
    for cfg in g_mod.SPACE:
        tile = f"m{cfg.block_m}n{cfg.block_n}k{cfg.block_k}"
        dts = {dt for dt in ("fp16", "fp32", "bf16") if any(
            s.name.endswith(f"_{dt}_{tile}") and s.num_warps == cfg.num_warps
            and s.num_stages == cfg.num_stages for s in specs)}
        want = {"fp16", "fp32", "bf16"} if cfg in (g_mod.DEFAULT, g_mod.SPACE[0]) else {"fp16"}
        assert dts == want, (tile, dts)
    assert len(specs) == len(g_mod.SPACE) + 4


def test_gather_refuses_a_negative_count():
    args = _gather_args()
    args["count"] = torch.tensor([-1], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"count is -1; accepted 0 \.\. len\(idx\) = 15"):
        g_mod.gather_conv1x1(**args, config=SMALL)


@pytest.mark.parametrize("hw", [(5, 2), (2, 7)])
def test_conv3x3_refuses_a_buffer_under_3x3(hw):
    """A bordered buffer is at least 3x3 (a 1x1 map): a narrower one is refused by name,
    whichever side is short."""
    buf = torch.zeros(1, *hw, 16)
    idx, count = indices.compact(torch.ones(1, 1, 1, 1))
    with pytest.raises(ValueError, match=rf"buf has spatial size {hw[0]}x{hw[1]}"):
        c3_mod.conv3x3(buf, idx, count, torch.randn(3, 3, 16, 8), torch.randn(8), 1)


def test_conv1x1_residual_refuses_a_pixel_past_the_identity():
    """Pixel indices run over B·Ho·Wo (the identity's pixels), not its B·Ho·Wo·N values."""
    idx, count = indices.compact(torch.ones(1, 1, 3, 5))
    idx = idx.clone()
    idx[3] = 15
    a, wt, bias = torch.randn(15, 8), torch.randn(16, 8), torch.randn(16)
    ident = torch.randn(1, 3, 5, 16)
    with pytest.raises(ValueError, match=r"spans \[0, 15\]; accepted \[0, 15\)"):
        res_mod.conv1x1_residual(a, idx, count, wt, bias, ident)


def _three_stages(x, idx, count, n, cfg):
    """gather_conv1x1 -> conv3x3 (stride 1) -> conv1x1_residual over the listed pixels of
    x [B, H, W, K] with random weights and n channels, each stage against its reference.
    Returns conv3x3's rows (those past the count unwritten)."""
    b, h, w, k = x.shape
    c = int(count)
    w1, b1 = torch.randn(n, k), torch.randn(n)
    buf = g_mod.gather_conv1x1(x, idx, count, w1, b1, cfg)
    assert_close(buf, g_mod.gather_conv1x1_torch(x, idx, count, w1, b1))
    w2, b2 = torch.randn(3, 3, n, n), torch.randn(n)
    rows = c3_mod.conv3x3(buf, idx, count, w2, b2, 1, cfg)
    assert_close(rows[:c], c3_mod.conv3x3_torch(buf, idx, count, w2, b2, 1))
    w3, b3, ident = torch.randn(n, n), torch.randn(n), torch.randn(b, h, w, n)
    out = res_mod.conv1x1_residual(rows, idx, count, w3, b3, ident, cfg)
    assert_close(out, res_mod.conv1x1_residual_torch(rows, idx, count, w3, b3, ident))
    return rows


def test_tiles_taller_than_wide_cover_every_output_channel(poison):
    """A config whose block_m exceeds block_n (the space's 128x64) still launches one
    program per block_n output channels: N = 40 over 16-wide N tiles with 32-row tiles."""
    cfg = g_mod.TileConfig(32, 16, 16, 1, 1)
    b, h, w, k, n = 1, 5, 4, 16, 40
    idx, count = _lists(_mask((b, 1, h, w), 1.0), False)
    poison(idx, count)
    _three_stages(torch.randn(b, h, w, k), idx, count, n, cfg)


def test_spatial_dots_are_ieee_in_fp32(poison, dot_precisions):
    """Every fp32 tl.dot of the three spatial kernels (conv3x3's own and ``rows_dot``'s)
    runs with ``input_precision="ieee"``: TF32 is ~3e-4 of max|ref| on a GPU, over the fp32
    1e-4 contract, and the interpreter computes both alike, so no value test saw the flag
    dropped (mutation audit, session 52)."""
    b, h, w, k, n = 1, 5, 7, 16, 16
    idx, count = _lists(_mask((b, 1, h, w), 0.5), False)
    poison(idx, count)
    _three_stages(torch.randn(b, h, w, k), idx, count, n, SMALL)
    assert len(dot_precisions) >= 1 + 9 + 1  # gather, nine taps, residual
    assert set(dot_precisions) == {"IEEE"}


@pytest.mark.parametrize("padded", [False, True])
def test_spatial_kernels_reach_a_lone_row_and_channel_past_full_tiles(poison, padded):
    """17 listed pixels, 17 input and 17 output channels over 16-wide M, K and N tiles,
    so that the last tile of each holds one element, on an odd 5x7 map: a K loop stopping
    at K − 1 (conv3x3's or ``rows_dot``'s) dropped that lone channel, and passed, since
    the tests' K (20, 37) never end a tile on one (mutation audit, session 52)."""
    b, h, w, k = 1, 5, 7, 17
    mask = torch.zeros(b, 1, h, w, dtype=torch.bool)
    mask.view(-1)[torch.randperm(h * w)[:17]] = True
    idx, count = _lists(mask, padded)
    assert int(count) == 17
    poison(idx, count)
    rows = _three_stages(torch.randn(b, h, w, k), idx, count, k, SMALL)
    assert rows.shape[0] == idx.shape[0] and bool(torch.isnan(rows[17:]).all())


@pytest.mark.parametrize("stride", [2.0, True, "2"])
def test_conv3x3_refuses_a_stride_that_is_not_the_int_1_or_2(stride):
    """2.0 passed ``stride not in (1, 2)`` and failed inside the kernel (an fp32 pointer
    offset, an InterpreterError here); True passed as 1."""
    buf = torch.zeros(1, 7, 7, 16)
    idx, count = indices.compact(torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match=f"stride is {stride!r}; accepted the int 1 or 2"):
        c3_mod.conv3x3(buf, idx, count, torch.randn(3, 3, 16, 16), torch.randn(16), stride)
