"""The ``compact`` variant (layer mode) against the reference LAUD bottleneck in eval."""

import copy
import random

import pytest
import torch

from laudtriton.nn import calibrate_block
from laudtriton.nn.block import BlockMasks
from laudtriton.ops import BlockSpec, fold_block, get_variant, layer
from laudtriton.ops.channel import slice_cache
from laudtriton.ops.layer import _runs, compact_block, compact_cost
from laudtriton.testing import assert_close, make_block, reference_on_masks

CL = torch.channels_last


def reference_with_gate(block, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """The reference block in float64 with a given layer gate [B] (0/1)."""
    grid = gate.double().view(-1, 1, 1, 1)
    return reference_on_masks(block, x, BlockMasks(grid, None, None, None))


def calibrated(inplanes, planes, stride, hw, batch, rate, seed=0):
    """(block, x, masks, float64 reference) with the gate calibrated to ``rate``."""
    blk = make_block(inplanes, planes, stride, mode="layer", seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, inplanes, *hw, generator=g)
    x = x + torch.randn(batch, inplanes, 1, 1, generator=g)  # gate decisions differ
    calibrate_block(blk, x, rate)
    with torch.no_grad():
        masks, _ = blk.compute_masks(x)
        masks64, _ = copy.deepcopy(blk).double().compute_masks(x.double())
        ref = blk.double()(x.double())
    assert torch.equal(masks.grid, masks64.grid.float()), "fp32/fp64 gates differ"
    return blk.float(), x, masks, ref


# (inplanes, planes, stride, hw, batch, rate)
CASES = [
    (32, 8, 1, (13, 11), 3, 0.5),   # identity = x
    (16, 8, 1, (7, 9), 3, 0.5),     # downsample at stride 1
    (16, 8, 2, (13, 11), 3, 0.5),   # stride 2 with downsample
    (24, 4, 2, (7, 9), 4, 0.5),
    (32, 8, 1, (7, 9), 1, 0.0),     # batch 1, gate off
    (16, 8, 2, (13, 11), 1, 1.0),   # batch 1, gate on
    (32, 8, 1, (7, 9), 3, 0.0),     # no sample active
    (16, 4, 2, (7, 9), 3, 1.0),     # every sample active
    (16, 8, 2, (1, 2), 3, 0.5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-"
                         f"{c[3][0]}x{c[3][1]}-b{c[4]}-r{c[5]}")
def test_compact_matches_reference(case):
    blk, x, masks, ref = calibrated(*case)
    batch, rate = case[4], case[5]
    gate = masks.grid.flatten()
    assert gate.sum().item() == round(rate * batch)
    out = compact_block(fold_block(blk), x.contiguous(memory_format=CL), masks)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=CL)
    assert_close(out, ref)


@pytest.mark.parametrize("stride,hw", [(1, (7, 9)), (2, (8, 5))])
def test_compact_float64_unpacked_path(stride, hw):
    """Float64 weights take the plain F.conv2d path; it matches the fp64 reference tightly."""
    blk, x, masks, ref = calibrated(16, 8, stride, hw, 3, 0.5, seed=2)
    out = compact_block(fold_block(blk, dtype=torch.float64),
                        x.double().contiguous(memory_format=CL), masks)
    assert out.dtype == torch.float64
    assert_close(out, ref, tol=1e-10)


@pytest.mark.parametrize("gather_max_pixels", [0, 10**9], ids=["slices", "gathered"])
def test_compact_property_random_shapes(gather_max_pixels, monkeypatch):
    """Seeded random block shapes, batches and gates (every gate pattern is possible), with
    active samples run as batch slices or gathered."""
    monkeypatch.setattr(layer, "GATHER_MAX_PIXELS", gather_max_pixels)
    rng = random.Random(4321)
    for trial in range(8):
        planes = rng.randint(1, 6)
        inplanes = rng.choice([4 * planes, rng.randint(3, 20)])
        stride = rng.choice([1, 2])
        hw = (rng.randint(1, 12), rng.randint(1, 12))
        batch = rng.randint(1, 6)
        ds = stride != 1 or inplanes != 4 * planes
        blk = make_block(inplanes, planes, stride, mode="layer", downsample=ds, seed=trial)
        g = torch.Generator().manual_seed(trial)
        x = torch.randn(batch, inplanes, *hw, generator=g)
        gate = (torch.rand(batch, generator=g) < rng.random()).float()
        masks = BlockMasks(gate[:, None, None, None], None, None, None)
        out = compact_block(fold_block(blk), x.contiguous(memory_format=CL), masks)
        assert_close(out, reference_with_gate(blk, x, gate), name=f"trial {trial}")
        xr = torch.relu(x)  # in place: a ReLU output given away
        out = compact_block(fold_block(blk), xr.clone().contiguous(memory_format=CL), masks,
                            inplace=True)
        assert_close(out, reference_with_gate(blk, xr, gate), name=f"trial {trial} in place")


def test_runs():
    assert _runs([True]) == [(0, 1, True)]
    assert _runs([1, 1, 0, 1, 0, 0]) == [(0, 2, 1), (2, 3, 0), (3, 4, 1), (4, 6, 0)]


@pytest.mark.parametrize("gate", [[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
def test_downsample_once_per_sample(gate):
    """The downsample runs on every sample exactly once, whatever the gate."""
    blk = make_block(16, 8, 2, mode="layer")
    fb = fold_block(blk)
    x = torch.randn(5, 16, 9, 7).contiguous(memory_format=CL)
    masks = BlockMasks(torch.tensor(gate, dtype=torch.float32)[:, None, None, None],
                       None, None, None)
    cache = slice_cache(fb)
    ds = cache.downsample(fb, (9, 7))
    seen = []

    def counting(xs, relu, add=None):
        seen.append(xs.shape[0])
        return ds(xs, relu=relu, add=add)

    cache._downsample[(9, 7)] = counting
    out = compact_block(fb, x, masks)
    assert sum(seen) == 5
    assert_close(out, reference_with_gate(blk, x, torch.tensor(gate)))


def test_compact_registered_and_cost():
    v = get_variant("compact")
    spec = BlockSpec(64, 16, 64, 1, False, (14, 13), "layer", batch=8)
    assert v.supports(spec) and "cpu" in v.backends and v.modes == ("layer",)
    for other in (spec.with_(mode="spatial", granularity=2),  # a layer gate [B, 1, 1, 1] only
                  spec.with_(mode="spatial", granularity=1),
                  spec.with_(mode="both", granularity=2, channel_groups=4),
                  spec.with_(mode="channel", channel_groups=4)):
        assert not v.supports(other), other.mode
    assert compact_cost(spec, 1.0).flops == spec.dense_flops()
    assert compact_cost(spec, 0.5).flops == spec.dense_flops() / 2
    assert compact_cost(spec, 0.0).flops == 0
    ds = spec.with_(in_channels=32, stride=2, downsample=True)
    ho, wo = ds.out_hw
    assert compact_cost(ds, 0.0).flops == 8 * 32 * 64 * ho * wo


@pytest.mark.parametrize("grid", [None, torch.ones(2, 1, 2, 2), torch.ones(3, 1, 1, 1)])
def test_compact_bad_masks(grid):
    fb = fold_block(make_block(16, 8, 1, mode="layer"))
    x = torch.randn(2, 16, 5, 5).contiguous(memory_format=CL)
    with pytest.raises(ValueError, match=r"accepted \[2, 1, 1, 1\]"):
        compact_block(fb, x, BlockMasks(grid, None, None, None))


def test_compact_cost_counts_half_types_at_two_bytes_and_the_gather_in_between():
    """Bytes: float16 and bfloat16 elements are 2 bytes (float32's half); a gate rate
    strictly between 0 and 1 moves the active samples' gather and scatter on top of what
    rates 0 and 1 move."""
    spec = BlockSpec(64, 16, 64, 1, False, (14, 13), "layer", batch=8)
    for rate in (0.0, 0.5, 1.0):
        full = compact_cost(spec, rate).bytes
        for dt in ("float16", "bfloat16"):
            assert compact_cost(spec.with_(dtype=dt), rate).bytes == full / 2, (dt, rate)
    b0, b5, b1 = (compact_cost(spec, r).bytes for r in (0.0, 0.5, 1.0))
    assert b0 == b1 < b5
    # the gather and scatter of 4 of 8 samples: their input and output, 4 bytes each
    assert b5 - b1 == 4 * 4 * (64 * 14 * 13 + 64 * 14 * 13)
