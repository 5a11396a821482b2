"""Review s66h of laudtriton.nn's constructors, maskers and calibration, and of the
seeding of ``bench.build_model`` and ``laudtriton demo``: each test names what was
wrong. CPU only, small blocks and models (input 32x32, width_mult 0.25 at most)."""

from __future__ import annotations

import argparse
import copy
import math
import warnings

import pytest
import torch

from laudtriton.nn import (
    LaudBottleneck,
    LaudResNet,
    MaskerChannelConvLinear,
    MaskerChannelMLP,
    MaskerSpatial,
    calibrate_block,
    laud_resnet50,
)


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer", "both"])
def test_block_on_an_empty_batch_records_no_nan_stats(mode):
    """A LaudBottleneck's forward on a batch of 0 recorded ``last_stats`` whose rates and
    FLOPs were NaN (the mean over no sample), which a user's running average over
    batches then carried: it records None now, as LaudResNet's ``last_stats`` already
    was after an empty batch, and its (empty) masks."""
    block = LaudBottleneck(16, 4, dyn_mode=mode, granularity=2, channel_granularity=2).eval()
    block(torch.randn(2, 16, 8, 8))
    assert block.last_stats is not None
    out = block(torch.randn(0, 16, 8, 8))
    assert out.shape == (0, 16, 8, 8)
    assert block.last_stats is None
    assert block.last_masks is not None  # the masks of no sample: empty, well defined
    block(torch.randn(1, 16, 8, 8))  # a batch again: stats again, finite
    assert math.isfinite(float(block.last_stats.flops))


def test_model_on_an_empty_batch_leaves_no_nan_stats_in_its_blocks():
    """A LaudResNet forward on a batch of 0 set the model's ``last_stats`` to None but left
    NaN rates in every block's ``last_stats`` (read per block, e.g. for a rate plot)."""
    model = laud_resnet50(input_size=32, granularity=1, width_mult=0.25).eval()
    model(torch.randn(0, 3, 32, 32))
    assert model.last_stats is None
    assert all(b.last_stats is None for _, b in model.blocks())


@pytest.mark.parametrize("width_mult", [1e300, 1e20, 1e12, 10**30])
def test_width_mult_too_large_is_a_value_error_naming_it(width_mult):
    """width_mult=1e300 (or 1e20) raised torch's TypeError ("Overflow when unpacking long
    long"), and 1e12 its RuntimeError ("Storage size calculation overflowed"), from deep
    in nn.Conv2d: a ValueError naming width_mult now, before any layer is built."""
    with pytest.raises(ValueError, match="width_mult"):
        LaudResNet((1, 1, 1, 1), width_mult=width_mult, input_size=32)


@pytest.mark.parametrize("width_mult", [math.inf, -math.inf, math.nan, 0, 0.0, -1.0,
                                        1e-300, True, "1.0", None])
def test_width_mult_other_absurd_values_are_value_errors_naming_it(width_mult):
    """inf, nan, 0, negative, too small, a bool, a string, None: ValueErrors naming
    width_mult (these were already; kept with the large ones)."""
    with pytest.raises(ValueError, match="width_mult"):
        LaudResNet((1, 1, 1, 1), width_mult=width_mult, input_size=32)


@pytest.mark.parametrize("name", ["num_classes", "in_channels"])
def test_absurd_num_classes_or_in_channels_is_a_value_error_naming_it(name):
    """num_classes (or in_channels) 10**19 raised torch's TypeError from nn.Linear (or the
    stem's conv): a ValueError naming the argument now."""
    with pytest.raises(ValueError, match=name):
        LaudResNet((1, 1, 1, 1), input_size=32, **{name: 10**19})


@pytest.mark.parametrize("build,name", [
    (lambda: LaudBottleneck(16, 2**40, downsample=torch.nn.Identity()), "planes"),
    (lambda: LaudBottleneck(2**64, 2**20, downsample=torch.nn.Identity()), "inplanes"),
    (lambda: MaskerSpatial(2**64), "in_channels"),
    (lambda: MaskerChannelMLP(4, 2**64), "groups"),
    (lambda: MaskerChannelConvLinear(2**40, 4), "in_channels"),
])
def test_absurd_block_and_masker_sizes_are_value_errors_naming_them(build, name):
    """A block or masker of 2**40 planes or 2**64 channels raised torch's TypeError
    ("Overflow when unpacking long long") or RuntimeError ("Storage size calculation
    overflowed") from its layers' constructors: a ValueError naming the argument now."""
    with pytest.raises(ValueError, match=f"^{name} \\d+ is too large"):
        build()


def test_width_mult_still_builds_ordinary_widths():
    """The size check refuses no ordinary width: 0.25 and 2 build, with the widths
    64·width_mult and 2048·width_mult."""
    with torch.device("meta"):  # (no memory: the check is on shapes)
        for wm, out in ((0.25, 512), (2, 4096), (100, 204800)):
            model = LaudResNet((1, 1, 1, 1), width_mult=wm, input_size=32)
            assert model.fc.in_features == out


def _tie_warning(block: LaudBottleneck, x: torch.Tensor, rate: float) -> str:
    """The one UserWarning calibrate_block gives on x."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrate_block(block, x, rate)
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1, msgs
    return msgs[0]


def _rounding_block() -> tuple[LaudBottleneck, torch.Tensor]:
    """A spatial block (S=1) whose keep logit is x[:, 0] + x[:, 1] per cell, and an input
    of 4 cells with x[:, 0] = 1 and x[:, 1] = i·2**-9: distinct inputs, exact in
    bfloat16, whose logits 1 + i·2**-9 differ in float32 but round to 2 values in
    bfloat16 (its step at 1 is 2**-7)."""
    block = LaudBottleneck(16, 4, dyn_mode="spatial", granularity=1).eval()
    with torch.no_grad():
        conv = block.masker_spatial.conv
        conv.weight.zero_()
        conv.weight[0, :2] = 1.0
        conv.bias.zero_()
    x = torch.zeros(1, 16, 2, 2)
    x[0, 0] = 1.0
    x[0, 1] = torch.arange(4.0).view(2, 2) * 2**-9
    return block, x


def test_bfloat16_calibration_blames_the_precision_not_the_inputs():
    """In bfloat16 a masker on varied inputs missed its count because distinct logits
    round to the same bfloat16 value (8 significant bits), and the warning said "e.g. a
    constant input ... calibrate on varied inputs", which x already was: it names
    bfloat16's precision and float32 now (where the same block and input reach it)."""
    block, x = _rounding_block()
    msg = _tie_warning(copy.deepcopy(block).bfloat16(), x.bfloat16(), 0.5)
    assert "in bfloat16: with 8 significant bits" in msg and "float32" in msg
    assert "calibrate on varied inputs" not in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32: the count reached, no warning
        calibrate_block(block, x, 0.5)
    assert float(block.masker_spatial(x, (2, 2))[0].mean()) == 0.5


def test_float32_calibration_still_blames_tied_inputs():
    """In float32 the warning still names the inputs (a constant one), where the ties
    come from."""
    block = LaudBottleneck(64, 16, dyn_mode="spatial", granularity=1).eval()
    msg = _tie_warning(block, torch.ones(1, 64, 8, 8), 0.5)
    assert "constant input" in msg and "varied inputs" in msg
    assert "bfloat16" not in msg


def test_build_model_leaves_the_global_generator_and_keeps_its_weights():
    """build_model must leave the caller's generator as it was, and build the same
    weights for the same seed (benchmarks compare them)."""
    from laudtriton.bench import build_model

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(123)
        before = torch.random.get_rng_state()
        a = build_model("laud_resnet50", "spatial", "4-4-2-1", seed=3)
        assert torch.equal(torch.random.get_rng_state(), before)
        torch.manual_seed(999)  # another caller state: the same weights
        b = build_model("laud_resnet50", "spatial", "4-4-2-1", seed=3)
    finally:
        torch.random.set_rng_state(state)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _Stop(Exception):
    """Stops the demo at its first step."""


def test_demo_leaves_the_callers_generator_as_it_was(monkeypatch):
    """``cmd_demo`` called ``torch.manual_seed(0)`` on the global generator: a Python
    caller's random numbers after it were reseeded. The demo draws from a fork now
    (stopped here at its first step, build_model, which it calls with its seed 0)."""
    import laudtriton.bench
    from laudtriton.cli import cmd_demo

    seen = []

    def stop(*args, **kwargs):
        seen.append(torch.random.get_rng_state())
        raise _Stop

    monkeypatch.setattr(laudtriton.bench, "build_model", stop)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(321)
        before = torch.random.get_rng_state()
        with pytest.raises(_Stop):
            cmd_demo(argparse.Namespace(rate=0.5, reps=1, tune="off", batch=1, mode="spatial",
                                        granularity="4-4-2-1", channel_granularity="1"))
        after = torch.random.get_rng_state()
        torch.manual_seed(0)  # the demo's own seed still reaches its steps
        seeded = torch.random.get_rng_state()
    finally:
        torch.random.set_rng_state(state)
    assert torch.equal(after, before)
    assert torch.equal(seen[0], seeded)
