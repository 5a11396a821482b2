"""Audit of the compiled forward's host-side modules (session 60): a compiled block
called without an order (on its own, or in a model while a hook is registered) checks
unchecked given masks as the model's reordering forward does; a block on its own names
an empty map; ``pooling.fastest_form`` names a bad shape."""

import pytest
import torch

import laudtriton
from laudtriton.nn import LaudResNet, calibrate_block, calibrate_rates
from laudtriton.nn.block import BlockMasks
from laudtriton.pooling import fastest_form, time_forms
from laudtriton.testing import make_block, randomize_bn

MODES = [("spatial", "2-2-2-1"), ("channel", 1), ("layer", 1), ("both", "2-2-1-1")]


def spread(batch, hw=(33, 47), seed=0):
    """Images with per-sample scale and offset (the gates differ between samples)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *hw, generator=g)
    return x * torch.rand(batch, 1, 1, 1, generator=g) * 3 + torch.randn(batch, 3, 1, 1,
                                                                          generator=g)


@pytest.fixture(scope="module", params=MODES, ids=[m for m, _ in MODES])
def compiled(request):
    """(compiled model, its masks on a batch of 3, that batch) for a tiny LaudResNet."""
    mode, granularity = request.param
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = randomize_bn(LaudResNet((1, 2, 1, 1), mode=mode, granularity=granularity,
                                        channel_granularity=2, width_mult=0.25,
                                        input_size=None, num_classes=7)).eval()
    x = spread(3)
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    with torch.no_grad():
        cm(x)
    return cm, [b.last_masks for b in cm.blocks], x


def cut(masks, n):
    """The masks of the first n samples."""
    return BlockMasks(*(None if t is None else t[:n]
                        for t in (masks.grid, masks.mask3, masks.mask1, masks.channel)))


@pytest.mark.parametrize("hooked", [False, True], ids=["reordering", "hooked"])
@pytest.mark.parametrize("bad,match", [
    (lambda ms: ["grid"] * len(ms), r"^layer1\.0: masks must be a BlockMasks, got str$"),
    (lambda ms: [cut(m, 2) for m in ms], r"^layer1\.0: masks\.\w+ has 2 samples for a "
                                         r"batch of 3$"),
], ids=["not-blockmasks", "other-batch"])
def test_unchecked_given_masks_raise_the_same_error_with_a_hook(compiled, hooked, bad, match):
    """check_masks=False: a str or a mask of another batch raised a ValueError naming the
    block in the reordering forward, but AttributeError ("'str' object has no attribute
    'channel'") or torch's size mismatch while a hook was registered (the blocks then
    run without an order). The failed forward leaves last_stats as they were."""
    cm, masks, x = compiled
    before = cm.last_stats
    handle = cm.blocks[1].register_forward_hook(lambda *a: None) if hooked else None
    try:
        with pytest.raises(ValueError, match=match):
            cm(x, masks=bad(masks), check_masks=False)
    finally:
        if handle is not None:
            handle.remove()
    assert cm.last_stats == before


@pytest.mark.parametrize("bad,match", [
    ("grid", r"^layer2\.0: masks must be a BlockMasks, got str$"),
    (BlockMasks(torch.tensor(1.0), None, None, None),
     r"^layer2\.0: masks\.grid has no batch dimension for a batch of 3$"),
    (BlockMasks(None, None, None, [1.0, 0.0]),
     r"^layer2\.0: masks\.channel must be a tensor or None, got list$"),
], ids=["str", "0-d", "list"])
def test_block_on_its_own_checks_unchecked_masks_batch(compiled, bad, match):
    cm, masks, x = compiled
    blk = cm.blocks[1]
    h = torch.randn(3, blk.spec.in_channels, *blk.spec.in_hw).relu()
    with pytest.raises(ValueError, match=match):
        blk(h, masks=bad, check_masks=False)
    with pytest.raises(ValueError, match=r"^layer2\.0: masks\.\w+ has 2 samples for a "
                                         r"batch of 3$"):
        blk(h, masks=cut(masks[1], 2), check_masks=False)


def test_unchecked_masks_of_this_model_still_run(compiled):
    """The check lets the masks a model gave through, with a hook or without."""
    cm, masks, x = compiled
    with torch.no_grad():
        want = cm(x)
        assert torch.equal(cm(x, masks=masks, check_masks=False), want)
        handle = cm.blocks[0].register_forward_pre_hook(lambda *a: None)
        try:
            assert torch.equal(cm(x, masks=masks, check_masks=False), want)
        finally:
            handle.remove()


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer", "both"])
@pytest.mark.parametrize("shape", [(1, 64, 0, 5), (2, 64, 5, 0), (1, 64, 0, 0)])
def test_block_on_its_own_names_an_empty_map(mode, shape):
    """An empty map raised MapTooSmall ("granularity 1 is larger than its feature map
    0x5"), a BlockSpec error or torch's "stride should not be zero", by mode; the
    reference says the map is empty."""
    blk = make_block(64, 16, 1, mode, channel_granularity=2, seed=1)
    calibrate_block(blk, torch.randn(3, 64, 8, 8).relu(), 0.5)
    cb = laudtriton.compile(blk, torch.randn(3, 64, 8, 8), backend="cpu", tune="off").blocks[0]
    got = str(shape).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"^block: expected an input \[B, 64, H, W\] with "
                                         rf"H, W >= 1 and B >= 1, got {got}$"):
        cb(torch.zeros(shape))


@pytest.mark.parametrize("fn", [fastest_form, time_forms])
@pytest.mark.parametrize("channels,hw,match", [
    (8, (0, 5), r"^hw must be two ints >= 1 \(height, width\), got \(0, 5\)$"),
    (8, 5, r"^hw must be two ints >= 1 \(height, width\), got 5$"),
    (8, (5, 5, 5), r"^hw must be two ints >= 1 \(height, width\), got \(5, 5, 5\)$"),
    (0, (5, 5), r"^channels must be an int >= 1, got 0$"),
    (8.5, (5, 5), r"^channels must be an int >= 1, got 8\.5$"),
])
def test_pooling_timing_names_a_bad_shape(fn, channels, hw, match):
    """An empty map divided by zero, others failed inside torch (TypeError,
    RuntimeError)."""
    with pytest.raises(ValueError, match=match):
        fn(channels, hw)
