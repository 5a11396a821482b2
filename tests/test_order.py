"""SampleOrder: a compiled layer-mode LaudResNet swaps samples so that each block's active
ones are contiguous; outputs, masks and stats stay in the caller's order."""

import itertools

import pytest
import torch

import laudtriton
from laudtriton.nn import LaudResNet, calibrate_rates
from laudtriton.nn.block import BlockMasks
from laudtriton.order import SampleOrder, caller_masks, inverse, take_masks
from laudtriton.testing import assert_close, assert_same_masks, randomize_bn

CL = torch.channels_last


def labelled(batch):
    """A channels_last [B, 3, 4, 5] tensor and a [B, 3] one whose sample i holds value i."""
    v = torch.arange(batch, dtype=torch.float32)
    return (v[:, None, None, None].expand(batch, 3, 4, 5).contiguous(memory_format=CL),
            v[:, None].expand(batch, 3).contiguous())


def fewest_swaps(on):
    n = sum(on)
    return min(sum(not v for v in on[a:a + n]) for a in range(len(on) - n + 1))


@pytest.mark.parametrize("on", [list(g) for b in (1, 2, 5, 8)
                                for g in itertools.product([False, True], repeat=b)][::3])
def test_make_contiguous_every_gate(on):
    order = SampleOrder(len(on))
    h, order.pooled = labelled(len(on))
    (a, e), idx = order.make_contiguous(on, h)
    swaps = 0 if idx is None else sum(i != p for p, i in enumerate(idx)) // 2
    assert swaps == fewest_swaps(on)
    moved = on if idx is None else [on[i] for i in idx]
    assert e - a == sum(on) and moved == [a <= p < e for p in range(len(on))]
    # h and the pooling moved with the order: position p holds the caller's sample perm[p]
    assert h[:, 0, 0, 0].tolist() == order.perm == order.pooled[:, 0].tolist()
    assert h.is_contiguous(memory_format=CL)
    assert order.to_caller(h)[:, 0, 0, 0].tolist() == list(range(len(on)))


def test_order_accumulates_over_blocks():
    order = SampleOrder(6)
    h, _ = labelled(6)
    for on in ([1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0], [1, 0, 0, 0, 0, 1]):
        order.make_contiguous([bool(v) for v in on], h)
        assert h[:, 0, 0, 0].tolist() == order.perm
    assert sorted(order.perm) == list(range(6)) and order.snapshot() == tuple(order.perm)
    assert order.to_caller(h)[:, 0, 0, 0].tolist() == list(range(6))
    assert inverse(order.perm)[order.perm[2]] == 2


def test_masks_between_orders():
    """to_batch and caller_masks invert each other; a layer gate's broadcast masks stay
    broadcasts (no per-pixel copies)."""
    order = SampleOrder(4)
    h, _ = labelled(4)
    order.make_contiguous([True, False, False, True], h)
    assert order.perm != [0, 1, 2, 3]
    grid = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(4, 1, 1, 1)
    masks = BlockMasks(grid, grid.expand(4, 1, 6, 7), (grid > 0.5).expand(4, 1, 9, 9),
                       torch.eye(4))
    inb = order.to_batch(masks)
    assert inb.mask3.stride(-1) == 0 and inb.mask1.stride(-1) == 0
    assert torch.equal(inb.grid.flatten(), grid.flatten()[order.perm])
    assert torch.equal(inb.channel, torch.eye(4)[order.perm])
    back = caller_masks(inb, order.snapshot())
    for a, b in zip((back.grid, back.mask3, back.mask1, back.channel),
                    (masks.grid, masks.mask3, masks.mask1, masks.channel)):
        assert torch.equal(a, b)
    assert take_masks(BlockMasks(None, None, None, None), [0]).grid is None
    assert caller_masks(masks, None) is masks and SampleOrder(4).to_batch(masks) is masks


def test_bad_input():
    with pytest.raises(ValueError, match="batch must be >= 1"):
        SampleOrder(0)
    with pytest.raises(ValueError, match="gate of 2 samples for a batch of 3"):
        SampleOrder(3).make_contiguous([True, False], torch.zeros(3, 1, 1, 1))
    grid = torch.ones(2, 1, 1, 1)
    with pytest.raises(ValueError, match="masks.grid has 2 samples for a batch of 3"):
        SampleOrder(3).to_batch(BlockMasks(grid, None, None, None))


@pytest.mark.parametrize("seed", range(40))
def test_random_gates_keep_samples_and_masks_in_their_places(seed):
    """Property test: random batches, random gates over several blocks (a random
    permutation builds up). After each block the window holds exactly the active samples,
    h and the pooling are in the order ``perm`` says, idx composes the old order into
    the new, masks of random values go to batch order and back unchanged (per-pixel ones
    and a layer gate's broadcasts), and to_caller restores the caller's order."""
    import random

    rng = random.Random(seed)
    b = rng.randint(1, 11)
    order = SampleOrder(b)
    h, order.pooled = labelled(b)
    for _ in range(rng.randint(1, 6)):
        on = [rng.random() < rng.random() for _ in range(b)]
        before = list(order.perm)
        (a, e), idx = order.make_contiguous(on, h)
        moved = on if idx is None else [on[i] for i in idx]
        assert moved == [a <= p < e for p in range(b)]
        assert order.perm == (before if idx is None else [before[i] for i in idx])
        assert h[:, 0, 0, 0].tolist() == order.perm == order.pooled[:, 0].tolist()
        g = torch.rand(b, 1, 1, 1)
        masks = BlockMasks(g, g.expand(b, 1, 5, 3), torch.rand(b, 1, 4, 6) < 0.5,
                           torch.rand(b, 3))
        inb = order.to_batch(masks)
        back = caller_masks(inb, order.snapshot())
        for name in ("grid", "mask3", "mask1", "channel"):
            assert torch.equal(getattr(inb, name), getattr(masks, name)[order.perm])
            assert torch.equal(getattr(back, name), getattr(masks, name))
        assert order.to_caller(h)[:, 0, 0, 0].tolist() == list(range(b))


def test_to_batch_names_a_mask_without_a_batch_dimension():
    """With check_masks=False a layer block's given masks meet no check but to_batch's:
    a 0-d grid raised a bare IndexError ("tuple index out of range"), a list an
    AttributeError; both name the block and the mask now."""
    order = SampleOrder(3)
    with pytest.raises(ValueError, match=r"^layer2\.0: masks\.grid has no batch dimension "
                                         r"for a batch of 3$"):
        order.to_batch(BlockMasks(torch.tensor(1.0), None, None, None), "layer2.0")
    with pytest.raises(ValueError, match=r"^masks\.channel must be a tensor or None, got "
                                         r"list$"):
        order.to_batch(BlockMasks(None, None, None, [1.0, 0.0, 1.0]))


def tiny_layer_model(seed=0):
    torch.manual_seed(seed)
    m = LaudResNet((2, 2, 2, 1), mode="layer", width_mult=0.25, input_size=None,
                   num_classes=7)
    return randomize_bn(m).eval()


def spread_input(batch, seed=0, hw=(40, 36)):
    """Images with per-sample scale and offset, so the layer gates differ between samples."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *hw, generator=g)
    return x * torch.rand(batch, 1, 1, 1, generator=g) * 3 + torch.randn(batch, 3, 1, 1,
                                                                          generator=g)


def spy_moves(monkeypatch) -> list:
    """Record what every SampleOrder.make_contiguous call moved (None: nothing)."""
    moves = []
    make = SampleOrder.make_contiguous

    def spy(self, on, h):
        window, idx = make(self, on, h)
        moves.append(idx)
        return window, idx

    monkeypatch.setattr(SampleOrder, "make_contiguous", spy)
    return moves


@pytest.mark.parametrize("variants", [None, ["dense"], ["compact"]])
@pytest.mark.parametrize("hw", [(40, 36), (16, 16)], ids=["40x36", "16x16-maps-down-to-1x1"])
def test_compiled_layer_model_moves_samples_and_stays_exact(monkeypatch, hw, variants):
    """With its maskers: logits, every block's masks (caller's order) and rates equal the
    reference's, while the batch was reordered on the way and the gates read the pooling
    kept over blocks (also with the dense variant, which computes every sample; on a 1x1
    map the pooling is the map itself)."""
    model = tiny_layer_model()
    x = spread_input(7, hw=hw)
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", variants=variants)
    moves = spy_moves(monkeypatch)
    with torch.no_grad():
        for seed in range(3):
            xs = spread_input(7, seed, hw)
            out = cm(xs)
            assert_close(out, model(xs))
            assert_same_masks(cm, model)
            rates = [r.spatial_rate for r in cm.last_stats]
            assert rates == [float(b.last_masks.grid.double().mean()) for _, b in model.blocks()]
    assert any(m is not None for m in moves), "no sample moved: the test tests nothing"


@pytest.mark.parametrize("mode, granularity", [("layer-layer-spatial-channel", "1-1-2-1"),
                                               ("layer-spatial-layer-channel", "1-2-1-1")])
def test_mixed_stage_modes_after_a_reorder(monkeypatch, mode, granularity):
    """Spatial and channel blocks after reordering layer blocks: their masks, last_masks and
    given masks are in the right order too. A layer stage after a spatial one pools the
    activation again (the pooling kept from the first layer stage is stale there)."""
    torch.manual_seed(5)
    model = randomize_bn(LaudResNet((2, 2, 2, 1), mode=mode, granularity=granularity,
                                    channel_granularity=2, width_mult=0.25, input_size=None,
                                    num_classes=7)).eval()
    x = spread_input(6, seed=4)
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    moves = spy_moves(monkeypatch)
    with torch.no_grad():
        out = cm(x)
        assert_close(out, model(x))
        assert_same_masks(cm, model)
        assert torch.equal(cm(x, masks=[b.last_masks for b in cm.blocks]), out)
    assert any(m is not None for m in moves), "no sample moved: the test tests nothing"


def test_compiled_layer_model_with_scattered_given_masks():
    """Masks given in the caller's order, scattered so that samples move: the output is the
    reference's with those masks, and last_masks gives them back unchanged."""
    model = tiny_layer_model(seed=1)
    x = spread_input(6, seed=3)
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    gates = [[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0], [1, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0],
             [1, 0, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 1]]
    with torch.no_grad():
        cm(x)
    given = []
    for blk, g in zip(cm.blocks, gates):
        m = blk.last_masks
        grid = torch.tensor(g, dtype=torch.float32).view(6, 1, 1, 1)
        given.append(BlockMasks(grid, grid.expand_as(m.mask3), (grid > 0.5).expand_as(m.mask1),
                                None))
    for (_, blk), m in zip(model.blocks(), given):
        blk.compute_masks = lambda xin, m=m: (m, 0.0)
    with torch.no_grad():
        assert_close(cm(x, masks=given), model(x))
    for blk, m in zip(cm.blocks, given):
        assert torch.equal(blk.last_masks.grid, m.grid)
        assert torch.equal(blk.last_masks.mask1, m.mask1)


@pytest.mark.parametrize("block,cut,check,match", [
    (1, lambda m: BlockMasks(m.grid.view(3, 1, 1), m.mask3, m.mask1, None), True,
     r"^layer1\.1: masks.grid has shape \(3, 1, 1\); this block on an input of "
     r"3x\d+x\d+ takes \(3, 1, 1, 1\)"),
    # check_masks=False skips the masks check; a mask of another batch still gets an
    # error naming the block (it did not), before any sample is moved
    (2, lambda m: BlockMasks(m.grid[:2], m.mask3[:2], m.mask1[:2], None), False,
     r"^layer2\.0: masks.grid has 2 samples for a batch of 3$"),
], ids=["wrong-shape", "unchecked-other-batch"])
def test_given_layer_gate_that_does_not_fit_names_the_block(block, cut, check, match):
    model = tiny_layer_model()
    x = spread_input(3)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", variants=["dense"])
    with torch.no_grad():
        cm(x)
    given = [b.last_masks for b in cm.blocks]
    given[block] = cut(given[block])
    with pytest.raises(ValueError, match=match):
        with torch.no_grad():
            cm(x, masks=given, check_masks=check)


def test_a_block_refuses_an_order_without_reuse_input():
    """``order`` is the model's and comes with reuse_input=True: a layer block moves the
    samples of x in place then, so a caller's x would be written over; an order of
    another batch is refused too. x is left as it was."""
    model = tiny_layer_model()
    x = spread_input(4)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    blk = cm.blocks[1]
    h = torch.rand(4, blk.spec.in_channels, *blk.spec.in_hw).contiguous(
        memory_format=torch.channels_last)
    kept = h.clone()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"^layer1\.1: order is a CompiledModel's "
                                             r"SampleOrder, given with reuse_input=True"):
            blk(h, order=SampleOrder(4))
        with pytest.raises(ValueError, match=r"got order=list, reuse_input=True"):
            blk(h, reuse_input=True, order=[0, 1, 2, 3])
        with pytest.raises(ValueError, match=r"^layer1\.1: order is for a batch of 3; x is "
                                             r"\(4, "):
            blk(h, reuse_input=True, order=SampleOrder(3))
    assert torch.equal(h, kept)
    with torch.no_grad():  # as the model calls it: the reference block's output
        out = blk(h.clone(memory_format=torch.channels_last), reuse_input=True,
                  order=SampleOrder(4))
        assert_close(out, blk.reference(h))
