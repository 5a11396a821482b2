"""A compiled model's refusal of an input with an empty map (H or W = 0) advised
compiling again "with an example input of the new size", which no example can be; it
now says that the map is empty."""

import pytest
import torch

import laudtriton
from laudtriton.nn import LaudResNet


@pytest.mark.parametrize("hw", [(0, 32), (32, 0)])
def test_an_empty_map_is_refused_as_empty(hw):
    """Both sides: an empty height and an empty width."""
    model = LaudResNet((1, 1, 1, 1), mode="spatial", granularity="2-2-1-1", width_mult=0.25,
                       input_size=None, num_classes=7).eval()
    cm = laudtriton.compile(model, torch.randn(1, 3, 32, 32), backend="cpu", tune="off")
    with pytest.raises(ValueError, match=r"does not match the compiled plan \[B, 3, 32, 32\]; "
                                         r"the map is empty \(H and W must be >= 1\)$"):
        cm(torch.randn(1, 3, *hw))
