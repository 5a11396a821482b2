"""Defects found by an audit of what wraps the compiled parts (capture, the module copy,
the folded stem, the dense baseline): the dense baseline computing another network than
the reference for a block the fold cannot express, reading a training-mode model's
parametrized weights (two forms of two networks, the user's model changed), and compile's
example forwards changing the user's example input in place."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import laudtriton
from laudtriton.baseline import DenseModel, dense_forms
from laudtriton.nn import LaudResNet
from laudtriton.testing import randomize_bn


def tiny(mode="spatial", **kw):
    torch.manual_seed(0)
    return randomize_bn(LaudResNet((1, 2, 1, 1), mode=mode, granularity="2-2-1-1",
                                   width_mult=0.25, input_size=None, num_classes=7,
                                   **kw)).eval()


def masks_on(model):
    """Every masker of ``model`` keeps everything: the reference is the dense network."""
    for _, blk in model.blocks():
        for masker in (blk.masker_spatial, blk.masker_channel):
            if masker is None:
                continue
            last = [m for m in masker.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
            n = last.bias.numel() // 2
            with torch.no_grad():
                last.weight.zero_()
                last.bias[:n], last.bias[n:] = 1e4, -1e4
    return model


def close(out, ref):
    return float((out - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


@pytest.mark.parametrize("form", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("change", ["downsample 3x3", "downsample bias", "conv1 bias"])
def test_the_dense_baseline_refuses_a_block_the_fold_cannot_express(form, change):
    """The fold reads a 1x1 downsample conv's [:, :, 0, 0] and no conv bias: a 3x3
    downsample (its corner tap taken) or a conv with bias made DenseModel compute another
    network than the reference, silently (0.05 and 0.43 max error); compile refuses them."""
    model = tiny()
    blk = model.layer2[0]
    if change == "downsample 3x3":
        old = blk.downsample[0]
        blk.downsample[0] = nn.Conv2d(old.in_channels, old.out_channels, 3, 2, 1, bias=False)
    elif change == "downsample bias":
        old = blk.downsample[0]
        blk.downsample[0] = nn.Conv2d(old.in_channels, old.out_channels, 1, 2, bias=True)
    else:
        old = blk.conv1
        blk.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 1, bias=True)
    model = masks_on(randomize_bn(model).eval())
    with pytest.raises(ValueError, match=r"layer2\.0\.(downsample|conv1)"):
        DenseModel(model, form)


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer", "both"])
@pytest.mark.parametrize("batch, hw", [(1, (33, 47)), (3, (9, 13))])
def test_both_dense_forms_are_the_reference_with_every_mask_on(mode, batch, hw):
    model = masks_on(tiny(mode))
    x = torch.randn(batch, 3, *hw)
    with torch.no_grad():
        ref = model(x)
    for name, dense in dense_forms(model).items():
        assert close(dense(x), ref), name


def test_the_dense_baseline_reads_a_training_model_as_in_eval_and_leaves_it_unchanged():
    """spectral_norm's weight, read in training mode, runs a power iteration that updates
    the model's u and v: each DenseModel changed the user's model, and the NCHW and
    channels_last forms (built one after the other) held different weights."""
    model = masks_on(tiny())
    parametrizations.spectral_norm(model.conv1)
    parametrizations.spectral_norm(model.layer1[0].conv2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forms = dense_forms(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        ref = model.eval()(x)
    for name, dense in forms.items():
        assert close(dense(x), ref), name


class Halves(nn.Module):
    """A user's module whose forward scales its input in place."""

    def __init__(self):
        super().__init__()
        self.net = tiny(in_channels=1)

    def forward(self, x):
        x /= 2
        return self.net(x)


def test_compile_leaves_the_example_input_as_it_was():
    """A one-channel float32 example is channels_last already, so compile's example
    forwards ran on the user's tensor itself: a forward that scales its input in place
    divided the user's example by 8 (three forwards), and each forward saw another input."""
    model = Halves().eval()
    x = torch.randn(2, 1, 33, 47)
    kept = x.clone()
    cm = laudtriton.compile(model, x, backend="cpu", tune="off", progress=False)
    assert torch.equal(x, kept)
    with torch.no_grad():
        assert close(cm(x.clone()), model(x.clone()))


class Flattens(nn.Module):
    """A user's module that flattens a block's map with .view (contiguous in NCHW)."""

    def __init__(self):
        super().__init__()
        self.net = tiny()

    def forward(self, x):
        h = self.net.stem(x)
        for _, blk in self.net.blocks():
            h = blk(h)
        return h.view(h.shape[0], -1)


def test_a_forward_failing_on_the_channels_last_example_says_so():
    """compile runs the forward on a channels_last example (compiled blocks return that
    layout too): the refusal said the model's own forward fails, where it runs on the
    user's NCHW input; it now names the layout and the way out."""
    model = Flattens().eval()
    x = torch.randn(1, 3, 64, 64)  # the last map is 2x2
    model(x)
    with pytest.raises(ValueError, match=r"own forward fails on the example input "
                                         r"\(RuntimeError: view size.*channels_last.*"
                                         r"use \.reshape\(\)"):
        laudtriton.compile(model, x, backend="cpu", tune="off", progress=False)
