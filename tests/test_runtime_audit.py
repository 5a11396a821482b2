"""Audit of the compiled model's runtime helpers (guards, order, host_gates, pooling,
mask_checks, stem, capture, module_copy): the defects found, each tested on its fix."""

import copy
import pickle

import pytest
import torch
from torch import nn

import laudtriton
from laudtriton.guards import guard, is_guarded
from laudtriton.nn.block import LaudBottleneck
from laudtriton.testing import randomize_bn


def compiled_sequential():
    """A compiled nn.Sequential of two spatial LAUD blocks and a plain head, its input."""
    torch.manual_seed(0)
    seq = nn.Sequential(LaudBottleneck(64, 16, dyn_mode="spatial", granularity=2),
                        LaudBottleneck(64, 16, dyn_mode="spatial", granularity=2),
                        nn.Flatten(), nn.Linear(64 * 8 * 8, 3))
    seq = randomize_bn(seq).eval()
    x = torch.rand(2, 64, 8, 8)
    return seq, laudtriton.compile(seq, x, backend="cpu", tune="off", progress=False), x


def test_a_slice_of_a_compiled_container_guards_as_the_whole():
    """Slicing a guarded nn.Sequential or nn.ModuleList builds ``type(self)(...)``: an
    instance of the guarded class that ``guard`` never saw. ``cm[:2].cpu()`` raised
    AttributeError ('_laud_compiled_as'); now a slice holding compiled parts converts
    where they stay, refuses another dtype, training and loading as the whole does."""
    seq, cm, x = compiled_sequential()
    with torch.no_grad():
        want = cm[:2](x)
    for part in (cm[:2], pickle.loads(pickle.dumps(cm[:2])), copy.deepcopy(cm[:2])):
        assert is_guarded(part)
        assert part.cpu() is part and part.to("cpu", torch.float32) is part
        assert part.float().eval() is part
        with torch.no_grad():
            assert torch.equal(part(x), want)
        with pytest.raises(RuntimeError, match="cannot move to torch.float64"):
            part.double()
        with pytest.raises(RuntimeError, match="inference only"):
            part.train()
        with pytest.raises(RuntimeError, match="cannot load a state dict"):
            part.load_state_dict({})
    blocks = nn.ModuleList(cm[:2])  # a plain ModuleList, guarded by hand as compile would
    holder = nn.Module()
    holder.blocks = blocks
    guard(blocks, torch.float32, torch.device("cpu"))
    sliced = holder.blocks[:1]
    assert type(sliced) is type(blocks) and sliced.cpu() is sliced
    with pytest.raises(RuntimeError, match="cannot move to torch.float16"):
        sliced.half()


def test_a_slice_holding_no_compiled_part_acts_as_its_class():
    """A slice of the plain head (``cm[2:]``) holds no compiled part: it trains, loads and
    converts as an nn.Sequential does (it refused, and ``.double()`` raised
    AttributeError), like its modules taken one by one (``cm[3]``) always did."""
    _, cm, x = compiled_sequential()
    head = copy.deepcopy(cm)[2:]
    assert is_guarded(head)
    assert head.train() is head and head[1].training
    head.eval()
    state = {k: torch.zeros_like(v) for k, v in head.state_dict().items()}
    head.load_state_dict(state)
    assert not bool(head[1].weight.any())
    assert head.double()[1].weight.dtype == torch.float64
    # the compiled model itself is as it was: guarded, refusing
    with pytest.raises(RuntimeError, match="inference only"):
        cm.train()
    with pytest.raises(RuntimeError, match="cannot move to torch.float64"):
        cm.double()


class WritesItsInput(nn.Module):
    """A spatial LAUD block, then an inplace ReLU on the block's input after the call."""

    def __init__(self):
        super().__init__()
        self.blk = LaudBottleneck(64, 16, dyn_mode="spatial", granularity=2)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.blk(x)
        return y + self.act(x.sub_(1.0)).mean()


def test_capture_keeps_each_input_as_the_module_was_called_with_it():
    """The captured input was the forward's own tensor (``detach()``): a write into it
    after the block's call (an inplace ReLU) reached what compile planned on."""
    from laudtriton.capture import capture_inputs

    torch.manual_seed(0)
    model = randomize_bn(WritesItsInput()).eval()
    x = torch.rand(2, 64, 8, 8) * 2
    captured, missed = capture_inputs(model, x, [("blk", model.blk)])
    assert missed == [] and [c[0] for c in captured] == ["blk"]
    assert torch.equal(captured[0][2], x)


def test_static_dispatch_takes_the_rate_of_the_input_the_block_was_called_with(monkeypatch):
    """dispatch="static" plans each block for its rate on the example: with the block's
    input written in place after the call, it took 1.0 for an example at 0.5."""
    from laudtriton.compiled_block import CompiledBlock
    from laudtriton.nn import calibrate_block

    torch.manual_seed(0)
    model = randomize_bn(WritesItsInput()).eval()
    x = torch.rand(2, 64, 16, 16) * 2
    calibrate_block(model.blk, x, 0.5)
    with torch.no_grad():
        want = float(model.blk.compute_masks(x)[0].grid.mean())
    rates, init = [], CompiledBlock.__init__

    def spy(self, name, spec, fb, table, dispatch, expected_rate):
        rates.append(expected_rate)
        init(self, name, spec, fb, table, dispatch, expected_rate)
    monkeypatch.setattr(CompiledBlock, "__init__", spy)
    laudtriton.compile(model, x, backend="cpu", tune="off", dispatch="static", progress=False)
    assert want == 0.5 and rates == [want]


@pytest.mark.parametrize("given", [{"grid": None}, (None, None, None, None), "masks"],
                         ids=["dict", "tuple", "str"])
def test_unchecked_given_masks_that_are_no_blockmasks_name_the_block(given):
    """check_masks=False skips the masks check; a layer or spatial block's entry that is
    not a BlockMasks still gets an error naming the block (an AttributeError "'dict'
    object has no attribute 'grid'" before), as one of another batch does."""
    from laudtriton.nn import LaudResNet

    torch.manual_seed(0)
    model = randomize_bn(LaudResNet((1, 1, 1, 1), mode="layer-spatial-layer-channel",
                                    granularity="1-2-1-1", channel_granularity=2,
                                    width_mult=0.25, input_size=None, num_classes=5)).eval()
    x = torch.randn(3, 3, 32, 32)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", progress=False)
    with torch.no_grad():
        cm(x)
    masks = [b.last_masks for b in cm.blocks]
    for i in (0, 1):  # layer1.0 (a layer gate), layer2.0 (spatial)
        bad = list(masks)
        bad[i] = given
        with pytest.raises(ValueError, match=rf"^{cm.blocks[i].name}: masks must be a "
                                             rf"BlockMasks, got {type(given).__name__}$"):
            with torch.no_grad():
                cm(x, masks=bad, check_masks=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_nonfinite_samples_one_sum_does_not_overflow_on_unnormalised_images(dtype):
    """On CPU one sum decides that a finite input needs no per-sample test. In float16 the
    sum of an unnormalised image (values ~255 over 3x224x224: 1.9e7 > 65504) was inf, so
    every finite fp16 input took the per-sample test (9x slower at batch 8); it sums in
    float32 now. A NaN or inf still names the samples holding it, in any dtype."""
    from laudtriton.guards import nonfinite_samples

    torch.manual_seed(0)
    x = (torch.rand(3, 3, 224, 224) * 255).to(dtype)
    assert nonfinite_samples(x) is None
    big = torch.full((2, 3, 64, 64), 60000.0, dtype=dtype)  # near fp16's largest finite
    assert nonfinite_samples(big) is None
    for bad, value in (([0], float("nan")), ([2], float("inf")), ([1, 2], float("-inf"))):
        y = x.clone()
        y[bad, 1, 5, 7] = value
        assert nonfinite_samples(y).tolist() == [i in bad for i in range(3)]
    y = x.clone()
    y[0, 0, 0, 0], y[0, 2, 0, 0] = float("inf"), float("-inf")  # sums to NaN, still found
    assert nonfinite_samples(y).tolist() == [True, False, False]
