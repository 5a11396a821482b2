"""Review of the public compile API (session 65): a LAUD block whose maskers were replaced
after it was built (``block.masker_channel = ...``, ``block.masker_spatial = None``) so
that they no longer match its ``dyn_mode``."""

import pytest
import torch
from torch import nn

import laudtriton
from laudtriton.nn.maskers import MaskerChannelMLP
from laudtriton.testing import make_block


def _x() -> torch.Tensor:
    """A seeded example input of the blocks below (32 channels, 12x12)."""
    return torch.randn(3, 32, 12, 12, generator=torch.Generator().manual_seed(1))


def _half_channels_off(masker: nn.Module) -> None:
    """Make a channel MLP masker turn groups 1 and 3 of 4 off for every input."""
    last = [m for m in masker.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0]))


@pytest.mark.parametrize("mode", ["spatial", "layer"])
def test_a_channel_masker_the_blocks_mode_does_not_read_is_refused(mode):
    """A spatial (or layer) block given a channel masker after it was built: the
    reference applies the masker's channel mask (``compute_masks`` runs every masker the
    block holds), while the compiled block is planned for its ``dyn_mode``: compile
    returned, in silence, a block whose output lay 0.09 of the largest value away from the
    reference's (spatial, a freshly built masker) or 1e-3 (layer, this masker; its
    ``compact`` variant failed the check on the example). It is refused, naming the block
    and the masker."""
    block = make_block(32, 8, mode=mode, granularity=2, channel_granularity=2)
    block.masker_channel = MaskerChannelMLP(32, 4, 2, 16)
    _half_channels_off(block.masker_channel)
    x = _x()
    with torch.no_grad():
        block(x)
    assert float(block.last_stats.channel_rate) < 1  # the reference does apply it
    with pytest.raises(ValueError, match=r"block\.masker_channel.*dyn_mode "
                                         rf"'{mode}'"):
        laudtriton.compile(block, x, backend="cpu", tune="off", progress=False)


@pytest.mark.parametrize(("mode", "masker"), [("spatial", "masker_spatial"),
                                              ("layer", "masker_spatial"),
                                              ("both", "masker_spatial"),
                                              ("channel", "masker_channel")])
def test_a_block_without_the_masker_its_mode_reads_is_refused_naming_it(mode, masker):
    """A block whose masker was set to None after it was built runs as the reference (a
    block without that mask), but compile failed inside the planner with
    "AttributeError: 'NoneType' object has no attribute 'device'", naming neither the
    block nor the masker. It is now a ValueError naming both."""
    block = make_block(32, 8, mode=mode, granularity=2, channel_granularity=2)
    setattr(block, masker, None)
    x = _x()
    with torch.no_grad():
        block(x)  # the reference runs
    with pytest.raises(ValueError, match=rf"block\.{masker} is None.*dyn_mode '{mode}'"):
        laudtriton.compile(block, x, backend="cpu", tune="off", progress=False)


def test_a_both_block_without_its_channel_masker_still_compiles_as_the_reference():
    """The rule refuses only what the compiled block cannot run: a ``both`` block whose
    channel masker was removed runs its spatial mask alone, as the reference does."""
    block = make_block(32, 8, mode="both", granularity=2, channel_granularity=2)
    block.masker_channel = None
    with torch.no_grad():
        block.masker_spatial.conv.bias.copy_(torch.tensor([0.2, 0.0]))
    x = _x()
    cb = laudtriton.compile(block, x, backend="cpu", tune="off", progress=False,
                            variants="gather")
    with torch.no_grad():
        want = block(x)
    got = cb(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert cb.last_stats[0].channel_rate is None


@pytest.mark.parametrize(("example", "message"), [
    ([1, 2], "example_input must be a 4D tensor"),
    (torch.ones(1, 3, 32, 32, dtype=torch.long), "example_input is torch.int64"),
    (torch.full((1, 3, 32, 32), float("nan")), "example_input holds NaN or inf"),
    (torch.zeros(0, 3, 32, 32), "example_input has batch 0"),
])
def test_the_decorators_example_input_is_checked_at_once(example, message):
    """``@laudtriton.compile(example_input=...)`` checked its other options when it was
    applied, but took an example that no model can be compiled on (not a tensor, an
    integer one, NaN, an empty batch) in silence, and said so only at each call of the
    decorated factory. What needs no model is now checked at once (its shape against the
    model still at the call)."""
    with pytest.raises(ValueError, match=message):
        laudtriton.compile(example_input=example, backend="cpu", tune="off")
    with pytest.raises(ValueError, match=message):  # a factory given with it
        laudtriton.compile(lambda: nn.Identity(), example, backend="cpu", tune="off")


def test_the_decorators_example_is_checked_in_the_dtype_it_is_cast_to():
    """The decorator's example is refused at once where it overflows the ``dtype`` given
    (1e5 is inf in float16), as ``compile`` refuses it on a model."""
    with pytest.raises(ValueError, match="overflows torch.float16"):
        laudtriton.compile(example_input=torch.full((1, 3, 8, 8), 1e5), backend="cpu",
                           tune="off", dtype=torch.float16)


@pytest.mark.parametrize("mode", ["Spatial", "dense", None])
def test_a_dyn_mode_set_to_an_unknown_value_is_named_with_its_block(mode):
    """A block's ``dyn_mode`` set after it was built to a value that is no mode (the
    reference runs it as a spatial block): compile said "BlockSpec.mode 'Spatial'
    unknown", naming neither the block nor its attribute (in a LaudResNet, which of its
    blocks?). It now names ``<block>.dyn_mode``."""
    block = make_block(32, 8, mode="spatial", granularity=2)
    block.dyn_mode = mode
    with pytest.raises(ValueError, match=rf"^compile: block\.dyn_mode {mode!r} unknown; "
                                         "accepted: spatial, channel, layer, both"):
        laudtriton.compile(block, _x(), backend="cpu", tune="off", progress=False)
