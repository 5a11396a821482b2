"""``laudtriton.testing.assert_close``, the bound every exactness test uses."""

from __future__ import annotations

import math

import numpy as np
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


def test_assert_same_masks_refuses_another_count_of_blocks():
    """A compiled block checked against a whole network (or the other way round) fails
    on the block counts, not on the first block alone."""
    import laudtriton
    from laudtriton.nn import LaudResNet
    from laudtriton.testing import assert_same_masks, make_block

    block = make_block(16, 4, granularity=2)
    x = torch.randn(2, 16, 8, 8)
    cb = laudtriton.compile(block, x, backend="cpu", tune="off")
    net = LaudResNet((1, 2, 1, 1), width_mult=0.25, input_size=None, granularity="2-2-1-1")
    with pytest.raises(AssertionError, match=r"^1 compiled blocks, 5 reference$"):
        assert_same_masks(cb, net)


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


@pytest.mark.parametrize("tol", [math.nan, math.inf, -1e-4, True, "1e-4"])
def test_assert_close_refuses_a_tol_that_is_not_a_finite_number(tol):
    """A NaN tol passed every output (err > nan is false), True counted as 1."""
    a = torch.ones(3)
    with pytest.raises(ValueError, match="assert_close: tol must be "):
        assert_close(a * 2, a, tol=tol)


def test_assert_close_takes_a_numpy_or_tensor_tol():
    a = torch.ones(3)
    for tol in (np.float32(1e-4), torch.tensor(1e-4)):
        assert_close(a + 5e-5, a, tol=tol)
        with pytest.raises(AssertionError, match="max error"):
            assert_close(a * 2, a, tol=tol)


def test_assert_close_refuses_complex_tensors():
    """Complex values were cast to their real part: 1+1j and 1-1j compared equal."""
    with pytest.raises(ValueError, match="assert_close: out must be a real tensor"):
        assert_close(torch.tensor([1 + 1j]), torch.tensor([1 - 1j]))


@pytest.mark.parametrize("out_shape, ref_shape", [((3, 4), (1, 4)), ((3, 4), (3, 5)),
                                                  ((4,), (4,)), ((0, 4), (0, 4))])
def test_logits_agreement_refuses_what_is_not_one_batch_of_logits(out_shape, ref_shape):
    """A [1, classes] reference broadcast against every sample's logits."""
    from laudtriton.testing import logits_agreement

    with pytest.raises(ValueError, match="logits_agreement: "):
        logits_agreement(torch.randn(out_shape), torch.randn(ref_shape))


def _spatial_block_masks():
    from laudtriton.nn.block import BlockMasks
    from laudtriton.testing import make_block

    block = make_block(16, 4, mode="spatial", granularity=2)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        block(x)
    return block, x, BlockMasks, block.last_masks


def test_reference_on_masks_runs_the_masks_it_is_given():
    from laudtriton.testing import reference_on_masks

    block, x, BlockMasks, m = _spatial_block_masks()
    with torch.no_grad():
        want = block(x).double()
    assert_close(reference_on_masks(block, x, m), want, tol=1e-6)
    # a grid alone is expanded as the maskers do
    assert_close(reference_on_masks(block, x, BlockMasks(m.grid, None, None, None)), want,
                 tol=1e-6)


def test_reference_on_masks_refuses_masks_no_block_could_be_given():
    """Broadcast, fractional or inconsistent masks gave an expected output that no
    compiled block accepts (its check_masks refuses each)."""
    from laudtriton.testing import reference_on_masks

    block, x, BlockMasks, m = _spatial_block_masks()
    flipped = m.mask3.clone()
    flipped[0, 0, 0, 0] = 1 - flipped[0, 0, 0, 0]
    bad = {
        "shape": BlockMasks(m.grid[:1], None, None, None),
        "values other than 0 and 1": BlockMasks(m.grid * 0.5, None, None, None),
        "not the expansion": BlockMasks(m.grid, flipped, m.mask1, None),
        "masks.channel has shape": BlockMasks(m.grid, m.mask3, m.mask1,
                                              torch.ones(2, 2)),
        "masks.grid has shape None": BlockMasks(None, None, None, None),
        "must be a BlockMasks": None,
    }
    for what, masks in bad.items():
        with pytest.raises(ValueError, match=what):
            reference_on_masks(block, x, masks)


def test_interleaved_medians_are_medians(monkeypatch):
    """Each function's time is the median of its timed calls (not the fastest): calls of
    1, 5 and 3 s on a stand-in clock give 3 s; the warm-up calls are not counted."""
    from laudtriton.tune import timing

    clock, durations = [0.0], [100.0, 1.0, 5.0, 3.0]  # a warm-up call, then 3 timed

    def call():
        clock[0] += durations.pop(0)

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    assert timing.interleaved_medians([call], warmup=1, reps=3) == [3.0]
    assert durations == []


def test_assert_close_with_tol_0_asks_for_equality():
    """tol=0 is a bound like any other (it is not refused): an exact copy passes, the
    smallest difference fails."""
    a = torch.linspace(-1.0, 1.0, 16, dtype=torch.float64)
    assert_close(a.clone(), a, tol=0)
    with pytest.raises(AssertionError, match="max error"):
        assert_close(a + 1e-12, a, tol=0.0)


def test_assert_close_scales_by_the_reference_not_the_output():
    """The bound is tol x max|ref|: an output far larger than its reference is not
    excused by its own size (scaled by max|out|, 1.5 against 1.0 passed at tol 0.4)."""
    ref = torch.tensor([1.0, 0.0])
    out = torch.tensor([1.5, 0.0])
    assert_close(out, ref, tol=0.5)  # 0.5 <= 0.5 x 1.0
    with pytest.raises(AssertionError, match=r"max error 0\.5 > 0\.4 x max\|ref\| 1"):
        assert_close(out, ref, tol=0.4)


def test_logits_agreement_error_is_relative_to_the_reference():
    """The error is max |out - ref| / max |ref|: a compiled model's logits three times
    too large read 2.0, not the 0.67 of a division by max |out|."""
    from laudtriton.testing import logits_agreement

    ref = torch.tensor([[1.0, 0.0], [0.5, 0.0]])
    out = 3.0 * ref
    err, top1 = logits_agreement(out, ref)
    assert err == pytest.approx(2.0) and top1 == 1.0
