"""Session 65's review of ``laudtriton.nn``: public mask helpers and maskers given a bad
argument raised torch's or Python's internal error (TypeError, AttributeError,
RuntimeError), or returned NaN masks in silence, where a ValueError naming the argument
was due."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from laudtriton.nn import (
    MaskerChannelConvLinear,
    MaskerChannelMLP,
    expand_channel_mask,
    mask_grid_size,
)
from laudtriton.nn.maskers import MapTooSmall


@pytest.mark.parametrize("out_hw", [8, ("8", "8"), (8, 8, 8), None, (8, None)],
                         ids=["int", "strings", "three", "none", "side-none"])
def test_mask_grid_size_refuses_a_bad_out_hw_naming_it(out_hw):
    """mask_grid_size (exported by laudtriton.nn) did not check out_hw: an int raised
    TypeError (cannot unpack), strings and None TypeError ('>' between int and str), a
    triple Python's bare 'too many values to unpack'. (A side 0 stays MapTooSmall, as
    test_nn_model has it.)"""
    with pytest.raises(ValueError, match=r"mask_grid_size: out_hw must be a pair of ints "
                                         r">= 1") as err:
        mask_grid_size(out_hw, 2)
    assert not isinstance(err.value, MapTooSmall)


def test_mask_grid_size_gives_python_ints_for_array_sides():
    """Sides given as a numpy array or an integer tensor came back as numpy ints or
    0-d tensors; they are the pair of Python ints the other inputs give, and S larger
    than the map is still MapTooSmall."""
    for hw in (np.array([8, 6]), torch.tensor([8, 6]), (np.int64(8), 6)):
        grid = mask_grid_size(hw, 2)
        assert grid == (4, 3) and all(type(v) is int for v in grid)
    with pytest.raises(MapTooSmall, match="granularity 8 is larger than its feature map"):
        mask_grid_size((8, 6), 8)


@pytest.mark.parametrize("mask", [np.ones((1, 2), np.float32), [[1.0, 0.0]], None],
                         ids=["numpy", "list", "none"])
def test_expand_channel_mask_refuses_a_mask_that_is_no_tensor(mask):
    """expand_channel_mask raised AttributeError ('numpy.ndarray' object has no attribute
    'dim') for a mask that is not a tensor."""
    with pytest.raises(ValueError, match="expand_channel_mask: a \\[B, G\\] mask"):
        expand_channel_mask(mask, 4)


@pytest.mark.parametrize("masker", [MaskerChannelMLP(16, 2), MaskerChannelConvLinear(16, 2)],
                         ids=["MLP", "conv_linear"])
@pytest.mark.parametrize("hw", [(0, 3), (3, 0)])
def test_channel_maskers_refuse_an_empty_map(masker, hw):
    """A channel masker on an input with an empty map (H or W 0): the MLP masker averaged
    over no pixel and returned a NaN mask (zeros in eval) without a word, the conv_linear
    one raised torch's RuntimeError from its conv. The spatial masker refused it already."""
    x = torch.zeros(1, 16, *hw)
    with pytest.raises(ValueError, match=r"expected a 4D input \[B, 16, H, W\] with H, W "
                                         r">= 1"):
        masker(x)
    # an empty batch is still taken (a model's forward on no sample)
    mask, _ = masker.eval()(torch.zeros(0, 16, 3, 3))
    assert mask.shape == (0, 2)


@pytest.mark.parametrize("model_dtype,x_dtype", [(torch.float32, torch.float64),
                                                 (torch.float64, torch.float32)],
                         ids=["float32-model-float64-x", "float64-model-float32-x"])
def test_autocast_does_not_let_a_float64_mismatch_through(model_dtype, x_dtype):
    """check_input took any floating x under autocast, but autocast never casts float64:
    a float32 block given a float64 input (or a float64 block a float32 one) under
    torch.autocast raised torch's RuntimeError from conv1 ('expected scalar type Double
    but found BFloat16') instead of the ValueError it gives outside autocast."""
    from laudtriton.nn import LaudBottleneck

    block = LaudBottleneck(16, 4, dyn_mode="spatial", granularity=2).to(model_dtype).eval()
    x = torch.randn(1, 16, 8, 8, dtype=x_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match=f"x is {x_dtype}; the model is {model_dtype}"):
            block(x)
        # inputs autocast does cast are still taken
        assert block(x.to(model_dtype)).shape == (1, 16, 8, 8)
        if model_dtype == torch.float32:
            assert block(x.to(torch.float16)).shape == (1, 16, 8, 8)
