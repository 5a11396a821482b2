"""laudtriton.compile on models as users change them: another stem or head, a LaudResNet
inside a module of theirs, float64; and what a compiled model refuses (a changed forward,
modules the fold cannot express, a state dict, another dtype or device, masks that do not
fit)."""

import copy
import io
import re
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import laudtriton
from laudtriton.compiled import CompiledModel
from laudtriton.compiled_block import CompiledBlock
from laudtriton.guards import is_guarded
from laudtriton.nn import LaudBottleneck, LaudResNet, calibrate_block, calibrate_rates
from laudtriton.testing import assert_close, make_block, randomize_bn


def tiny(mode="spatial", seed=0, **kw):
    torch.manual_seed(seed)
    m = LaudResNet((1, 2, 1, 1), mode=mode, granularity="2-2-1-1", channel_granularity=2,
                   width_mult=0.25, input_size=None, num_classes=7, **kw)
    return randomize_bn(m).eval()


def compile_cpu(model, x, **kw):
    return laudtriton.compile(model, x, backend="cpu", tune="off", **kw)


def with_bias_stem(m):
    old = m.conv1
    m.conv1 = nn.Conv2d(3, old.out_channels, 7, stride=2, padding=3, bias=True)
    m.conv1.weight.data.copy_(old.weight)
    nn.init.uniform_(m.conv1.bias, -1, 1)


def small_stem(m):
    m.conv1 = nn.Conv2d(3, m.conv1.out_channels, 3, stride=1, padding=1, bias=False)


STEMS_AND_HEADS = {
    "no maxpool": lambda m: setattr(m, "maxpool", nn.Identity()),
    "avg maxpool": lambda m: setattr(m, "maxpool", nn.AvgPool2d(2)),
    "max head pooling": lambda m: setattr(m, "avgpool", nn.AdaptiveMaxPool2d(1)),
    "conv1 with bias": with_bias_stem,
    "3x3 stride-1 stem": small_stem,
    "dropout + linear head": lambda m: setattr(
        m, "fc", nn.Sequential(nn.Dropout(0.5), nn.Linear(m.fc.in_features, 5))),
}


@pytest.mark.parametrize("change", list(STEMS_AND_HEADS))
def test_another_stem_or_head_is_compiled_as_the_model_has_it(change):
    model = tiny()
    STEMS_AND_HEADS[change](model)
    model.eval()
    x = torch.randn(2, 3, 36, 44)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x)
    with torch.no_grad():
        ref = model(x)
        assert_close(cm(x), ref, name=change)
    assert len(cm.last_stats) == 5


class Leaky(LaudResNet):
    def forward(self, x):
        return super().forward(x) * 10


class ShiftedReLU(nn.ReLU):
    """An nn.ReLU subclass computing something else (the engine fuses a plain ReLU)."""

    def forward(self, x):
        return torch.relu(x - 0.5)


@pytest.mark.parametrize("change,match", [
    (lambda m: setattr(m, "relu", nn.LeakyReLU()), r"the stem's relu is LeakyReLU"),
    (lambda m: setattr(m, "relu", ShiftedReLU()), r"the stem's relu is ShiftedReLU"),
    (lambda m: setattr(m, "bn1", nn.Identity()), r"the stem's bn1 is Identity\(\)"),
    (lambda m: setattr(m, "conv1", nn.Conv2d(3, 16, 7, 2, 3, groups=1, dilation=2)),
     r"the stem's conv1 is Conv2d\(3, 16, .*dilation=\(2, 2\)"),
    (lambda m: setattr(m, "maxpool", nn.MaxPool2d(3, 2, 1, return_indices=True)),
     r"the stem's maxpool is MaxPool2d"),
])
def test_a_stem_the_compiled_model_cannot_run_is_refused(change, match):
    model = tiny()
    change(model)
    with pytest.raises(ValueError, match=match):
        compile_cpu(model, torch.randn(1, 3, 32, 32))


class StdConv2d(nn.Conv2d):
    """Weight standardisation (BiT ResNets): a Conv2d subclass with its own forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True)
                                                         + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


class HalfBN(nn.BatchNorm2d):
    def forward(self, x):
        return 0.5 * super().forward(x)


class HalfPool(nn.MaxPool2d):
    def forward(self, x):
        return 0.5 * super().forward(x)


class HalfLinear(nn.Linear):
    def forward(self, x):
        return 0.5 * super().forward(x)


@pytest.mark.parametrize("change,match", [
    (lambda m: setattr(m, "conv1", StdConv2d(3, 16, 7, 2, 3, bias=False)),
     r"the stem's conv1 is StdConv2d"),
    (lambda m: setattr(m, "bn1", randomize_bn(HalfBN(16)).eval()), r"the stem's bn1 is HalfBN"),
    (lambda m: setattr(m, "maxpool", HalfPool(3, 2, 1)), r"the stem's maxpool is HalfPool"),
    (lambda m: setattr(m.layer1[0], "bn2", randomize_bn(HalfBN(16)).eval()),
     r"compile: layer1.0.bn2 is HalfBN"),
])
def test_a_layer_subclass_with_its_own_forward_is_refused(change, match):
    """A Conv2d, BatchNorm2d or pooling subclass that computes another forward would be
    folded or run as the plain layer (a silent wrong result): it is refused. One that
    keeps the forward (a parametrized weight) compiles, as before."""
    model = tiny()
    change(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)  # the reference runs
    with pytest.raises(ValueError, match=match):
        compile_cpu(model, x)


def test_a_stem_conv_with_a_parametrized_weight_still_compiles():
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, w):
            return 2 * w

    model = tiny()
    parametrize.register_parametrization(model.conv1, "weight", Doubled())
    x = torch.randn(2, 3, 32, 32)
    cm = compile_cpu(model, x)
    with torch.no_grad():
        assert_close(cm(x), model(x), name="parametrized stem conv")


def test_block_convs_with_a_parametrized_weight_compile():
    """The current weight_norm (a parametrization: a generated Conv2d subclass with
    Conv2d's forward) in a block is folded with the weights it computes."""
    import io

    from torch.nn.utils.parametrizations import weight_norm

    model = tiny()
    weight_norm(model.layer2[0].conv2)
    weight_norm(model.layer1[0].conv1)
    weight_norm(model.fc)
    x = torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x)
    with torch.no_grad():
        ref = model(x)
        assert_close(cm(x), ref, name="parametrized block convs")
    # the compiled model holds the values computed (a snapshot): it pickles, where torch
    # refused to serialise the parametrized modules its private copies kept
    buf = io.BytesIO()
    torch.save(cm, buf)
    buf.seek(0)
    with torch.no_grad():
        assert_close(torch.load(buf, weights_only=False)(x), ref, name="after torch.save")
    assert torch.nn.utils.parametrize.is_parametrized(model.fc)  # the user's model as it was


def test_parametrizations_are_baked_as_the_eval_model_computes_them():
    """spectral_norm's power iteration runs in training mode: baked before the copy was put
    in eval mode, a model compiled while in training gave other weights than the eval
    network (4.789 against 4.791). A parametrized buffer stays a buffer (its
    parametrization's own parameter made it a parameter)."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import spectral_norm

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.tensor(1.5))

        def forward(self, t):
            return t * self.s

    model = tiny()
    spectral_norm(model.fc)
    spectral_norm(model.layer1[0].conv1)
    parametrize.register_parametrization(model.layer1[0].bn1, "running_var", Scale())
    x = torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    model.train()
    cm = compile_cpu(model, x)
    assert model.training  # left as it was
    model.eval()
    with torch.no_grad():
        assert_close(cm(x), model(x), name="spectral_norm compiled in training mode")
    bn1 = cm.source.layer1[0].bn1
    assert "running_var" in dict(bn1.named_buffers()) and "running_var" not in dict(
        bn1.named_parameters())


@pytest.mark.parametrize("mode,masker", [
    ("spatial", "spatial"), ("channel", "MLP"), ("both", "MLP"), ("channel", "MLP1"),
    ("channel", "conv_linear")])
def test_maskers_with_a_parametrized_weight_compile(mode, masker):
    """weight_norm (a parametrization) on a masker's conv or linear layers: the gates
    read the weights it computes, so the masks and the logits are the reference's."""
    from torch.nn.utils.parametrizations import weight_norm

    model = tiny(mode, channel_masker="conv_linear" if masker == "conv_linear" else "MLP",
                 channel_masker_layers=1 if masker == "MLP1" else 2)
    for b in (model.layer1[0], model.layer2[1]):
        if masker == "spatial":
            weight_norm(b.masker_spatial.conv)
        elif masker.startswith("MLP"):
            for lin in b.masker_channel.linears():
                weight_norm(lin)
        else:
            weight_norm(b.masker_channel.conv[0])
            weight_norm(b.masker_channel.linear)
    x = torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x)
    with torch.no_grad():
        ref = model(x)
        out = cm(x)
        assert_close(out, ref, name="parametrized maskers")
        blocks = [m for m in model.modules() if isinstance(m, LaudBottleneck)]
        for blk, cb in zip(blocks, cm.blocks, strict=True):
            for f in ("grid", "channel"):
                a, b = getattr(blk.last_masks, f), getattr(cb.last_masks, f)
                assert (a is None) == (b is None), f
                if a is not None:
                    assert torch.equal(a, b), f


class HalfBlock(LaudBottleneck):
    def forward(self, x):
        return 0.5 * super().forward(x)


class NoCells(LaudBottleneck):
    def compute_masks(self, x):
        masks, flops = super().compute_masks(x)
        if masks.grid is not None:
            masks.grid.zero_()
            masks.mask3.zero_()
            masks.mask1.zero_()
        return masks, flops


@pytest.mark.parametrize("cls,attr", [(HalfBlock, "forward"), (NoCells, "compute_masks")])
def test_a_block_subclass_that_overrides_its_computation_is_refused(cls, attr):
    """A LaudBottleneck subclass overriding forward or compute_masks: the compiled block
    re-implements both, so it is refused, bare or inside a LaudResNet."""
    block = make_block(16, 4, mode="spatial", granularity=2)
    block.__class__ = cls
    x = torch.randn(1, 16, 8, 8)
    with pytest.raises(ValueError, match=rf"compile: block is a {cls.__name__}, which "
                                         rf"overrides LaudBottleneck\.{attr}"):
        compile_cpu(block, x)
    model = tiny()
    model.layer2[1].__class__ = cls
    with pytest.raises(ValueError, match=rf"compile: layer2\.1 is a {cls.__name__}"):
        compile_cpu(model, torch.randn(1, 3, 32, 32))


def test_a_network_holding_a_compiled_block_is_refused():
    """A LaudResNet with a CompiledBlock in a block's place (left by compiling a module
    whose forward calls its blocks, or put there by hand): compiling it again would skip
    that block; it is refused, naming the block."""
    model = tiny()
    x = torch.randn(1, 3, 32, 32)
    compiled = compile_cpu(model, x).blocks[2]
    assert compiled.name == "layer2.1"
    model.layer2[1] = compiled
    with pytest.raises(ValueError, match=r"compile: layer2\.1 of the LaudResNet is a "
                                         r"compiled block already"):
        compile_cpu(model, x)


def test_a_compiled_block_on_its_own_names_a_bad_input():
    """A CompiledBlock called by itself (from a compiled user module, or cm.blocks[i])
    names the block and what is wrong with its input (channels, rank, batch 0, dtype),
    not torch's error from inside the maskers."""
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    blk = compile_cpu(model, x).blocks[1]  # layer2.0: 64 channels in, at 8x8
    h = torch.randn(2, 64, 8, 8).relu()
    for bad, match in ((torch.randn(2, 12, 8, 8), r"layer2\.0: expected an input \[B, 64"),
                       (torch.randn(64, 8, 8), r"layer2\.0: expected an input .* got \(64"),
                       (torch.randn(0, 64, 8, 8), r"B >= 1, got \(0, 64"),
                       (h.double(), r"layer2\.0: input is torch.float64 on cpu; the block "
                                    r"is compiled for torch.float32")):
        with pytest.raises(ValueError, match=match):
            blk(bad)
    with torch.no_grad():
        assert_close(blk(h), blk.reference(h), name="layer2.0 on its own")


def test_masks_of_another_kind_than_a_list_are_refused():
    model = tiny()
    x = torch.randn(1, 3, 32, 32)
    cm = compile_cpu(model, x)
    cm(x)
    with pytest.raises(ValueError, match=r"masks must be a list .* got BlockMasks"):
        cm(x, masks=cm.blocks[0].last_masks)


@pytest.mark.parametrize("entry", [{"grid": None}, (None, None, None, None), "masks"])
def test_a_block_entry_of_another_kind_than_blockmasks_is_refused(entry):
    """The list is right, an entry in it is not: the block names itself and the type."""
    model, x = tiny(), torch.randn(1, 3, 32, 32)
    cm = compile_cpu(model, x)
    masks = given_masks(cm, x)
    masks[1] = entry
    with pytest.raises(ValueError, match=rf"^layer2\.0: masks must be a BlockMasks, got "
                                         rf"{type(entry).__name__}$"):
        with torch.no_grad():
            cm(x, masks=masks)


@pytest.mark.parametrize("bad, got", [(torch.randn(64, 8, 8), r"\(64, 8, 8\)"),
                                      (torch.randn(1, 1, 64, 8, 8), r"\(1, 1, 64, 8, 8\)"),
                                      ([[0.0]], "list")])
def test_check_masks_names_an_x_that_is_not_a_4d_tensor(bad, got):
    """``CompiledBlock.check_masks`` is public: an x it cannot read shapes from is named,
    not an IndexError from unpacking its shape."""
    model, x = tiny(), torch.randn(1, 3, 32, 32)
    cm = compile_cpu(model, x)
    masks = given_masks(cm, x)
    with pytest.raises(ValueError, match=rf"^layer2\.0: x must be a tensor \[B, C, H, W\], "
                                         rf"got {got}$"):
        cm.blocks[1].check_masks(masks[1], bad)


def test_an_overridden_forward_is_refused():
    model = Leaky((1, 1, 1, 1), width_mult=0.25, input_size=None).eval()
    with pytest.raises(ValueError, match=r"Leaky overrides LaudResNet.forward; .*Hold a "
                                         r"LaudResNet in your module"):
        compile_cpu(model, torch.randn(1, 3, 32, 32))


def biased_downsample(b):
    b.downsample[0] = nn.Conv2d(b.downsample[0].in_channels, b.downsample[0].out_channels, 1,
                                stride=b.stride, bias=True)


@pytest.mark.parametrize("change,part", [
    (biased_downsample, "downsample"),
    (lambda b: setattr(b, "downsample", b.downsample[0]), "downsample"),
    (lambda b: b.downsample.__setitem__(0, nn.Conv2d(64, 64, 3, 2, 1, bias=False)),
     "downsample"),
    (lambda b: setattr(b, "conv1", nn.Conv2d(64, 16, 1, bias=True)), "conv1"),
    (lambda b: setattr(b, "bn2", nn.BatchNorm2d(16, affine=False)), "bn2"),
    (lambda b: setattr(b, "relu", nn.ReLU6()), "relu"),
    (lambda b: setattr(b, "relu", nn.Identity()), "relu"),
    (lambda b: setattr(b.masker_spatial, "conv", nn.Conv2d(64, 2, 3, padding=1)),
     "masker_spatial"),
    (lambda b: setattr(b.masker_spatial, "conv", nn.Conv2d(64, 2, 1, bias=False)),
     "masker_spatial"),
])
def test_a_block_the_fold_cannot_express_is_refused(change, part):
    block = make_block(64, 16, stride=2, mode="spatial", granularity=2, downsample=True)
    change(block)
    x = torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        block(x)  # the reference still runs
    with pytest.raises(ValueError, match=rf"compile: block\.{part} is "):
        compile_cpu(block, x)


class Holder(nn.Module):
    """A user's module around a LaudResNet: its forward is kept."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, x):
        return self.net(x).softmax(-1) * self.scale


@pytest.mark.parametrize("mode", ["spatial", "layer"])
def test_a_laud_resnet_inside_a_module_becomes_a_compiled_model(mode):
    model = Holder(tiny(mode))
    x = torch.randn(3, 3, 40, 40)
    calibrate_rates(model.net, x, 0.5)
    cw = compile_cpu(model, x)
    # the user's class, guarded: a subclass of it named as it (``guards.guarded_class``)
    assert type(cw).__bases__ == (Holder,) and type(cw).__qualname__ == "Holder"
    assert isinstance(cw, Holder) and isinstance(cw.net, CompiledModel)
    with torch.no_grad():
        assert_close(cw(x), model(x))
    assert [r.variant for r in cw.net.last_stats] == [
        b.last_run.variant for b in cw.net.blocks] and len(cw.net.last_stats) == 5
    assert model.net.conv1.weight.dtype == torch.float32 and type(model.net) is LaudResNet


def test_blocks_outside_a_laud_resnet_are_swapped():
    torch.manual_seed(0)
    seq = nn.Sequential(make_block(16, 4, mode="channel", channel_granularity=2, seed=1),
                        make_block(16, 4, mode="spatial", granularity=2, seed=2))
    x = torch.randn(2, 16, 12, 12)
    cs = compile_cpu(seq, x)
    assert [type(m) for m in cs] == [CompiledBlock, CompiledBlock]
    with torch.no_grad():
        assert_close(cs(x), seq(x))


def test_float64_stem_is_folded_in_float64():
    model = tiny().double()
    x = torch.randn(2, 3, 36, 36, dtype=torch.float64)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x, dtype=torch.float64)
    assert cm.stem_w.dtype == torch.float64
    with torch.no_grad():
        assert_close(cm(x), model(x))  # float64 tolerance, 1e-10


def test_load_state_dict_is_refused():
    model, x = tiny(), torch.randn(1, 3, 32, 32)
    cm = compile_cpu(model, x)
    with pytest.raises(RuntimeError, match="cannot load a state dict: .*Load the state dict "
                                           "into the model you compiled"):
        cm.load_state_dict(cm.state_dict())
    seq = compile_cpu(nn.Sequential(make_block(16, 4, mode="spatial", granularity=2)),
                      torch.randn(1, 16, 8, 8))
    with pytest.raises(RuntimeError, match="cannot load a state dict"):
        seq.load_state_dict(seq.state_dict())


@pytest.mark.filterwarnings("ignore:Complex modules are a new feature:UserWarning")
@pytest.mark.parametrize("convert, advice", [
    (lambda m: m.double(), "Compile the model again with dtype=torch.float64"),
    (lambda m: m.half(), "Compile the model again with dtype=torch.float16"),
    (lambda m: m.to(torch.bfloat16), "Compile the model again with dtype=torch.bfloat16"),
    (lambda m: m.to("cpu", torch.float64), "Compile the model again with dtype=torch.float64"),
    # no compile makes these: the advice was to compile with dtype=torch.complex64
    (lambda m: m.to(torch.complex64), "compile supports only float32, float16, bfloat16, "
                                      "float64 on cpu or cuda"),
    (lambda m: m.to("meta"), "compile supports only"),
])
def test_another_dtype_is_refused_and_the_model_still_runs(convert, advice):
    model, x = tiny(), torch.randn(1, 3, 32, 32)
    cm = compile_cpu(model, x)
    with torch.no_grad():
        before = cm(x)
    with pytest.raises(RuntimeError, match=r"cannot move to torch\.(float64|float16|bfloat16|"
                                           r"complex64|float32) on (cpu|meta): it is compiled "
                                           r"for torch\.float32 on cpu\. " + re.escape(advice)):
        convert(cm)
    with pytest.raises(RuntimeError, match="cannot move to"):
        convert(cm.blocks[0])
    same = cm.float().cpu().to("cpu")
    assert same is cm
    with torch.no_grad():
        assert torch.equal(cm(x), before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_a_move_to_cuda_without_cuda_is_refused_by_the_compiled_model():
    """In a CPU-only torch, ``.cuda()`` and ``.to("cuda")`` failed inside the probe with
    torch's AssertionError ("Torch not compiled with CUDA enabled"), not the compiled
    model's refusal."""
    model, x = tiny(), torch.randn(1, 3, 32, 32)
    cm = compile_cpu(model, x)
    with torch.no_grad():
        before = cm(x)
    for convert in (lambda m: m.cuda(), lambda m: m.to("cuda")):
        for target in (cm, cm.blocks[0]):
            with pytest.raises(RuntimeError, match=r"^a compiled model cannot take this "
                                                   r"conversion \(\w+Error: .*CUDA.*\); it "
                                                   r"is compiled for torch\.float32 on cpu, "
                                                   r"and nothing was changed"):
                convert(target)
    with torch.no_grad():
        assert torch.equal(cm(x), before)


def test_to_empty_is_refused_and_the_model_still_runs():
    """``to_empty`` keeps the dtype and device but gives every tensor uninitialised
    memory: it passed the dtype-and-device test, and the stem and classifier then held
    garbage (logits near 1e26, no error) where the packed weights kept the old ones."""
    model, x = tiny(), torch.randn(1, 3, 32, 32)
    cm = compile_cpu(model, x)
    with torch.no_grad():
        before = cm(x)
    for target in (cm, cm.blocks[0], cm, cm.blocks[0]):  # again: reused memory
        with pytest.raises(RuntimeError, match="changes its tensors' values"):
            target.to_empty(device="cpu")
    with torch.no_grad():
        assert torch.equal(cm(x), before)


def given_masks(cm, x):
    with torch.no_grad():
        cm(x)
    return [b.last_masks for b in cm.blocks]


@pytest.mark.parametrize("mode,field,make,match", [
    ("spatial", "grid", lambda m: torch.ones(2, 1, 1, 1), r"masks.grid has shape \(2, 1, 1, 1\)"
     r"; this block on an input of 2x\d+x\d+ takes \(2, 1, \d+, \d+\)"),
    ("spatial", "grid", lambda m: m.grid.reshape(2, 1, 1, -1), r"masks.grid has shape"),
    ("spatial", "grid", lambda m: m.grid * 0.5, r"masks.grid holds values other than 0 and 1"),
    ("spatial", "channel", lambda m: torch.ones(2, 2), r"masks.channel has shape \(2, 2\); "
     r".* takes None"),
    ("channel", "channel", lambda m: m.channel[:, :1], r"masks.channel has shape \(2, 1\)"),
    # a mutation audit: dropping "channel" from the 0/1 check went unnoticed
    ("channel", "channel", lambda m: m.channel * 0.5,
     r"masks.channel holds values other than 0 and 1"),
    ("layer", "mask3", lambda m: None, r"masks.mask3 has shape None"),
    ("spatial", "mask3", lambda m: m.mask3 * 0.5,
     r"masks.mask3 is not the expansion of masks.grid .*values other than 0 and 1"),
    ("spatial", "mask3", lambda m: torch.ones_like(m.mask3),
     r"masks.mask3 is not the expansion of masks.grid"),
    ("both", "mask1", lambda m: torch.ones_like(m.mask1),
     r"masks.mask1 is not the expansion of masks.grid"),
    ("layer", "mask1", lambda m: ~m.mask1, r"masks.mask1 is not the expansion of masks.grid"),
])
def test_given_masks_that_do_not_fit_are_refused(mode, field, make, match):
    model, x = tiny(mode), torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x)
    masks = given_masks(cm, x)
    masks[0] = replace(masks[0], **{field: make(masks[0])})
    with pytest.raises(ValueError, match=rf"^layer1\.0: {match}"):
        with torch.no_grad():
            cm(x, masks=masks)


def test_calibrate_rates_bad_arguments():
    model = tiny()
    with pytest.raises(ValueError, match="calibrate_rates takes a LaudResNet, got "
                                         "LaudBottleneck .*calibrate_block"):
        calibrate_rates(make_block(16, 4), torch.randn(1, 16, 8, 8), 0.5)
    x = torch.randn(1, 3, 64, 64)
    cm = laudtriton.compile(tiny().eval(), x, backend="cpu", tune="off")
    with pytest.raises(ValueError, match=r"got CompiledModel \(a compiled model: calibrate "
                                         r"the model it was compiled from, and compile "
                                         r"again\)"):
        calibrate_rates(cm, x, 0.5)
    with pytest.raises(ValueError, match=r"x must be a \[B, 3, H, W\] tensor with B, H, W >= 1 "
                                         r"for this model, got \(1, 4, 32, 32\)"):
        calibrate_rates(model, torch.randn(1, 4, 32, 32), 0.5)
    with pytest.raises(ValueError, match=r"x is torch.float64 on cpu; the model is "
                                         r"torch.float32 on cpu"):
        calibrate_rates(model, torch.randn(1, 3, 32, 32, dtype=torch.float64), 0.5)


def test_cache_dir_of_another_type_is_refused():
    with pytest.raises(ValueError, match="cache_dir must be a path .*got int 123"):
        laudtriton.compile(tiny(), torch.randn(1, 3, 32, 32), backend="cpu", cache_dir=123)
    for tune in ("off", "cached"):  # '' would mean the current directory
        with pytest.raises(ValueError, match="cache_dir '' is empty"):
            laudtriton.compile(tiny(), torch.randn(1, 3, 32, 32), backend="cpu", tune=tune,
                               cache_dir="")


def test_cache_dir_naming_a_file_is_refused(tmp_path):
    afile = tmp_path / "f"
    afile.write_text("x")
    for tune in ("off", "cached"):  # refused before any timing, whatever ``tune`` is
        with pytest.raises(ValueError, match="cache_dir .* is not a directory"):
            laudtriton.compile(tiny(), torch.randn(1, 3, 32, 32), backend="cpu", tune=tune,
                               cache_dir=afile)


def test_reference_stats_with_a_sequential_head():
    model = tiny()
    model.fc = nn.Sequential(nn.Dropout(), nn.Linear(model.fc.in_features, 5))
    plain = copy.deepcopy(model)
    plain.fc = plain.fc[1]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.eval()(x)
        plain.eval()(x)
    assert model.last_stats.flops == pytest.approx(float(plain.last_stats.flops))
    assert model.last_stats.dense_flops == pytest.approx(plain.last_stats.dense_flops)


def test_given_masks_unchecked_run_the_same(monkeypatch):
    model, x = tiny("channel"), torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x)
    masks = given_masks(cm, x)
    with torch.no_grad():
        checked = cm(x, masks=masks)

        def refuse(self, masks, x):
            raise AssertionError("checked")
        monkeypatch.setattr(CompiledBlock, "check_masks", refuse)
        assert torch.equal(cm(x, masks=masks, check_masks=False), checked)
        with pytest.raises(AssertionError, match="checked"):
            cm(x, masks=masks)


def test_switches_that_are_not_true_or_false_are_refused():
    """check_masks="no" is truthy: before, it checked the masks it was meant to skip, and
    reuse_input="no" let a variant write its output into the caller's input."""
    model, x = tiny("layer"), torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x)
    masks = given_masks(cm, x)
    for bad in ("no", 0, None):
        with pytest.raises(ValueError, match=f"check_masks must be True or False, got {bad!r}"):
            cm(x, masks=masks, check_masks=bad)
    with torch.no_grad():
        for unchecked in (np.False_, torch.tensor(False)):
            assert torch.equal(cm(x, masks=masks, check_masks=unchecked), cm(x, masks=masks))
    cb = cm.blocks[1]
    h = torch.relu(torch.randn(2, cb.spec.in_channels, *cb.spec.in_hw))
    h = h.contiguous(memory_format=torch.channels_last)
    for name in ("reuse_input", "check_masks", "check_finite"):
        with pytest.raises(ValueError, match=f"{cb.name}: {name} must be True or False, "
                                             "got 'no'"):
            cb(h, **{name: "no"})


def test_a_changed_channel_masker_is_refused():
    block = make_block(64, 16, mode="channel", channel_granularity=2, downsample=True)
    block.masker_channel.conv[0] = nn.Linear(64, 16, bias=False)
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        block(x)  # the reference still runs
    with pytest.raises(ValueError, match=r"compile: block\.masker_channel is "):
        compile_cpu(block, x)


def _three_logits(block):
    block.masker_spatial.conv = nn.Conv2d(64, 3, 1)
    return "masker_spatial"


def _relu_last(block):
    first = block.masker_channel.conv[0]
    block.masker_channel.conv = nn.Sequential(
        first, nn.ReLU(), nn.Linear(first.out_features, 2 * block.masker_channel.groups),
        nn.ReLU())
    return "masker_channel"


@pytest.mark.parametrize("mode, edit", [("spatial", _three_logits), ("channel", _relu_last)],
                         ids=["spatial-conv-of-3-logits", "channel-mlp-ending-in-relu"])
def test_a_masker_of_another_shape_is_refused(mode, edit):
    """A masker the gates cannot read as keep-against-skip logits is refused with a
    ValueError naming it: a spatial masker of 3 logits (compiled, it failed at the first
    forward) or a channel MLP ending in a ReLU (an AttributeError inside compile)."""
    block = make_block(64, 16, mode=mode, granularity=2, channel_granularity=2)
    part = edit(block)
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        block(x)  # the reference runs
    with pytest.raises(ValueError, match=rf"compile: block\.{part} is "):
        compile_cpu(block, x)


def test_nan_in_a_masker_buffer_is_refused():
    """Every parameter and buffer is tested for NaN and inf, not only the parameters: a
    NaN in the conv_linear channel masker's BatchNorm statistics."""
    block = make_block(64, 16, mode="channel", channel_granularity=2,
                       channel_masker="conv_linear")
    with torch.no_grad():
        block.masker_channel.conv[1].running_mean[0] = float("nan")
    with pytest.raises(ValueError, match=r"^compile: masker_channel\.conv\.1\.running_mean "
                                         "holds NaN or inf"):
        compile_cpu(block, torch.randn(1, 64, 8, 8))


@pytest.mark.parametrize("mode", ["spatial", "channel"])
def test_a_masker_layer_subclass_with_its_own_forward_is_refused(mode):
    """A parametrized masker weight is accepted; a subclass computing something else is
    not (the gates would compute the plain layer's logits)."""
    block = make_block(64, 16, mode=mode, granularity=2, channel_granularity=2)
    if mode == "spatial":
        old, part = block.masker_spatial.conv, "masker_spatial"
        block.masker_spatial.conv = StdConv2d(old.in_channels, 2, 1)
    else:
        old, part = block.masker_channel.conv[0], "masker_channel"
        block.masker_channel.conv[0] = HalfLinear(old.in_features, old.out_features)
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        block(x)
    with pytest.raises(ValueError, match=rf"compile: block\.{part} is "):
        compile_cpu(block, x)


@pytest.mark.parametrize("mode", ["spatial", "channel"])
def test_a_model_after_a_training_step_compiles(mode):
    """A training forward leaves masks and statistics with autograd history on the
    model's modules (deepcopy refuses those); compile leaves them out of its copy."""
    model, x = tiny(mode), torch.randn(2, 3, 32, 32)
    model.train()
    model(x).sum().backward()
    model.eval()
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x)
    with torch.no_grad():
        assert_close(cm(x), model(x))
    assert model.last_stats is not None  # the user's model keeps its records
    block = make_block(16, 4, mode=mode, granularity=2, channel_granularity=2)
    xb = torch.relu(torch.randn(2, 16, 8, 8))
    block.train()
    block(xb).sum().backward()  # the block's own records now carry autograd history
    block.eval()
    cb = compile_cpu(block, xb)
    with torch.no_grad():
        assert_close(cb(xb), block(xb))


def test_compile_under_inference_mode():
    model, x = tiny("channel"), torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    with torch.inference_mode():
        cm = compile_cpu(model, x)
        out = cm(x)
    with torch.no_grad():
        assert_close(out, model(x))


def test_every_variant_failing_is_an_error_naming_the_block(monkeypatch):
    import laudtriton.planning as planning  # plan_block reads its time_variants

    def failing(fb, spec, x, masks, cands, **kw):
        return {c.name: {"": float("inf")} for c in cands}
    monkeypatch.setattr(planning, "time_variants", failing)
    with pytest.raises(RuntimeError, match=r"every candidate variant \(.*dense.*\) failed on "
                                           r"the example input of a block 16->4->16"):
        compile_cpu(make_block(16, 4, mode="spatial", granularity=2), torch.randn(1, 16, 8, 8))


def test_compiled_blocks_in_a_container_refuse_training():
    """A CompiledBlock refuses .train() like a CompiledModel, and holds no parameters of
    the block it was compiled from (nothing would train them)."""
    seq = nn.Sequential(make_block(16, 4, mode="spatial", granularity=2), nn.Conv2d(16, 4, 1))
    cs = compile_cpu(seq, torch.randn(1, 16, 8, 8))
    with pytest.raises(RuntimeError, match="inference only"):
        cs.train()
    assert isinstance(cs[0].reference, type(seq[0])) and not list(cs[0].parameters())
    names = [n for n, _ in cs.named_parameters()]
    assert names == ["1.weight", "1.bias"]


def test_a_head_module_put_in_training_mode_is_refused():
    """The model's train() is refused, but ``cm.fc.train()`` was not: with a Dropout in a
    custom head two calls on one input then differed. The forward now refuses it, naming
    the module, until it is back in eval mode."""
    model, x = tiny(), torch.randn(2, 3, 32, 32)
    model.fc = nn.Sequential(nn.Dropout(0.5), model.fc)
    cm = compile_cpu(model, x)
    with torch.no_grad():
        before = cm(x)
        for part, match in ((lambda: cm.fc, r"^fc is in training mode"),
                            (lambda: cm.fc[0], r"^fc\.0 is in training mode"),
                            (lambda: cm.avgpool, r"^avgpool is in training mode")):
            part().train()
            with pytest.raises(RuntimeError, match=match + r"; a compiled model is "
                                                           r"inference only"):
                cm(x)
            part().eval()
            assert torch.equal(cm(x), before)
        assert_close(before, model.eval()(x))


@pytest.mark.parametrize("mode", ["spatial", "layer"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_input_gives_nan_for_its_sample(mode, bad):
    """oneDNN's fused ReLU turns NaN into 0; the compiled model must not turn a sample
    whose input is not finite into finite logits. The other samples stay exact."""
    model, x = tiny(mode), torch.randn(3, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x)
    y = x.clone()
    y[1, 0, 5, 5] = bad
    with torch.no_grad():
        out, ref = cm(y), model(y)
    assert not ref[1].isfinite().all() and out[1].isnan().all()
    assert_close(out[[0, 2]], ref[[0, 2]])
    block = make_block(16, 4, mode="spatial", granularity=2)
    cb = compile_cpu(block, torch.randn(2, 16, 8, 8))
    z = torch.randn(2, 16, 8, 8)
    z[0, 3, 2, 2] = bad
    with torch.no_grad():
        out = cb(z)
        blk = cb.blocks[0]  # on its own, the block tests its input as the model does
        alone = blk(z)
        skipped = blk(z, check_finite=False)  # the caller vouches for z: no test, no NaN mark
        finite = torch.randn(2, 16, 8, 8)
        assert torch.equal(blk(finite, check_finite=False), blk(finite))
    assert out[0].isnan().all() and out[1].isfinite().all()
    assert alone[0].isnan().all() and torch.equal(alone[1], out[1])
    assert torch.equal(skipped[1], out[1])
    assert skipped[0].isfinite().any()  # sample 0 is what its convolutions give, not NaN-marked


def test_nan_in_a_container_of_compiled_blocks():
    """A compiled block called on its own (blocks swapped into a user's container) tests
    its input as a CompiledModel does."""
    seq = nn.Sequential(make_block(16, 4, mode="spatial", granularity=2, seed=1),
                        make_block(16, 4, mode="channel", channel_granularity=2, seed=2))
    cs = compile_cpu(seq, torch.randn(2, 16, 8, 8))
    z = torch.randn(2, 16, 8, 8)
    z[1, 0, 0, 0] = float("nan")
    with torch.no_grad():
        out = cs(z)
    assert out[1].isnan().all()
    with torch.no_grad():
        assert_close(out[:1], seq(z[:1]))


def test_compiled_modules_start_in_eval_and_report_bool_masks():
    """A compiled model and its blocks are in eval mode from the start (a helper that
    saves and restores .training then never calls .train(True)); masks given as bool
    run and are reported."""
    model, x = tiny("spatial"), torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x)
    assert not cm.training and not any(m.training for m in cm.modules())
    masks = [replace(m, grid=m.grid.bool(), mask3=m.mask3.bool()) for m in given_masks(cm, x)]
    with torch.no_grad():
        assert_close(cm(x, masks=masks), cm(x))
        cm(x, masks=masks)
    assert [r.spatial_rate for r in cm.last_stats] == [
        float(m.grid.float().mean()) for m in masks]


def test_decorator_options_are_checked_at_once():
    with pytest.raises(ValueError, match="backend 'tpu' unknown"):
        laudtriton.compile(backend="tpu")
    with pytest.raises(ValueError, match="tune 'nope' unknown"):
        laudtriton.compile(lambda: tiny(), tune="nope")

    @laudtriton.compile(example_input=torch.randn(1, 3, 32, 32), backend="cpu", tune="off")
    def not_a_model():
        return lambda x: x
    with pytest.raises(ValueError, match="decorated 'not_a_model' returned function, not an "
                                         "nn.Module"):
        not_a_model()
    # a model instance given to the decorator form: refused at once (it became a function
    # that ran the model and then said it returned a Tensor)
    with pytest.raises(ValueError, match="^compile: as a decorator it takes a model class "
                                         "or factory function, got a LaudResNet instance"):
        laudtriton.compile(example_input=torch.randn(1, 3, 32, 32), backend="cpu",
                           tune="off")(tiny())
    # something not callable: refused at once (it became a function that failed on its
    # first call with "'int' object is not callable")
    with pytest.raises(ValueError, match="^compile: as a decorator it takes a model class "
                                         "or factory function, got int 42"):
        laudtriton.compile(backend="cpu", tune="off")(42)


# -- what the example forward and the user's module hold ---------------------------------

@pytest.mark.parametrize("where, pre", [("", False), ("", True), ("conv1", False),
                                        ("bn1", True), ("layer1.0", True),
                                        ("layer1.0.conv2", False),
                                        ("layer2.0.masker_spatial", False),
                                        ("layer2.0.downsample.0", True)])
def test_a_hook_the_compiled_model_would_drop_is_refused(where, pre):
    """The compiled model runs its own stem, blocks and maskers: a hook there never ran
    and its effect was silently lost (0.26-650x max|ref| of difference)."""
    model, x = tiny(), torch.randn(1, 3, 32, 32)
    mod = model.get_submodule(where)
    if pre:
        mod.register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    else:
        mod.register_forward_hook(lambda m, args, out: out * 0)
    name = where or "LaudResNet"
    with pytest.raises(ValueError, match=rf"^compile: {name} has a forward hook"):
        compile_cpu(model, x)
    held = "net" + (f".{where}" if where else "")  # inside a module of the user's
    with pytest.raises(ValueError, match=rf"^compile: {held} has a forward hook"):
        compile_cpu(Holder(model), x)


def _pruned(m):
    from torch.nn.utils import prune

    for _, b in m.blocks():
        for conv in (b.conv1, b.conv2, b.conv3):
            prune.l1_unstructured(conv, "weight", 0.5)
    prune.l1_unstructured(m.fc, "weight", 0.5)  # the head runs as a copy
    return m


def _weight_normed(m):
    for _, b in m.blocks():
        torch.nn.utils.weight_norm(b.conv2)
    return m


def _head_hooked(m):
    m.fc.register_forward_hook(lambda mod, args, out: out * -3)
    m.avgpool.register_forward_pre_hook(lambda mod, args: (args[0] + 1,))
    return m


def _stage_hooked(m):  # LaudResNet.forward never calls its stage containers
    m.layer2.register_forward_hook(lambda mod, args, out: out * 0)
    return m


def _conv_linear_hooked(m):  # the compiled gates call a copy of this masker
    def flip(mod, args, out):
        return (1 - out[0], out[1])
    m.layer2[0].masker_channel.register_forward_hook(flip)
    return m


@pytest.mark.parametrize("change", [_pruned, _weight_normed, _head_hooked, _stage_hooked,
                                    _conv_linear_hooked])
def test_hooks_that_run_or_are_folded_are_kept(change):
    """Pruning and weight_norm pre-hooks leave the weight the fold reads; the head (and a
    conv_linear channel masker) run as copied modules; stage containers are never called.
    All compiled before hooks were checked, and must still. The change and a forward run
    in grad mode, as in training: a pruned or weight-normed weight then has autograd
    history, which ``copy.deepcopy`` refuses (compile copies it detached)."""
    mode = "channel" if change is _conv_linear_hooked else "spatial"
    kw = {"channel_masker": "conv_linear"} if change is _conv_linear_hooked else {}
    model, x = tiny(mode, **kw), torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    model = change(model)
    model(x).sum().backward()
    cm = compile_cpu(model, x)
    with torch.no_grad():
        assert_close(cm(x), model(x))


def test_a_hook_on_the_stem_pool_is_refused_for_its_reason():
    """Its copy runs, but the blocks then overwrite the stem's output in place."""
    model = tiny()
    seen = []
    model.maxpool.register_forward_hook(lambda mod, args, out: seen.append(out))
    with pytest.raises(ValueError, match="^compile: maxpool has a forward hook or pre-hook; "
                                         "the compiled model's blocks overwrite the stem's "
                                         "output in place"):
        compile_cpu(model, torch.randn(1, 3, 32, 32))


class Keyword(nn.Module):
    """Calls its LaudResNet with a keyword argument."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, inp):
        return self.net(x=inp)


def test_a_laud_resnet_called_with_a_keyword_is_compiled():
    """It raised a bare IndexError (the input hook read args[0] only)."""
    model = Keyword(tiny())
    x = torch.randn(2, 3, 32, 32)
    calibrate_rates(model.net, x, 0.5)
    cw = compile_cpu(model, x)
    assert isinstance(cw.net, CompiledModel)
    with torch.no_grad():
        assert_close(cw(x), model(x))


class Either(nn.Module):
    """Runs one of two LaudResNets, by batch size."""

    def __init__(self):
        super().__init__()
        self.a, self.b = tiny(seed=1), tiny(seed=2)

    def forward(self, x):
        return self.a(x) if x.shape[0] == 1 else self.b(x)


def test_a_laud_resnet_the_example_never_reaches_is_named():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cw = compile_cpu(Either(), torch.randn(1, 3, 32, 32))
    assert [str(w.message).split(";")[0] for w in seen] == [
        "laudtriton.compile: the example forward never calls b"]  # once, not its blocks
    assert isinstance(cw.a, CompiledModel) and type(cw.b) is LaudResNet


class Dropping(nn.Module):
    """A BatchNorm and a Dropout of the user's around a LaudResNet."""

    def __init__(self, net):
        super().__init__()
        self.pre, self.net, self.drop = nn.BatchNorm2d(3), net, nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.net(self.pre(x)))


def test_a_refused_train_leaves_the_users_module_in_eval():
    """nn.Module.train set the wrapper's flag and its BatchNorm's before the compiled
    child raised: later outputs changed (dropout on, batch statistics)."""
    x = torch.randn(2, 3, 32, 32)
    cw = compile_cpu(Dropping(tiny()), x)
    with torch.no_grad():
        before = cw(x)
    for clone in (cw, copy.deepcopy(cw)):
        with pytest.raises(RuntimeError, match="inference only"):
            clone.train()
        assert not any(m.training for m in clone.modules())
        with torch.no_grad():
            assert torch.equal(clone(x), before)
    assert cw.eval() is cw and not cw.training  # train(False) is the module's own


def test_copies_and_pickles_of_the_users_module_stay_guarded_and_it_needs_no_gc():
    """The guards were bound to the instance (partials holding the module): a shallow
    copy's ``eval()`` ran the original's and returned the original, and the module was
    freed only by the cyclic garbage collector (module -> partial -> module). Now its
    class is a guarded subclass of the user's: every copy guards itself, and nothing
    cycles."""
    import gc
    import io
    import pickle
    import weakref

    x = torch.randn(2, 3, 32, 32)
    cw = compile_cpu(Dropping(tiny()), x)
    assert isinstance(cw, Dropping) and type(cw).__name__ == "Dropping" and is_guarded(cw)
    with torch.no_grad():
        before = cw(x)
    buf = io.BytesIO()
    torch.save(cw, buf)
    buf.seek(0)
    clones = [copy.copy(cw), copy.deepcopy(cw), pickle.loads(pickle.dumps(cw)),
              torch.load(buf, weights_only=False)]
    for clone in clones:
        assert type(clone) is type(cw) and clone is not cw
        assert clone.eval() is clone
        with pytest.raises(RuntimeError, match="inference only"):
            clone.train()
        with pytest.raises(RuntimeError, match="cannot load a state dict"):
            clone.load_state_dict({})
        with pytest.raises(RuntimeError, match="cannot move to torch.float64"):
            clone.double()
        assert not any(m.training for m in clone.modules())
        with torch.no_grad():
            assert torch.equal(clone(x), before)
    gc.disable()
    try:
        ref = weakref.ref(cw)
        del cw, clones
        assert ref() is None  # freed by reference counting alone
    finally:
        gc.enable()


def test_a_pickle_of_a_users_module_compiled_before_the_guarded_class_still_refuses(
        monkeypatch):
    """Until session 32 compile bound ``refuse_train``, ``refuse_apply`` and
    ``refuse_load`` on the instance of a module of the user's (partials holding the
    module), and pickles name them as ``laudtriton.compiled.<name>``: such a pickle still
    loads, and refuses training, another dtype and a state dict before anything
    changes, while eval() and a conversion to its own dtype go on."""
    import functools
    import pickle

    from laudtriton import compiled, guards

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5)).eval()
    dtype, device = torch.float32, torch.device("cpu")
    for name in ("refuse_train", "refuse_apply", "refuse_load"):  # as the old module named them
        monkeypatch.setattr(getattr(guards, name), "__module__", "laudtriton.compiled")
    m.train = functools.partial(compiled.refuse_train, m)
    m._apply = functools.partial(compiled.refuse_apply, m, dtype, device)
    m.load_state_dict = functools.partial(compiled.refuse_load, m)
    data = pickle.dumps(m)
    monkeypatch.undo()
    assert b"laudtriton.compiled" in data and b"laudtriton.guards" not in data
    old = pickle.loads(data)
    weight = old[0].weight.detach().clone()
    with pytest.raises(RuntimeError, match=f"^{re.escape(guards.TRAIN_REFUSED)}$"):
        old.train()
    assert not any(mod.training for mod in old.modules())
    assert old.eval() is old and old.train(False) is old
    with pytest.raises(RuntimeError, match=r"^a compiled model cannot move to torch.float64 "
                                           r"on cpu: it is compiled for torch.float32 on cpu"):
        old.double()
    assert old.float() is old and old[0].weight.dtype == torch.float32
    with pytest.raises(RuntimeError, match=f"^{re.escape(guards.LOAD_REFUSED)}$"):
        old.load_state_dict({k: torch.zeros_like(v) for k, v in old.state_dict().items()})
    assert torch.equal(old[0].weight, weight)


def test_a_non_finite_example_input_is_refused():
    """The plan was made on the masks of a NaN image (every rate 0) and served all."""
    x = torch.randn(1, 3, 32, 32)
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="example_input holds NaN or inf"):
        compile_cpu(tiny(), x)


@pytest.mark.parametrize("x", [torch.randn(1, 3, 32, 32, dtype=torch.complex64),
                               torch.randint(0, 255, (1, 3, 32, 32)),
                               torch.empty(1, 3, 32, 32, device="meta")],
                         ids=["complex", "int", "meta"])
def test_an_example_input_that_is_no_real_float_tensor_with_data_is_refused(x):
    """A complex example was cast to float (its imaginary part dropped, with only torch's
    warning), an integer one too (the compiled model then refuses such inputs), and a
    meta tensor failed deep inside with a RuntimeError."""
    with pytest.raises(ValueError, match=f"^example_input is {x.dtype} on {x.device.type}; "
                                         "give a real floating-point tensor with data"):
        compile_cpu(tiny(), x)


class _Holder(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("make", [tiny, lambda: _Holder(tiny()), lambda: make_block(16, 4)],
                         ids=["resnet-without-input-size", "user-module", "block"])
def test_an_example_input_is_required_where_none_can_be_drawn(make):
    """Only a LaudResNet built with an input size draws its own example; the others name
    what is missing instead of failing on None."""
    with pytest.raises(ValueError, match=r"^example_input is required for this model "
                                         r"\(a \[B, C, H, W\] tensor\)$"):
        compile_cpu(make().eval(), None)


@pytest.mark.parametrize("x", [torch.randn(3, 32, 32), torch.randn(1, 1, 3, 32, 32),
                               [[0.0]], 1.0], ids=["3d", "5d", "list", "float"])
def test_an_example_input_that_is_no_4d_tensor_is_refused(x):
    with pytest.raises(ValueError, match=r"^example_input must be a 4D tensor \[B, C, H, W\]$"):
        compile_cpu(tiny(), x)


def test_variants_no_block_runs_are_refused():
    """Each block falls back to dense where none of the listed variants runs it; when no
    block runs any of them, the request itself is wrong (it compiled all-dense)."""
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"^compile: variants slice: no block of this model "
                                         r"runs any of them on cpu; accepted here: dense, "
                                         r"gather, patch$"):
        compile_cpu(tiny("spatial"), x, variants=["slice"])
    cm = compile_cpu(tiny("layer"), x, variants=["compact", "slice"])
    assert {b.static_choice.variant for b in cm.blocks} <= {"compact", "dense"}


def test_a_failed_forward_keeps_the_last_masks():
    """A given mask that fits only the first blocks raised midway, leaving the blocks
    before it with this forward's masks and the others with the last one's."""
    model, x = tiny(), torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x)
    masks = given_masks(cm, x)
    x3 = torch.randn(3, 3, 32, 32)
    with pytest.raises(ValueError, match=r"^layer2\.0: masks"):
        with torch.no_grad():
            cm(x3, masks=[None] + masks[1:])
    assert [b.last_masks.grid.shape[0] for b in cm.blocks] == [2] * len(cm.blocks)
    for b, m in zip(cm.blocks, masks):
        assert torch.equal(b.last_masks.grid, m.grid)


def test_a_tensor_given_as_the_model_says_where_it_goes():
    with pytest.raises(ValueError, match=r"got Tensor; an example input goes in "
                                         r"example_input= \(as a decorator: "):
        laudtriton.compile(torch.randn(1, 3, 32, 32))


class Backbone(nn.Module):
    """Calls a LaudResNet's stem and stages itself (a feature extractor), never its
    forward."""

    def __init__(self):
        super().__init__()
        self.net = tiny()

    def forward(self, x):
        n = self.net
        h = n.stem(x)
        for stage in (n.layer1, n.layer2, n.layer3, n.layer4):
            for block in stage:
                h = block(h)
        return h.mean((2, 3))


def test_a_laud_resnet_used_through_its_blocks_has_them_compiled():
    """Its blocks become CompiledBlocks, with no warning (it is not unreached)."""
    model, x = Backbone(), torch.randn(2, 3, 32, 32)
    calibrate_rates(model.net, x, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cw = compile_cpu(model, x)
    assert sum(isinstance(m, CompiledBlock) for m in cw.modules()) == 5
    with torch.no_grad():
        assert_close(cw(x), model(x))


class BlocksBackbone(nn.Module):
    """Runs a LaudResNet through its public ``blocks()``; with ``whole`` set, through its
    own forward (another branch, which the example does not take)."""

    def __init__(self):
        super().__init__()
        self.net, self.whole = tiny(), False

    def forward(self, x):
        if self.whole:
            return self.net(x)
        h = self.net.stem(x)
        for _, block in self.net.blocks():
            h = block(h)
        return h.mean((2, 3))


def test_blocks_of_a_laud_resnet_lists_its_compiled_blocks():
    """``LaudResNet.blocks()`` (and so its own forward) listed only LaudBottlenecks: after
    compile it was empty, and both forms silently skipped every block."""
    model, x = BlocksBackbone(), torch.randn(2, 3, 32, 32)
    calibrate_rates(model.net, x, 0.5)
    cw = compile_cpu(model, x)
    assert [n for n, _ in cw.net.blocks()] == [n for n, _ in model.net.blocks()]
    assert all(isinstance(b, CompiledBlock) for _, b in cw.net.blocks())
    with torch.no_grad():
        assert_close(cw(x), model(x))
        model.whole = cw.whole = True
        assert_close(cw(x), model(x))
    assert cw.net.last_stats is None and model.net.last_stats is not None
    with pytest.raises(ValueError, match=r"^calibrate_rates: layer1\.0 is a compiled block"):
        calibrate_rates(cw.net, x, 0.5)


def test_a_block_in_a_users_module_runs_map_sizes_its_variant_does_not():
    """Blocks outside a LaudResNet take other input sizes. ``patch``, chosen at 32x32
    (S = 8 divides the map), raised at 34x34; the block now runs ``dense`` there (exact,
    masks applied) and ``patch`` wherever S divides the map."""
    from laudtriton.nn import calibrate_block

    blk = make_block(32, 8, 1, "spatial", 8, seed=1)
    seq = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), blk).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        calibrate_block(blk, seq[0](x), 0.5)
    cs = compile_cpu(seq, x, variants=["patch"])
    for hw, used in ((34, "dense"), (40, "patch"), (32, "patch"), (33, "dense")):
        y = torch.randn(2, 3, hw, hw)
        with torch.no_grad():
            assert_close(cs(y), seq(y))
        assert cs[1].last_run.variant == used, hw


@pytest.mark.parametrize("mode, variant", [("spatial", "gather"), ("spatial", "dense"),
                                           ("channel", "slice"), ("layer", "compact")])
def test_blocks_in_a_users_module_give_no_gradient_whatever_their_variant(mode, variant):
    """CompiledBlock runs under no_grad, as CompiledModel. Before, in grad mode behind a
    trainable conv, the output carried history through the gates for some variants
    (backward then failed inside torch, or gave wrong gradients) and none for others."""
    from laudtriton.nn import calibrate_block

    seq = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1),
                        make_block(32, 8, 1, mode, 2, channel_granularity=2)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        calibrate_block(seq[1], seq[0](x), 0.5)
    cs = compile_cpu(seq, x, variants=[variant])
    out = cs(x)
    assert cs[1].last_run.variant == variant
    assert not out.requires_grad and out.grad_fn is None
    with torch.no_grad():
        assert_close(out, seq(x))


class TwoScales(nn.Module):
    """Runs one LaudResNet at two input sizes (multi-scale testing)."""

    def __init__(self):
        super().__init__()
        self.net = tiny()

    def forward(self, x):
        return self.net(x) + self.net(x[:, :, ::2, ::2])


def test_a_laud_resnet_called_at_two_sizes_is_refused_for_that_reason():
    """compile raised from its own second example forward with the compiled model's
    run-time message ("compile again with an example input of the new shape"), which
    no example could meet."""
    model, x = TwoScales(), torch.randn(2, 3, 64, 64)
    calibrate_rates(model.net, x, 0.5)
    with pytest.raises(ValueError, match=r"^compile: net is called on inputs of two sizes "
                                         r"in one forward \(\[B, 3, 64, 64\] then "
                                         r"\[B, 3, 32, 32\]\)"):
        compile_cpu(model, x)


class Mixed(nn.Module):
    """A spatial LaudResNet and a channel block outside it."""

    def __init__(self):
        super().__init__()
        self.net = tiny("spatial")
        self.loose = make_block(7, 4, mode="channel", channel_granularity=2, seed=1)

    def forward(self, x):
        return self.loose(self.net(x)[:, :, None, None].expand(-1, -1, 3, 3))


@pytest.mark.parametrize("variants, used", [(["slice"], "slice"), (["gather"], "gather")])
def test_variants_are_checked_over_the_whole_module(variants, used):
    """Each LaudResNet inside was checked alone: a variant only the other part runs was
    refused."""
    cw = compile_cpu(Mixed(), torch.randn(1, 3, 32, 32), variants=variants)
    assert used in {b.static_choice.variant for b in cw.modules()
                    if isinstance(b, CompiledBlock)}
    with pytest.raises(ValueError, match="no block of this model runs any of them"):
        compile_cpu(Mixed(), torch.randn(1, 3, 32, 32), variants=["compact"])


class Logged(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny()

    def forward(self, x):
        return self.net(torch.log(x))


def test_a_non_finite_input_of_a_nested_network_names_it():
    with pytest.raises(ValueError, match="^the input your forward gives net on the example "
                                         "holds NaN or inf"):
        compile_cpu(Logged(), torch.randn(1, 3, 32, 32))


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.head_bn, self.inner = nn.BatchNorm1d(7), Dropping(tiny())

    def forward(self, x):
        return self.head_bn(self.inner(x))


def test_a_refused_train_on_a_nested_module_of_the_users_changes_no_flag():
    cw = compile_cpu(Outer(), torch.randn(2, 3, 32, 32))
    for mod in (cw, cw.inner):
        with pytest.raises(RuntimeError, match="inference only"):
            mod.train()
        assert not any(m.training for m in cw.modules())
    assert is_guarded(cw) and is_guarded(cw.inner)
    assert not is_guarded(cw.head_bn)  # holds no compiled part


class KeepPool(nn.Module):
    """A global average pooling that keeps its input (flattened) in ``seen["f"]``."""

    def __init__(self, seen: dict):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        self.seen["f"] = x.flatten(1).clone()
        return nn.functional.adaptive_avg_pool2d(x, 1)


@pytest.mark.parametrize("where", ["avgpool", "fc", "own avgpool"])
def test_the_head_sees_the_samples_in_the_callers_order(where):
    """Layer blocks reorder the batch (order.SampleOrder); the logits were put back in
    the caller's order, but hooks on avgpool and fc saw the features in the reordered
    batch (features of one image returned for another), and so did an avgpool of the
    user's own without a hook (one that keeps its input, or mixes samples)."""
    model, x = tiny("layer"), torch.randn(8, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    seen = {}
    if where == "own avgpool":
        model.avgpool = KeepPool(seen)
    else:
        getattr(model, where).register_forward_hook(
            lambda mod, args, out: seen.__setitem__("f", args[0].flatten(1).clone()))
    with torch.no_grad():
        ref = model(x)
    want = seen.pop("f")
    gates = torch.stack([b.last_masks.grid.flatten() for b in model.modules()
                         if isinstance(b, LaudBottleneck)])
    assert bool(((gates > 0.5) != (gates[:, :1] > 0.5)).any())  # samples gated apart
    cm = compile_cpu(model, x, variants=["compact"])
    with torch.no_grad():
        assert_close(cm(x), ref)
    if where == "own avgpool":  # compile's copy of the module, and of its dict
        seen = cm.avgpool.seen
    assert_close(seen["f"], want, name=f"{where}'s input")


@pytest.mark.parametrize("mode", ["layer", "spatial"])
def test_hooks_on_compiled_blocks_see_what_the_reference_blocks_see(mode):
    """A hook registered on a compiled model's block saw the batch reordered (layer
    blocks) and its input overwritten by the block's output (the in-place variants)."""
    model, x = tiny(mode), torch.randn(8, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    blocks = [b for b in model.modules() if isinstance(b, LaudBottleneck)]
    cm = compile_cpu(model, x, variants=["compact"] if mode == "layer" else None)
    seen: dict[str, list] = {"ref": [], "cm": []}

    def keep(key):
        return lambda mod, args, out: seen[key].append((args[0].clone(), out.clone()))
    hooks = [b.register_forward_hook(keep("ref")) for b in blocks[1:3]]
    hooks += [b.register_forward_hook(keep("cm")) for b in cm.blocks[1:3]]
    inputs = {}
    hooks.append(cm.blocks[1].register_forward_pre_hook(
        lambda mod, args: inputs.__setitem__("pre", args[0].clone())))
    with torch.no_grad():
        ref = model(x)
        assert_close(cm(x), ref)
    assert len(seen["cm"]) == len(seen["ref"]) == 2
    for (ri, ro), (ci, co) in zip(seen["ref"], seen["cm"]):
        assert_close(ci, ri, name="a block's input, after it ran")
        assert_close(co, ro, name="a block's output")
    assert_close(inputs["pre"], seen["ref"][0][0], name="the pre-hook's input")
    if mode == "layer":
        gates = torch.stack([b.last_masks.grid.flatten() for b in blocks])
        assert bool(((gates > 0.5) != (gates[:, :1] > 0.5)).any())  # samples gated apart
    bad = x.clone()
    bad[3, 0, 0, 0] = float("nan")
    with torch.no_grad():  # a sample with NaN: NaN, the others as the reference's
        out = cm(bad)
    assert bool(out[3].isnan().all()) and not bool(out[torch.arange(8) != 3].isnan().any())
    assert bool(seen["cm"][-1][1][3].isnan().all())  # the hook sees it NaN too
    for h in hooks:
        h.remove()
    with torch.no_grad():  # without hooks: the fast path, the same logits
        assert_close(cm(x), ref)


def test_a_block_shared_between_two_places_or_inside_another_is_refused():
    """LaudResNet.blocks(), which the reference's forward runs, lists a shared block once
    and a nested one beside its parent; compile found blocks by place, so the compiled
    model ran other blocks than the reference (relative error 0.66 and 0.54)."""
    model = tiny()
    model.layer3 = nn.Sequential(model.layer2[0], *model.layer3)
    with pytest.raises(ValueError, match=r"^compile: layer2.0 and layer3.0 are one "
                                         r"LaudBottleneck \(a block shared"):
        compile_cpu(model, torch.randn(1, 3, 32, 32))
    model = tiny()
    model.layer2[0].extra = make_block(model.layer2[0].out_channels, 4, granularity=1)
    with pytest.raises(ValueError, match=r"^compile: layer2.0.extra is a LaudBottleneck "
                                         r"inside the LaudBottleneck layer2.0"):
        compile_cpu(model, torch.randn(1, 3, 32, 32))
    net, x = tiny("layer"), torch.randn(3, 3, 32, 32)

    class Twice(nn.Module):  # one whole network in two places: one CompiledModel in both
        def __init__(self):
            super().__init__()
            self.a, self.b = net, net

        def forward(self, x):
            return self.a(x) - 2 * self.b(x)
    twice = Twice().eval()
    with torch.no_grad():
        assert_close(compile_cpu(twice, x)(x), twice(x))


def test_a_hook_on_a_conv_linear_masker_in_a_network_with_layer_blocks_is_refused():
    """That masker's copy runs as a module, but after a layer block the batch may be in
    another order, which the hook would see."""
    model = tiny("layer-channel-channel-channel", channel_masker="conv_linear")
    model.layer3[0].masker_channel.register_forward_hook(lambda mod, args, out: None)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"layer3\.0\.masker_channel has a forward hook .* "
                                         r"layer-skipping"):
        compile_cpu(model, x)


def test_autocast_does_not_reach_a_compiled_model():
    """Under autocast the copied head computed in bfloat16 after float32 blocks (a
    bfloat16 result, off by 3e-3), or the first call failed in the oneDNN probe."""
    model, x = tiny("spatial"), torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cm = compile_cpu(model, x)
    with torch.no_grad():
        plain = cm(x)
        assert_close(plain, model(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = cm(x)
            blk = cm.blocks[0]
            h = torch.relu(torch.randn(2, blk.spec.in_channels, 8, 8)).contiguous(
                memory_format=torch.channels_last)
            out_under = blk(h)
        out_plain = blk(h)
    assert under.dtype == torch.float32 and torch.equal(under, plain)
    assert out_under.dtype == torch.float32 and torch.equal(out_under, out_plain)


def test_a_refused_conversion_or_load_leaves_the_users_module_as_it_was():
    """nn.Module.to and load_state_dict changed the wrapper's modules listed before the
    compiled one, which only then raised: a half-converted, half-loaded module."""
    x = torch.randn(2, 3, 32, 32)
    cw = compile_cpu(Dropping(tiny()), x)
    sd = {k: v.clone() for k, v in cw.state_dict().items()}
    with torch.no_grad():
        before = cw(x)
    with pytest.raises(RuntimeError, match="cannot move to torch.float64"):
        cw.double()
    assert cw.pre.weight.dtype == torch.float32
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    with pytest.raises(RuntimeError, match="cannot load a state dict"):
        cw.load_state_dict(changed)
    assert all(torch.equal(v, sd[k]) for k, v in cw.state_dict().items())
    with torch.no_grad():
        assert torch.equal(cw(x), before)
    assert cw.float() is cw and cw.to("cpu") is cw  # no change: allowed


@pytest.mark.parametrize("variants,says", [
    (3, "variants must be a variant name, a comma list or a list of names, got int 3"),
    ([], "variants is empty"), ([3], "variants: 3 is not a variant name")])
def test_malformed_variants_are_named(variants, says):
    with pytest.raises(ValueError, match=says):
        compile_cpu(tiny(), torch.randn(1, 3, 32, 32), variants=variants)


def test_global_module_hooks_see_what_the_reference_sees():
    """A hook registered for every module (register_module_forward_hook) was not seen by
    the compiled model: it fired on its blocks with the batch reordered and inputs later
    written over, and one that edits a block's output edited another sample (logits off
    by 1.45 of 2.38, no error). Now such a hook takes the hooked path."""
    from torch.nn.modules.module import register_module_forward_hook

    model, x = tiny("layer"), torch.randn(8, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x, variants=["compact"])
    ref_block = [b for b in model.modules() if isinstance(b, LaudBottleneck)][2]
    cm_block = cm.blocks[2]

    def edit(mod, args, out):  # sample 0 of the third block's output, doubled
        if mod is ref_block or mod is cm_block:
            out = out.clone()
            out[0] *= 2
            return out
        return None
    handle = register_module_forward_hook(edit)
    try:
        with torch.no_grad():
            ref = model(x)
            assert_close(cm(x), ref)
    finally:
        handle.remove()
    with torch.no_grad():  # without it: the fast path, the reference's logits unedited
        assert_close(cm(x), model(x))


def test_a_hook_on_the_compiled_stem_pool_keeps_what_it_saw():
    """compile refuses a hook on the source's maxpool (the blocks write over its output in
    place); one added to the compiled model's stem_pool afterwards kept a stem output
    that the first layer block then reordered (7.0 off on two samples)."""
    model, x = tiny("layer"), torch.randn(8, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    seen = {}
    cm = compile_cpu(model, x, variants=["compact"])
    h = cm.stem_pool.register_forward_hook(lambda mod, args, out: seen.__setitem__("o", out))
    with torch.no_grad():
        cm(x)
        want = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    h.remove()
    assert_close(seen["o"], want, name="the stem pool's output, kept by its hook")


def test_a_block_in_two_places_of_a_users_module_is_compiled_in_both():
    """Outside any LaudResNet a shared block was compiled in its first place only (the
    second kept the block itself, with a warning); each place now gets its own
    CompiledBlock, on one fold of the weights, with no warning."""
    from laudtriton.compiled_block import CompiledBlock

    blk = make_block(16, 4, granularity=2, seed=1)
    twice = nn.Sequential(blk, blk).eval()
    x = torch.randn(2, 16, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cm = compile_cpu(twice, x)
    assert isinstance(cm[0], CompiledBlock) and isinstance(cm[1], CompiledBlock)
    assert cm[0].fb is cm[1].fb
    with torch.no_grad():
        assert_close(cm(x), twice(x))


def test_a_block_of_stride_3_is_refused():
    """At stride 3 and more the compiled gates' mask1 of a 1x1 grid (every input pixel)
    is not the reference's (pixels no output reads stay off there): last_masks differed
    and the model refused its own masks given back. LAUDNet uses strides 1 and 2."""
    blk = make_block(16, 4, 3, "layer", 1, seed=1)
    with pytest.raises(ValueError, match="has stride 3; compiled LAUD blocks take stride 1 "
                                         "or 2"):
        compile_cpu(blk, torch.randn(1, 16, 9, 9))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
@pytest.mark.parametrize("mode", ["spatial", "channel", "layer"])
def test_tracing_or_exporting_a_compiled_model_or_block_is_refused(mode):
    """torch.jit.trace of a compiled channel block passed torch's own trace check and
    then gave 0.71 relative error on any other input: the masks' choices (variant,
    sliced weights, indices) were recorded as constants. torch.jit.script and fx tracing
    of the whole model failed inside torch (the forward's signature, its no_grad
    decorator) before saying why."""
    model, x = tiny(mode), torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x)
    refused = "CompiledModel cannot be traced, exported or scripted"
    with torch.no_grad():
        cm(x)
        with pytest.raises(RuntimeError, match=refused):
            torch.jit.trace(cm, x)
        blk = cm.blocks[1]
        xb = torch.relu(torch.randn(2, blk.spec.in_channels, *blk.spec.in_hw))
        blk_refused = f"CompiledBlock {blk.name} cannot be traced, exported or scripted"
        with pytest.raises(RuntimeError, match=blk_refused):
            torch.jit.trace(blk, xb.contiguous(memory_format=torch.channels_last))
        # the TorchScript ONNX exporter passed keyword-only defaults positionally: a
        # TypeError on forward's arguments before the refusal could say why
        with pytest.raises(RuntimeError, match=refused):
            torch.onnx.export(cm, (x,), io.BytesIO(), dynamo=False)
        with pytest.raises(RuntimeError, match=blk_refused):
            torch.onnx.export(blk, (xb,), io.BytesIO(), dynamo=False)
        with pytest.raises(RuntimeError, match=refused):
            torch.export.export(cm, (x,), strict=False)
        with pytest.raises(RuntimeError, match=blk_refused):
            torch.fx.symbolic_trace(blk)
        with pytest.raises(RuntimeError, match=refused):
            torch.fx.symbolic_trace(cm)
        with pytest.raises(RuntimeError, match=refused):
            torch.jit.script(cm)
        with pytest.raises(RuntimeError, match=blk_refused):
            torch.jit.script(blk)
        with pytest.raises(RuntimeError, match=refused):  # inside a module of the user's
            torch.jit.script(nn.Sequential(nn.Identity(), cm))
        assert_close(cm(x), model(x))  # still usable eagerly
    assert cm(x).grad_fn is None  # no_grad inside forward (no longer its decorator)


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer"])
def test_torch_compile_runs_the_compiled_parts_as_they_are(mode):
    """README: torch.compile runs a compiled model as it is. It traced into the variants
    instead: on LAUD-ResNet-50 (spatial, 64x64) 106 graphs and a minute with the eager
    backend, and inductor failed lowering the packed row GEMM. Now the compiled parts
    are one graph break each: a backend sees the user's layers around them, never ours."""
    model, x = tiny(mode), torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)

    class Head(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.scale = net, nn.Linear(7, 3)

        def forward(self, x):
            return self.scale(self.net(x) * 2)

    user = Head(model).eval()
    wrapped = compile_cpu(user, x)
    cm = compile_cpu(model, x)
    blk = cm.blocks[1]
    graphs = []

    def record(gm, example_inputs):
        graphs.append({str(n.target) for n in gm.graph.nodes
                       if n.op in ("call_function", "call_method", "call_module")})
        return gm.forward

    xb = torch.relu(torch.randn(2, blk.spec.in_channels, *blk.spec.in_hw)).contiguous(
        memory_format=torch.channels_last)
    for module, inputs in ((cm, [x, torch.randn_like(x)]), (blk, [xb, xb * 3]),
                           (wrapped, [x, torch.randn_like(x)])):
        fn = torch.compile(module, backend=record)
        for inp in inputs:  # another input: other masks, other choices
            with torch.no_grad():
                assert_close(fn(inp), module(inp))
    users = {"<built-in function mul>", "<built-in function linear>"}  # Head's own ops
    assert [g for g in graphs if g - users] == [], graphs
    assert users in graphs  # the user's own layers are still compiled


def test_torch_compiles_wrapper_around_a_laud_network_is_refused():
    """compile(torch.compile(model)) returned a copy whose forward ran the wrapped,
    uncompiled network (the wrapper keeps a callable bound to it), in silence: exact
    logits, no speedup, no last_stats. Nested in a module of the user's, the same."""
    model, x = tiny(), torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"^compile: the model is torch.compile's wrapper "
                                         r"\(OptimizedModule\), .*compile the module inside "
                                         r"\(model\._orig_mod\) first"):
        compile_cpu(torch.compile(model, backend="eager"), x)
    outer = nn.Sequential(nn.Identity(), torch.compile(model, backend="eager")).eval()
    with pytest.raises(ValueError, match=r"^compile: 1 is torch.compile's wrapper .*"
                                         r"\(1\._orig_mod\)"):
        compile_cpu(outer, x)


def test_a_compiled_part_the_forward_does_not_call_is_warned_about():
    """A forward that calls the network through a bound method kept in an attribute runs
    the uncompiled copy that method is bound to: compile returned it with no word (exact
    logits, last_stats empty, no speedup). Called as a submodule, no warning, and
    compile's own forwards leave no last_stats."""
    model, x = tiny(), torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)

    class Bound(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.run = net, net.__call__

        def forward(self, x):
            return self.run(x)

    class Direct(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

    with pytest.warns(UserWarning, match=r"the compiled module's forward did not call net on "
                                         r"the example input, which its uncompiled forward "
                                         r"reached\. If it gets there through .*a bound "
                                         r"method.*randomness or state"):
        bound = compile_cpu(Bound(model).eval(), x)
    with torch.no_grad():
        bound(x)
    assert bound.net.last_stats == []  # the compiled network never ran: what is warned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        direct = compile_cpu(Direct(model).eval(), x)
    assert direct.net.last_stats == []
    with torch.no_grad():
        assert_close(direct(x), model(x))
    assert len(direct.net.last_stats) == len(direct.net.blocks)


def test_a_model_on_the_meta_device_is_refused_naming_a_tensor():
    """torch's error advised to_empty(), which would have compiled uninitialised weights."""
    with torch.device("meta"):
        model = tiny()
    with pytest.raises(ValueError, match="conv1.weight is on the meta device"):
        compile_cpu(model, torch.randn(1, 3, 32, 32))


def test_a_model_whose_own_forward_fails_is_a_value_error_naming_it():
    """A model whose forward fails with torch's error (a Linear on a 4D map): compile
    passed the RuntimeError on (it is the model's, not ours). A block of stride 2 whose
    downsample was removed after it was built (the constructor refuses it) is refused by
    its own forward now, which compile reports as the model's refusal."""
    blk = make_block(8, 2, stride=2, mode="spatial", granularity=1)
    broken = nn.Sequential(blk, nn.Linear(3, 3)).eval()
    with pytest.raises(ValueError, match="the model's own forward fails on the example "
                                         "input \\(RuntimeError: mat1 and mat2"):
        compile_cpu(broken, torch.randn(1, 8, 10, 12))
    blk.downsample = None
    with pytest.raises(ValueError, match=r"the model refuses the example input: downsample "
                                         r"is None, .*got stride 2, inplanes 8"):
        compile_cpu(blk, torch.randn(1, 8, 10, 12))


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer"])
def test_a_model_with_nan_or_inf_in_a_tensor_it_computes_with_is_refused(mode):
    """The engine's fused ReLUs turn NaN into 0: a NaN weight (a corrupted checkpoint)
    gave finite logits where the reference's are NaN, and BN statistics whose fold is
    not finite (running_var + eps <= 0) the same; infinite masker biases (inf - inf in
    the gates' logit difference) gave relative error 0.27-0.82."""
    x = torch.randn(2, 3, 32, 32)

    def refused(edit, match, wrap=False):
        model = tiny(mode)
        with torch.no_grad():
            edit(model)
        target = nn.Sequential(nn.Identity(), model.layer1[0]).eval() if wrap else model
        xin = model.maxpool(model.relu(model.bn1(model.conv1(x)))) if wrap else x
        with pytest.raises(ValueError, match=match):
            compile_cpu(target, xin.detach())

    refused(lambda m: m.layer1[0].conv2.weight[0, 0, 0, 0].fill_(float("nan")),
            r"compile: layer1\.0\.conv2\.weight holds NaN or inf")
    refused(lambda m: m.conv1.weight[0, 0, 0, 0].fill_(float("inf")),
            r"compile: conv1\.weight holds NaN or inf")
    refused(lambda m: m.fc.bias.fill_(float("nan")), r"compile: fc\.bias holds NaN or inf")
    refused(lambda m: m.layer1[0].conv2.weight[0, 0, 0, 0].fill_(float("nan")),
            r"compile: 1\.conv2\.weight holds NaN or inf", wrap=True)
    masker = "masker_channel.conv.0" if mode == "channel" else "masker_spatial.conv"
    refused(lambda m: m.layer2[0].get_submodule(masker).bias.fill_(float("inf")),
            rf"compile: layer2\.0\.{re.escape(masker)}\.bias holds NaN or inf")
    refused(lambda m: m.layer1[0].bn2.running_var.fill_(-1.0),
            r"compile: layer1\.0: its BatchNorm layers fold to NaN or inf \(running_var "
            r"\+ eps <= 0\?\)")

    def zero_var(m):
        m.bn1.eps, m.bn1.running_var[0] = 0.0, 0.0
    refused(zero_var, r"compile: the stem's BatchNorm folds to NaN or inf")


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer"])
def test_nan_or_inf_that_a_hook_puts_in_comes_back_as_nan(mode):
    """A forward hook on a compiled block (or a pre-hook) that made a value infinite:
    the next blocks' fused ReLUs turned it into 0 and the sample came back finite, where
    the reference's is inf or NaN (the hooked path tested each block's input only when
    the image itself was not finite)."""
    model, x = tiny(mode), torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)

    def inf_into_sample_1(mod, args, out=None):
        t = (args[0] if out is None else out).clone()
        t[1, 0, 1, 1] = float("inf")
        return (t,) if out is None else t

    for pre in (False, True):
        cm, ref = compile_cpu(model, x), copy.deepcopy(model)
        reg = "register_forward_pre_hook" if pre else "register_forward_hook"
        getattr(cm.blocks[1], reg)(inf_into_sample_1)
        getattr(dict(ref.blocks())[cm.blocks[1].name], reg)(inf_into_sample_1)
        with torch.no_grad():
            want, out = ref(x), cm(x)
        assert not torch.isfinite(want[1]).all()
        assert out[1].isnan().all(), out[1]
        assert_close(out[0], want[0])


def test_masks_that_are_not_real_tensors_on_the_blocks_device_are_refused_naming_them():
    """check_masks read shapes and values only: a list, a numpy array, a complex or a
    meta tensor failed inside torch without naming the block or the mask."""
    model, x = tiny("spatial"), torch.randn(2, 3, 32, 32)
    cm = compile_cpu(model, x)
    cm(x)
    given = [blk.last_masks for blk in cm.blocks]
    name = cm.blocks[0].name
    for field, bad, match in [
            ("grid", given[0].grid.tolist(), "must be a tensor, got list"),
            ("grid", given[0].grid.numpy(), "must be a tensor, got ndarray"),
            ("mask1", given[0].mask1.to("meta"), "is on meta; the block runs on cpu"),
            ("grid", given[0].grid.to(torch.complex64), "is complex64; give real values"),
            ("grid", given[0].grid.to_sparse(), "is a sparse_coo tensor; give a strided")]:
        masks = list(given)
        masks[0] = replace(given[0], **{field: bad})
        with pytest.raises(ValueError, match=f"{name}: masks.{field} {match}"):
            cm(x, masks=masks)


def test_inputs_that_are_not_strided_tensors_are_refused():
    """An mkldnn or sparse input failed inside torch ('unsupported memory format option
    ChannelsLast', 'Could not run aten::avg_pool2d ... SparseCPU')."""
    model, x = tiny("spatial"), torch.randn(2, 3, 32, 32)
    cm = compile_cpu(model, x)
    blk = cm.blocks[1]
    xb = torch.relu(torch.randn(2, blk.spec.in_channels, *blk.spec.in_hw))
    for layout, f, inp, who in [("mkldnn", cm, x.to_mkldnn(), "input"),
                                ("sparse_coo", cm, x.to_sparse(), "input"),
                                ("mkldnn", blk, xb.to_mkldnn(), f"{blk.name}: input"),
                                ("sparse_coo", blk, xb.to_sparse(), f"{blk.name}: input")]:
        with pytest.raises(ValueError, match=f"{who} is a {layout} tensor; give a strided"):
            f(inp)
    for layout, inp in [("mkldnn", x.to_mkldnn()), ("sparse_coo", x.to_sparse())]:
        with pytest.raises(ValueError, match=f"example_input is a {layout} tensor; give a "
                                             "strided"):
            compile_cpu(tiny("spatial"), inp)


def test_reuse_input_on_an_input_with_negative_values_is_refused():
    """reuse_input promises x is a ReLU output (>= 0): the compact variant leaves a skipped
    sample's x as its output, and gave relative error 0.98 on an input with negative
    values (a direct call; a CompiledModel's blocks get its own ReLU outputs)."""
    blk = make_block(16, 4, 1, "layer", 1, seed=1)
    x = torch.randn(2, 16, 8, 8) - 0.5
    calibrate_block(blk, x, 0.5)
    cb = compile_cpu(blk, x, variants=["compact"]).blocks[0]
    with pytest.raises(ValueError, match=f"{cb.name}: reuse_input=True takes a ReLU output "
                                         r"\(x >= 0\); x holds negative values"):
        cb(x.contiguous(memory_format=torch.channels_last), reuse_input=True)
    xr = torch.relu(x).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_close(cb(xr.clone(), reuse_input=True), blk(xr))


def test_decorator_takes_variants_from_a_generator():
    """The options check read the generator at decoration; each call of the factory then
    got it empty ('variants is empty')."""
    x = torch.randn(1, 3, 32, 32)

    @laudtriton.compile(example_input=x, backend="cpu", tune="off",
                        variants=(v for v in ["compact"]))
    def make():
        return tiny("layer")

    for _ in range(2):
        cm = make()
        assert {b.static_choice.variant for b in cm.blocks} == {"compact"}


def test_a_compiled_block_runs_the_channel_masks_it_is_given():
    """A mutation audit: a compiled model that is not a LaudResNet (here one block)
    could drop the masks it is given and run its maskers' own, and no test noticed."""
    from laudtriton.testing import reference_on_masks

    torch.manual_seed(0)
    block = make_block(16, 4, mode="channel", channel_granularity=2).eval()
    x = torch.relu(torch.randn(2, 16, 8, 8))
    calibrate_block(block, x, 0.5)
    cm = compile_cpu(block, x)
    assert isinstance(cm, CompiledModel) and not cm.is_resnet
    with torch.no_grad():
        cm(x)
    (own,) = [b.last_masks for b in cm.blocks]
    flipped = replace(own, channel=1 - own.channel)
    with torch.no_grad():
        got = cm(x, masks=[flipped])
    want = reference_on_masks(block, x, flipped).float()
    assert_close(got, want)
    assert not torch.allclose(got, block(x), atol=1e-3)  # not the maskers' own masks


class TwoBatches(nn.Module):
    """A LaudResNet called twice in one forward, on one input size, at two batch sizes."""

    def __init__(self):
        super().__init__()
        self.net = tiny()

    def forward(self, x):
        return self.net(x) + self.net(x[:1]).mean(0)


def test_capture_takes_a_network_called_at_two_batch_sizes_of_one_input_size():
    """Only the input size ([B, C, H, W] without B) of a LaudResNet called twice must
    agree, as a CompiledModel runs any batch of its size: the first call's input is the
    one captured, and another size is still refused."""
    from laudtriton.capture import capture_inputs

    model, x = TwoBatches().eval(), torch.randn(2, 3, 64, 64)
    captured, missed = capture_inputs(model, x, [("net", model.net)])
    assert [(name, tuple(t.shape)) for name, _, t in captured] == [("net", (2, 3, 64, 64))]
    assert missed == []
    scales = TwoScales().eval()
    with pytest.raises(ValueError, match=r"^compile: net is called on inputs of two sizes"):
        capture_inputs(scales, x, [("net", scales.net)])
