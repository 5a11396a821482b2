"""Audit of the co-design search's argument checks (``codesign.design_search``)."""

from __future__ import annotations

import numpy as np
import pytest

import laudtriton.ops  # noqa: F401  (registers every variant)
from laudtriton.codesign import design_search


@pytest.mark.parametrize("modes", [("spatial",), ("spatial", "layer"), ("channel", "both")])
def test_no_granularity_with_a_spatial_mode_is_refused(modes):
    """granularities=() dropped the spatial and both modes without a word: with the
    default modes the search ranked channel/layer designs only (16, not 81)."""
    with pytest.raises(ValueError, match=r"^granularities \(\): give a non-empty "):
        design_search("laud_resnet50", "a100", 0.5, modes=modes, granularities=())


def test_no_granularity_without_a_spatial_mode_is_fine():
    designs = design_search("laud_resnet50", "a100", 0.5, modes=("layer",), granularities=[])
    assert [d.label() for d in designs] == ["layer-layer-layer-layer _-_-_-_"]


@pytest.mark.parametrize("granularities", [4, None, 2.5])
def test_granularities_not_a_sequence_are_named(granularities):
    """An int raised TypeError ('int' object is not iterable)."""
    with pytest.raises(ValueError, match=r"^granularities .*: give a non-empty sequence"):
        design_search("laud_resnet50", "a100", 0.5, granularities=granularities)


@pytest.mark.parametrize("modes, match", [(None, r"^modes None: give a sequence"),
                                          (5, r"^modes 5: give a sequence"),
                                          ((1,), r"^modes '1': unknown \[1\]")])
def test_modes_of_another_type_are_named(modes, match):
    """None or 5 raised TypeError (not iterable); (1,) raised TypeError in the message
    (str.join of an int)."""
    with pytest.raises(ValueError, match=match):
        design_search("laud_resnet50", "a100", 0.5, modes=modes)


def test_granularities_of_any_iterable_still_rank_as_a_tuple():
    a = design_search("laud_resnet50", "a100", 0.5, modes=("spatial",), granularities=(4, 8))
    b = design_search("laud_resnet50", "a100", 0.5, modes=("spatial",),
                      granularities=np.array([4, 8]))
    c = design_search("laud_resnet50", "a100", 0.5, modes=("spatial",),
                      granularities=iter([4, 8]))  # spent by the first check, once
    assert len(a) == 2 * 2 * 2 * 1 and a == b == c  # S 8 > the 7x7 of stage 4
