"""``Variant.run_inplace``: the variants that may write their output into a given-away
ReLU input match the reference block, per sample and at every rate (registry docstring)."""

import pytest
import torch

from laudtriton.nn.calibrate import calibrate_block
from laudtriton.ops.fold import fold_block
from laudtriton.ops.registry import all_variants
from laudtriton.ops.spec import BlockSpec
from laudtriton.testing import assert_close, make_block

CL = torch.channels_last

# (mode, Cin, planes, stride, S, (H, W)); Cin == 4·planes and stride 1: x is the identity
CASES = [
    ("spatial", 32, 8, 1, 2, (8, 10)),
    ("spatial", 32, 8, 1, 3, (13, 11)),  # cells of unequal size
    ("spatial", 16, 8, 2, 2, (12, 8)),   # downsample: x is not the identity
    ("both", 32, 8, 1, 2, (8, 6)),
    ("channel", 32, 8, 1, 1, (9, 7)),
    ("channel", 16, 8, 2, 1, (9, 7)),
    ("layer", 32, 8, 1, 1, (6, 6)),      # small map: active samples gathered
    ("layer", 32, 8, 1, 1, (30, 29)),    # large map: active samples run as batch slices
    ("layer", 16, 8, 2, 1, (9, 8)),
]


def _params():
    out = []
    for case in CASES:
        mode, cin, planes, stride, s, hw = case
        spec = BlockSpec(cin, planes, 4 * planes, stride, cin != 4 * planes or stride > 1, hw,
                         mode, s, 4 if mode in ("channel", "both") else 0, batch=4)
        for v in all_variants():
            if v.run_inplace is None or mode not in v.modes or not v.supports(spec):
                continue
            for rate in (0.0, 0.5, 1.0):
                out.append(pytest.param(v, rate, case, id=f"{v.name}-{mode}-r{rate}-"
                                        f"{cin}x{planes}-s{stride}-S{s}-{hw[0]}x{hw[1]}"))
    return out


@pytest.mark.parametrize("variant,rate,case", _params())
@torch.no_grad()
def test_run_inplace_matches_reference(variant, rate, case):
    mode, cin, planes, stride, s, hw = case
    block = make_block(cin, planes, stride, mode, s, channel_granularity=2, seed=7)
    # a ReLU output; a per-sample offset makes the pooled features, hence the channel
    # masks, differ between samples (they did not without it)
    x = torch.relu(torch.randn(4, cin, *hw) + 2 * torch.randn(4, cin, 1, 1))
    x = x.contiguous(memory_format=CL)
    # channel mode: the rate is the channel masks' (calibrate_block calibrates channel
    # masks to channel_rate when given: they were at 0.5 in every channel case); both
    # mode: the spatial masks at the rate, the channel masks at 0.5
    channel_rate = {"channel": rate, "both": 0.5}.get(mode)  # None: the block has no
    calibrate_block(block, x, rate, channel_rate=channel_rate)  # channel masker
    ref = block(x)
    masks, _ = block.compute_masks(x)
    if mode in ("layer", "spatial", "both") and rate == 0.5:  # decisions differ per sample
        assert not all(torch.equal(g, masks.grid[0]) for g in masks.grid)
    if mode in ("channel", "both"):
        if channel_rate == 0.5:  # decisions differ per sample
            assert not all(torch.equal(c, masks.channel[0]) for c in masks.channel)
        else:
            assert masks.channel.mean().item() == channel_rate
    given = x.clone()
    out = variant.run_inplace(fold_block(block), given, masks, {})
    assert out.shape == ref.shape and out.is_contiguous(memory_format=CL)
    assert_close(out, ref, name=f"{variant.name} {mode} rate {rate} in place")
    # run on the same masks, out of place, it still leaves its input alone
    again = x.clone()
    assert_close(variant.run(fold_block(block), again, masks, {}), ref)
    assert torch.equal(again, x)


def test_variants_with_run_inplace():
    """The CPU engine's variants offer it; Triton variants run out of place."""
    names = {v.name for v in all_variants() if v.run_inplace is not None}
    assert {"dense", "gather", "patch", "slice", "compact"} <= names


def test_time_variants_restores_the_input_of_in_place_calls():
    """The sweep times an in-place variant on a scratch copy of relu(x) restored before
    every call (untimed), so no call sees an earlier call's output (values that would
    double per call and overflow)."""
    from dataclasses import replace

    from laudtriton.nn.block import BlockMasks
    from laudtriton.ops.registry import get_variant
    from laudtriton.tune.measure import time_variants

    fb = fold_block(make_block(16, 4, 1, "layer"))
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    masks = BlockMasks(torch.ones(2, 1, 1, 1), None, None, None)
    seen = []

    def run_inplace(fb_, xs, masks_, cfg):
        seen.append(xs.clone())
        xs.mul_(2.0)  # what a residual added in place does to the values, roughly
        return xs

    dense = get_variant("dense")
    probe = replace(dense, name="probe", run_inplace=run_inplace)
    spec = BlockSpec(16, 4, 16, 1, False, (6, 6), "layer", 1, batch=2)
    out = time_variants(fb, spec, x, masks, [probe, dense], warmup=1, reps=3)
    assert set(out) == {"probe", "dense"} and all(
        t > 0 for d in out.values() for t in d.values())
    assert len(seen) == 5  # one untimed first call, 1 warm-up, 3 timed
    for s in seen:
        assert torch.equal(s, torch.relu(x))


def test_time_variants_scores_inf_what_fails_while_timed_or_gives_a_wrong_shape(caplog):
    """On CPU only the first call was guarded: a config failing later (out of memory in
    its warm-up) stopped the compile or the sweep; and an output of another shape was
    timed, and won (3.8 us against dense's 150)."""
    from dataclasses import replace

    from laudtriton.nn.block import BlockMasks
    from laudtriton.ops.registry import get_variant
    from laudtriton.tune.measure import time_variants

    fb = fold_block(make_block(16, 4, 1, "layer"))
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    masks = BlockMasks(torch.ones(2, 1, 1, 1), None, None, None)
    dense = get_variant("dense")
    calls = []

    def late_failure(fb_, xs, masks_, cfg):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("out of memory (simulated)")
        return dense.run(fb_, xs, masks_, cfg)

    late = replace(dense, name="late", run=late_failure, run_inplace=None)
    narrow = replace(dense, name="narrow", run=lambda fb_, xs, m, cfg: xs[:, :1],
                     run_inplace=None)
    double = replace(dense, name="double", run=lambda fb_, xs, m, cfg: xs.double(),
                     run_inplace=None)  # the right shape, another dtype
    spec = BlockSpec(16, 4, 16, 1, False, (6, 6), "layer", 1, batch=2)
    errors = {}
    out = time_variants(fb, spec, x, masks, [late, narrow, double, dense], warmup=1,
                        reps=3, errors=errors)
    assert out["late"] == {"{}": float("inf")} and out["narrow"] == {"{}": float("inf")}
    assert out["double"] == {"{}": float("inf")} and ("double", "{}") in errors
    assert 0 < out["dense"]["{}"] < float("inf")
    assert len(calls) == 2  # the first call, then the warm-up's failure: not called again
    assert "out of memory (simulated)" in str(errors[("late", "{}")])
    assert "expected (2, 16, 6, 6)" in str(errors[("narrow", "{}")])
    assert "late config {} failed while timed" in caplog.text


@pytest.mark.parametrize("mode", ["spatial", "both", "channel", "layer"])
def test_a_block_folded_under_inference_mode_runs_every_variant(mode):
    """``ops.fold.fold_block`` under ``torch.inference_mode()`` made the folded weights
    inference tensors, whose version counters the weight caches read: every variant but
    channel dense raised RuntimeError. (``ops.fold_block`` is the same function.)"""
    from laudtriton import ops
    from laudtriton.ops.fold import fold_block as public_fold

    assert ops.fold_block is public_fold

    block = make_block(32, 8, 1, mode, 2 if mode in ("spatial", "both") else 1,
                       **({"channel_granularity": 2} if mode in ("channel", "both") else {}))
    x = torch.randn(3, 32, 8, 8).contiguous(memory_format=CL)
    calibrate_block(block, x, 0.5)
    with torch.no_grad():
        ref = block.eval()(x)
        masks = block.last_masks
    spec = BlockSpec.from_block(block, x.shape)
    ran = []
    with torch.inference_mode():
        fb = public_fold(block)
        assert not fb.w1.is_inference() and not fb.w1.requires_grad
        for v in all_variants():
            if mode in v.modes and "cpu" in v.backends and v.supports(spec):
                assert_close(v.run(fb, x, masks, {}), ref, name=v.name)
                ran.append(v.name)
    assert "dense" in ran and len(ran) > 1
