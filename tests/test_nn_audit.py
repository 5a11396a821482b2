"""Audit of laudtriton.nn: a downsample of the wrong shape, bool and integer masks in the
mask helpers, a spatial masker's grid, and numbers too large for a float."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from laudtriton.nn import (
    KDLoss,
    LaudBottleneck,
    MaskerSpatial,
    SparsityLoss,
    expand_mask1,
    upsample_mask,
)
from laudtriton.testing import make_block


@pytest.mark.parametrize("downsample", [
    nn.Conv2d(16, 1, 1, stride=2),  # one channel: broadcast over the output's 16
    nn.AdaptiveAvgPool2d(1),  # a 1x1 map: broadcast over the output's 4x4
    nn.Conv2d(16, 16, 1, stride=1),  # the input's map, 8x8: torch's shape error
], ids=["one-channel", "one-pixel", "unstrided"])
@pytest.mark.parametrize("mode", ["spatial", "layer", "channel"])
def test_a_downsample_of_another_shape_is_refused_not_broadcast(downsample, mode):
    """The identity must have the output's shape, [B, 4·planes, Ho, Wo]: a downsample to
    one channel or one pixel was broadcast in silence (an output of the right shape and
    wrong values), one of the input's map gave torch's error naming no argument."""
    torch.manual_seed(0)
    block = LaudBottleneck(16, 4, stride=2, downsample=downsample, dyn_mode=mode).eval()
    with pytest.raises(ValueError, match=r"downsample\(x\) is .* the block's output"):
        block(torch.randn(2, 16, 8, 8))


def test_a_downsample_of_the_output_shape_still_runs():
    block = make_block(16, 4, stride=2, mode="spatial", granularity=2)
    y = block(torch.randn(2, 16, 8, 8))
    assert y.shape == (2, 16, 4, 4)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int32, torch.int64])
def test_mask_helpers_take_bool_and_integer_masks(dtype):
    """upsample_mask and expand_mask1 on a 0/1 mask of bool or an integer dtype (a
    BlockMasks' mask1 is bool) give the float mask's result: torch's nearest upsampling
    and max pooling refused bool (and upsampling int64) with an error naming no
    argument."""
    g = torch.Generator().manual_seed(3)
    grid = (torch.rand(2, 1, 3, 3, generator=g) > 0.5).float()
    want3 = upsample_mask(grid, (7, 7))
    got3 = upsample_mask(grid.to(dtype), (7, 7))
    assert got3.dtype == dtype
    assert torch.equal(got3.float(), want3)
    want1 = expand_mask1(want3, 2, (13, 13))
    assert want1.any() and not want1.all()
    assert torch.equal(expand_mask1(want3.to(dtype), 2, (13, 13)), want1)


@pytest.mark.parametrize("grid", [(0, 0), (2, 0), (-1, 2), (2.5, 2), (2,)])
def test_spatial_masker_names_a_bad_grid(grid):
    masker = MaskerSpatial(4)
    with pytest.raises(ValueError, match="MaskerSpatial: grid must be a pair of ints"):
        masker(torch.randn(1, 4, 4, 4), grid)


def test_spatial_masker_takes_a_grid_as_a_list_or_array():
    import numpy as np

    masker = MaskerSpatial(4).eval()
    x = torch.randn(1, 4, 4, 4)
    want, flops = masker(x, (2, 2))
    for grid in ([2, 2], np.array([2, 2]), torch.Size([2, 2])):
        got, f = masker(x, grid)
        assert torch.equal(got, want) and f == flops == 4 * 4 * 2 * 2
        assert type(f) is int


@pytest.mark.parametrize("make", [
    lambda: KDLoss(temperature=10**400),
    lambda: SparsityLoss(target=0.5, num_epochs=10**400),
    lambda: SparsityLoss(target=0.5, num_epochs=10).bounds(10**400),
], ids=["kd-temperature", "num-epochs", "epoch"])
def test_numbers_too_large_for_a_float_are_named(make):
    """An int beyond float range is not a finite number: a ValueError naming the
    argument, not math.isfinite's OverflowError."""
    with pytest.raises(ValueError, match="temperature|num_epochs|epoch"):
        make()
