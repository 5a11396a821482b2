"""Audit of what ``laudtriton demo`` reports: ``testing.logits_agreement``'s top-1 share
counts a sample only where neither of its logits rows holds NaN."""

import math

import pytest
import torch

from laudtriton.testing import logits_agreement


@pytest.mark.parametrize("where", ["all", "at-top"])
def test_a_nan_logits_row_has_no_top1_in_common(where):
    """torch.argmax takes NaN for the largest value: a compiled sample whose logits are all
    NaN has argmax 0, one with NaN at the reference's top class has argmax there, and
    both counted as the same top-1 class (share 1.0 beside an error of nan)."""
    ref = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    out = ref.clone()
    if where == "all":
        out[0] = float("nan")
    else:
        out[1, 1] = float("nan")
    err, top1 = logits_agreement(out, ref)
    assert math.isnan(err)
    assert top1 == 0.5


def test_a_nan_reference_row_has_no_top1_in_common():
    ref = torch.tensor([[float("nan"), 1.0], [0.0, 2.0]])
    out = torch.tensor([[float("nan"), 1.0], [0.0, 2.0]])
    assert logits_agreement(out, ref)[1] == 0.5


def test_finite_logits_keep_their_share():
    ref = torch.tensor([[3.0, 1.0], [0.0, 2.0], [5.0, float("inf")]])
    out = torch.tensor([[3.0, 1.0], [2.0, 0.0], [5.0, float("inf")]])
    err, top1 = logits_agreement(out[:2], ref[:2])
    assert top1 == 0.5 and err == pytest.approx(2 / 3)
    assert logits_agreement(out, ref)[1] == pytest.approx(2 / 3)  # inf is a largest value
