"""``laudtriton.testing.assert_close``, the bound every exactness test uses."""

from __future__ import annotations

import math

import pytest
import torch

from laudtriton.testing import assert_close


def test_within_the_bound_passes_and_past_it_fails():
    ref = torch.tensor([4.0, -2.0, 1.0])
    assert_close(ref + 3e-4, ref)  # 3e-4 <= 1e-4 x max|ref| = 4e-4
    with pytest.raises(AssertionError, match="max error"):
        assert_close(ref + 5e-4, ref)
    with pytest.raises(AssertionError, match="shape"):
        assert_close(ref[:2], ref)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("side", ["out", "ref"])
def test_non_finite_on_either_side_fails(bad, side):
    """A NaN or inf reference made the bound NaN or inf, which every output met."""
    good = torch.tensor([5.0, 3.0])
    worse = torch.tensor([1.0, bad])
    out, ref = (worse, good) if side == "out" else (good, worse)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(out, ref)


def test_logits_agreement_hand_values():
    from laudtriton.testing import logits_agreement

    ref = torch.tensor([[4.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    out = torch.tensor([[4.0, 1.5, 0.0], [0.0, 1.0, 3.0]], dtype=torch.float16)
    err, top1 = logits_agreement(out, ref)
    assert err == pytest.approx(2.0 / 4.0) and top1 == 0.5
    assert logits_agreement(ref, ref) == (0.0, 1.0)


def test_assert_same_masks_names_the_block_and_mask():
    import laudtriton
    from laudtriton.testing import assert_same_masks, make_block

    block = make_block(16, 4, mode="both", granularity=2, channel_granularity=2)
    x = torch.randn(2, 16, 8, 8)
    cb = laudtriton.compile(block, x, backend="cpu", tune="off")
    with torch.no_grad():
        cb(x)
        block(x)
    assert_same_masks(cb, block)
    block.last_masks.channel[0, 0] = 1 - block.last_masks.channel[0, 0]
    with pytest.raises(AssertionError, match="block: masks.channel differs"):
        assert_same_masks(cb, block)


def test_make_block_is_its_seed_alone_and_leaves_the_global_random_state():
    import torch

    from laudtriton.testing import make_block

    torch.manual_seed(1)
    a = make_block(16, 4, seed=3)
    after_a = torch.rand(2)
    torch.manual_seed(1)
    expect = torch.rand(2)
    torch.manual_seed(2)
    b = make_block(16, 4, seed=3)
    assert torch.equal(after_a, expect)  # it used to reseed the global generator
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


def test_median_time_refuses_no_runs():
    import pytest

    from laudtriton.tune.timing import median_time

    for reps, warmup in ((0, 3), (5, -1)):
        with pytest.raises(ValueError, match="reps must be >= 1 and warmup >= 0"):
            median_time(lambda: None, "cpu", warmup=warmup, reps=reps)
    assert median_time(lambda: None, "cpu", warmup=0, reps=1) >= 0


def test_interleaved_rounds_rotate_pair_setups_and_pause_the_collector():
    """Each round starts one function later (none always follows the same other one),
    a setup runs right before its own function, and the garbage collector is paused
    during the timed rounds and restored after."""
    import gc

    from laudtriton.tune.timing import interleaved_medians

    calls, collecting = [], []

    def fn(name):
        def f():
            calls.append(name)
            collecting.append(gc.isenabled())
        return f

    def prep(name):
        return lambda: calls.append("setup " + name)

    was = gc.isenabled()
    out = interleaved_medians([fn("a"), fn("b"), fn("c")], warmup=0, reps=3,
                              setup=[None, prep("b"), None])
    assert len(out) == 3 and all(t >= 0 for t in out)
    assert calls == ["a", "setup b", "b", "c",
                     "setup b", "b", "c", "a",
                     "c", "a", "setup b", "b"]
    assert not any(collecting) and gc.isenabled() == was
