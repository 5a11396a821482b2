"""Session 65e review: differential fuzzing of every variant against the reference block
(``testing.reference_on_masks``, float64) on inputs the other tests do not draw: maps down
to 1x1 (2x3, S equal to the map, S not dividing it, non-square, stride 2 on odd sizes),
odd channel counts (Cin 1, 3, 9, 13; width 1, 3, 5, 7), batch 1/3/5 with a different mask
*pattern* per sample (all on, all off, one cell, both checkerboards, a random rate),
channel groups of one channel and of the whole width, modes spatial/channel/layer/both,
downsample blocks at stride 1 and 2, large, tiny and negative inputs, float64, the
in-place entry (``run_inplace``) and, through ``laudtriton.compile``, NCHW, channels_last,
non-contiguous and batch-broadcast inputs with the maskers' own masks (checked identical).

The review ran ~10 minutes of this (several thousand direct variant runs on the CPU
variants, ~150 in float16/bfloat16, ~200 compiled blocks, ~370 Triton variant runs
under the interpreter, tiny LaudResNets at 4..24 pixel images) and found no output past
the bound and no mask that differed; these seeds are a fast sample of it."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

import laudtriton
from laudtriton.kernelchecks import poisoned
from laudtriton.nn import calibrate_block
from laudtriton.nn.block import BlockMasks
from laudtriton.nn.maskers import expand_mask1, upsample_mask
from laudtriton.ops import fold_block, get_variant, triton_channel, triton_spatial  # noqa: F401
from laudtriton.ops.spec import BlockSpec
from laudtriton.testing import assert_close, assert_same_masks, make_block, reference_on_masks

CL = torch.channels_last
CPU_VARIANTS = ("dense", "gather", "patch", "slice", "compact")
GRID_KINDS = ("on", "off", "single", "checker", "checker2", "rand")


def _grid(kinds: list[str], gh: int, gw: int, g: torch.Generator) -> torch.Tensor:
    """[B, 1, gh, gw] 0/1 grid, sample i of pattern kinds[i]."""
    out = torch.zeros(len(kinds), 1, gh, gw)
    parity = (torch.arange(gh)[:, None] + torch.arange(gw)[None]) % 2
    for i, kind in enumerate(kinds):
        if kind == "on":
            out[i] = 1
        elif kind == "single":
            r, c = (int(torch.randint(n, (1,), generator=g)) for n in (gh, gw))
            out[i, 0, r, c] = 1
        elif kind in ("checker", "checker2"):
            out[i, 0] = (parity == (kind == "checker2")).float()
        elif kind == "rand":
            out[i, 0] = (torch.rand(gh, gw, generator=g) < 0.5).float()
    return out


def _channel(kinds: list[str], groups: int, g: torch.Generator) -> torch.Tensor:
    """[B, G] 0/1 channel mask, sample i of pattern kinds[i] (checkerboards: alternate
    groups)."""
    out = torch.zeros(len(kinds), groups)
    for i, kind in enumerate(kinds):
        if kind == "on":
            out[i] = 1
        elif kind == "single":
            out[i, torch.randint(groups, (1,), generator=g)] = 1
        elif kind in ("checker", "checker2"):
            out[i] = (torch.arange(groups) % 2 == (kind == "checker2")).float()
        elif kind == "rand":
            out[i] = (torch.rand(groups, generator=g) < 0.5).float()
    return out


def _masks(spec: BlockSpec, kinds: list[str], g: torch.Generator) -> BlockMasks:
    """BlockMasks of ``spec`` whose sample i follows kinds[i] (layer: "on"/"single"/
    "checker" gate on, the others off)."""
    grid = mask3 = mask1 = channel = None
    if spec.mode == "layer":
        grid = torch.tensor([float(k in ("on", "single", "checker")) for k in kinds])
        grid = grid.view(-1, 1, 1, 1)
    elif spec.spatial:
        grid = _grid(kinds, *spec.grid, g)
    if grid is not None:
        mask3 = upsample_mask(grid, spec.out_hw)
        mask1 = expand_mask1(mask3, spec.stride, spec.in_hw)
    if spec.channel:
        channel = _channel(kinds[::-1], spec.channel_groups, g)  # other pattern per sample
    return BlockMasks(grid, mask3, mask1, channel)


def _draw(rng: random.Random) -> dict:
    """One random block: tiny odd maps and widths, S up to the whole map, k from 1 to the
    width, batch 1/3/5 with a pattern per sample, input scale, ReLU'd or not, float64."""
    stride = rng.choice([1, 1, 2])
    planes = rng.choice([1, 2, 3, 5, 7, 8])
    h, w = rng.randint(1, 12), rng.randint(1, 12)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    b = rng.choice([1, 3, 5])
    return dict(
        mode=rng.choice(["spatial", "channel", "layer", "both"]), stride=stride,
        planes=planes, cin=rng.choice([1, 3, 4 * planes, 4 * planes, 9, 13]), hw=(h, w),
        s=rng.randint(1, min(ho, wo)),
        k=rng.choice([d for d in range(1, planes + 1) if planes % d == 0]),
        kinds=[rng.choice(GRID_KINDS) for _ in range(b)],
        ds=rng.choice([None, None, True]), seed=rng.randrange(10**6),
        dtype=rng.choice([torch.float32, torch.float32, torch.float64]),
        scale=rng.choice([1.0, 1e3, 1e-3, -5.0]), relu=rng.random() < 0.5)


# Hand-picked rows: 1x1 map; 2x3 at S = 2 (a 1x1 grid, S not dividing the width 3);
# S = the whole non-square map; stride 2 on 1xW and odd maps; k = the whole width (G = 1);
# k = 1 (G = width); batch 5 with every pattern; a downsample at stride 1 (Cin == 4·planes).
EDGE = [
    dict(mode="spatial", stride=1, planes=3, cin=5, hw=(1, 1), s=1, k=1,
         kinds=["on", "off", "single"], ds=None, seed=1, dtype=torch.float32, scale=1.0,
         relu=False),
    dict(mode="both", stride=1, planes=5, cin=20, hw=(2, 3), s=2, k=5,
         kinds=["on", "checker", "off"], ds=None, seed=2, dtype=torch.float32, scale=-5.0,
         relu=False),
    dict(mode="spatial", stride=1, planes=2, cin=8, hw=(5, 7), s=5, k=1,
         kinds=["on", "off", "single", "checker", "checker2"], ds=True, seed=3,
         dtype=torch.float64, scale=1.0, relu=True),
    dict(mode="spatial", stride=2, planes=3, cin=13, hw=(1, 9), s=1, k=3,
         kinds=["checker", "checker2", "rand"], ds=None, seed=4, dtype=torch.float32,
         scale=1e3, relu=True),
    dict(mode="both", stride=2, planes=4, cin=9, hw=(9, 7), s=2, k=1,
         kinds=["checker", "single", "on", "off", "checker2"], ds=None, seed=5,
         dtype=torch.float32, scale=1.0, relu=False),
    dict(mode="channel", stride=2, planes=7, cin=3, hw=(3, 2), s=1, k=1,
         kinds=["checker", "checker2", "single", "on", "off"], ds=None, seed=6,
         dtype=torch.float32, scale=1e-3, relu=False),
    dict(mode="channel", stride=1, planes=6, cin=24, hw=(4, 5), s=1, k=6,
         kinds=["on", "off", "on"], ds=True, seed=7, dtype=torch.float64, scale=-5.0,
         relu=True),
    dict(mode="layer", stride=2, planes=5, cin=1, hw=(5, 3), s=1, k=1,
         kinds=["on", "off", "on", "off", "off"], ds=None, seed=8, dtype=torch.float32,
         scale=1e3, relu=True),
]


def _run_cpu_variants(c: dict) -> set[str]:
    """Every CPU variant of c's mode that supports its spec (``run``, and ``run_inplace``
    on a ReLU'd input) against the reference on the same masks; returns the names run."""
    dt = c["dtype"]
    block = make_block(c["cin"], c["planes"], c["stride"], c["mode"], c["s"],
                       channel_granularity=c["k"], downsample=c["ds"], seed=c["seed"])
    g = torch.Generator().manual_seed(c["seed"])
    x = torch.randn(len(c["kinds"]), c["cin"], *c["hw"], generator=g, dtype=dt) * c["scale"]
    x = x.relu() if c["relu"] else x
    spec = BlockSpec.from_block(block, tuple(x.shape), dtype=str(dt)[6:])
    masks = _masks(spec, c["kinds"], g)
    ref = reference_on_masks(block, x, masks)
    fb = fold_block(block, dtype=dt)
    ran = set()
    for v in map(get_variant, CPU_VARIANTS):
        if spec.mode not in v.modes or not v.supports(spec):
            continue
        for inplace in (False, True) if v.run_inplace and c["relu"] else (False,):
            xin = x.clone().contiguous(memory_format=CL)
            keep = xin.clone()
            out = (v.run_inplace if inplace else v.run)(fb, xin, masks, {})
            assert out.dtype == dt and out.is_contiguous(memory_format=CL)
            assert_close(out, ref, name=f"{v.name} inplace={inplace} {c}")
            if not inplace:
                assert torch.equal(xin, keep), f"{v.name} overwrote its input"
            ran.add(v.name)
    return ran


@pytest.mark.parametrize("i", range(len(EDGE)))
def test_cpu_variants_on_edge_blocks(i):
    """The hand-picked rows above, every CPU variant of the mode."""
    assert _run_cpu_variants(EDGE[i])


def test_cpu_variants_on_random_blocks_and_mask_patterns():
    """60 seeded draws of ``_draw``: every CPU variant ran on some of them, float64 and
    both strides were drawn."""
    rng = random.Random(6505)
    ran: set[str] = set()
    cases = [_draw(rng) for _ in range(60)]
    for c in cases:
        ran |= _run_cpu_variants(c)
    assert ran == set(CPU_VARIANTS)
    assert {c["stride"] for c in cases} == {1, 2}
    assert any(c["dtype"] == torch.float64 for c in cases)
    assert any(c["hw"] == (1, 1) or min(c["hw"]) == 1 for c in cases)


def _layout(x: torch.Tensor, how: str) -> torch.Tensor:
    """x as NCHW, channels_last, a non-contiguous (transposed, strided) view, or a
    batch-broadcast (stride-0) view of its first sample's copy."""
    if how == "cl":
        return x.contiguous(memory_format=CL)
    if how == "noncontig":
        big = torch.zeros(x.shape[0], x.shape[1], x.shape[3], 2 * x.shape[2], dtype=x.dtype)
        view = big[..., ::2].transpose(2, 3)
        view.copy_(x)
        return view
    if how == "expand":
        return x[:1].expand(x.shape[0], -1, -1, -1)
    return x


# (mode, variant, Cin, planes, stride, hw, S, k, batch, rate, layout, dtype)
COMPILED = [
    ("both", "gather", 9, 3, 2, (7, 5), 1, 1, 3, 0.5, "noncontig", torch.float32),
    ("spatial", "patch", 8, 2, 1, (6, 4), 2, 1, 5, None, "expand", torch.float64),
    ("channel", "slice", 13, 6, 2, (3, 1), 1, 2, 5, 1.0, "nchw", torch.float32),
    ("layer", "compact", 5, 3, 1, (2, 3), 1, 1, 5, 0.5, "cl", torch.float32),
]


@pytest.mark.parametrize("case", COMPILED, ids=lambda c: f"{c[0]}-{c[1]}-{c[10]}")
def test_compiled_block_on_layouts_with_its_own_masks(case):
    """A compiled block with one variant forced, on NCHW, channels_last, non-contiguous and
    stride-0 batch inputs: the output and masks are the reference block's, on the example
    and on a new input of another batch; a replay of its masks and the in-place entry
    (``reuse_input`` on a ReLU'd input) too; the caller's input is left as it was."""
    mode, variant, cin, planes, stride, hw, s, k, b, rate, how, dt = case
    block = make_block(cin, planes, stride, mode, s, channel_granularity=k, seed=b,
                       channel_masker_reduction=2).to(dt)
    g = torch.Generator().manual_seed(b)
    x = (torch.randn(b, cin, *hw, generator=g, dtype=dt)
         * torch.linspace(0.5, 3, b, dtype=dt).view(b, 1, 1, 1)
         + torch.randn(b, cin, 1, 1, generator=g, dtype=dt))
    if rate is not None:
        calibrate_block(block, x, rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compile's notes on tiny maps
        cb = laudtriton.compile(block, _layout(x, how), backend="cpu", tune="off",
                                progress=False, variants=[variant], dtype=dt)
    x2 = torch.randn(b + 1, cin, *hw, generator=g, dtype=dt) * -3
    with torch.no_grad():
        for inp in (x, x2):
            xl = _layout(inp.clone(), how)
            keep = xl.clone()
            ref = block(keep)  # (a stride-0 layout repeats the first sample)
            assert_close(cb(xl), ref, name=f"{case}")
            assert torch.equal(xl, keep)
            assert_same_masks(cb, block)
            assert_close(cb(xl, masks=[cb.blocks[0].last_masks]), ref, name="replay")
            xr = keep.relu().contiguous(memory_format=CL)
            assert_close(cb.blocks[0](xr.clone(memory_format=CL), reuse_input=True),
                         block(xr), name="reuse_input")
            assert_same_masks(cb, block)
            assert {r.variant for r in cb.last_stats} == {variant}


TINY = {"spatial": {s: dict(block_m=16, block_n=16, block_k=16, num_warps=1, num_stages=1)
                    for s in ("conv1", "conv2", "conv3")},
        "channel": dict(block_p=16, block_n=16, block_k=16, num_warps=1, num_stages=1)}


# (variant, Cin, planes, stride, hw, S or k, per-sample patterns, scale)
TRITON = [
    ("fused", 3, 3, 2, (5, 7), 1, ["checker", "single", "checker2"], 1e3),
    ("masked", 9, 2, 1, (2, 3), 2, ["on", "off", "on"], -2.0),
    ("channel_gemm", 5, 6, 2, (3, 4), 2, ["checker", "single", "checker2"], 1.0),
]


@pytest.mark.parametrize("case", TRITON, ids=lambda c: c[0])
def test_triton_variants_on_edge_masks(case):
    """The Triton variants under the interpreter (outputs start as NaN: an unwritten
    element fails) on checkerboard and single-cell masks, a 2x3 map whose 1x1 grid S = 2
    does not divide, stride 2 on odd maps, odd Cin, large and negative inputs."""
    variant, cin, planes, stride, hw, cell, kinds, scale = case
    mode = "channel" if variant == "channel_gemm" else "spatial"
    kw = dict(channel_granularity=cell) if mode == "channel" else dict(granularity=cell)
    block = make_block(cin, planes, stride, mode, seed=len(kinds) + cin, **kw)
    g = torch.Generator().manual_seed(cin)
    x = torch.randn(len(kinds), cin, *hw, generator=g) * scale
    spec = BlockSpec.from_block(block, tuple(x.shape))
    masks = _masks(spec, kinds, g)
    v = get_variant(variant)
    assert v.supports(spec)
    with poisoned():
        out = v.run(fold_block(block), x.contiguous(memory_format=CL), masks, TINY[mode])
    assert_close(out, reference_on_masks(block, x, masks), name=str(case))
