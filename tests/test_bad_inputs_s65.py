"""Refusals of bad inputs found in session 65: a compiled model's refusal of an input with
an empty map (H or W = 0) advised compiling again "with an example input of the new
size", which no example can be; compile of a model without LAUD blocks took any
example_input."""

import pytest
import torch
from torch import nn

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


@pytest.mark.parametrize("example", ["an image", torch.full((1, 3, 8, 8), float("nan")),
                                     torch.zeros(1, 3, 8, 8, dtype=torch.int64)])
def test_a_model_without_laud_blocks_still_refuses_a_bad_example(example):
    """compile warned and returned a copy of a model with no LAUD block whatever
    ``example_input`` was (a string, NaN, integers); it now checks what it can of a given
    example, as for any model, before the warning."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match="example_input"):
        laudtriton.compile(model, example, backend="cpu", tune="off")


def test_a_model_without_laud_blocks_takes_a_good_example_with_its_warning():
    """The check refuses nothing a LAUD model would take: a finite image gives the
    warning and the eval-mode copy, as before."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.warns(UserWarning, match="no LAUD block"):
        copy = laudtriton.compile(model, torch.randn(1, 3, 8, 8), backend="cpu", tune="off")
    assert not copy.training and copy is not model
