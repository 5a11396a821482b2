"""Audit of ``nn.calibrate``: the rates it reaches are the rates it reports and the
masks realise, and it leaves what it does not calibrate as found."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from laudtriton.nn import LaudResNet, calibrate_block, calibrate_rates


def tiny(mode: str) -> LaudResNet:
    torch.manual_seed(0)
    return LaudResNet((1, 2, 1, 1), mode=mode, granularity="2-2-1-1", input_size=64,
                      width_mult=0.25, num_classes=10)


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer", "both",
                                  "spatial-channel-layer-both"])
@pytest.mark.parametrize("batch, rate", [(1, 0.3), (3, 0.3), (3, 0.0), (5, 1.0)])
def test_reported_rates_are_the_realised_ones(mode, batch, rate):
    model = tiny(mode).train()
    model.layer1[0].conv1.weight.requires_grad_(False)
    grads = [p.requires_grad for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    x = torch.randn(batch, 3, 64, 64)
    got = calibrate_rates(model, x, rate)
    assert not model.training  # as documented: left in eval mode
    assert grads == [p.requires_grad for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    sizes = {}
    hooks = [b.register_forward_pre_hook(lambda m, a, n=n: sizes.__setitem__(n, a[0].shape))
             for n, b in model.blocks()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for (name, block), stats, reported in zip(model.blocks(), model.last_stats.blocks, got):
        if block.masker_spatial is not None:  # cells of the grid, or samples (layer gate)
            n = batch * int(np.prod(block.grid_size(tuple(sizes[name][-2:]))))
            assert reported == float(stats.rate3), name
            assert float(stats.rate3) == pytest.approx(round(rate * n) / n, abs=1e-6), name
        if block.masker_channel is not None:
            n = batch * block.masker_channel.groups
            channel = float(stats.channel_rate)
            assert channel == pytest.approx(round(rate * n) / n, abs=1e-6), name
            if block.masker_spatial is None:
                assert reported == channel, name


@pytest.mark.parametrize("value", [np.array(0.25), np.float32(0.25), torch.tensor(0.25)])
def test_rate_as_a_0d_array_counts(value):
    """A 0-d numpy array was refused as 'not a number' (SparsityLoss takes one)."""
    a, b = tiny("both"), tiny("both")
    x = torch.randn(2, 3, 64, 64)
    assert calibrate_rates(a, x, value, value) == calibrate_rates(b, x, 0.25, 0.25)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    block = tiny("both").layer2[0]
    calibrate_block(block, torch.randn(2, block.inplanes, 8, 8), value)


@pytest.mark.parametrize("value", [np.array(1.5), np.array([0.5]), np.array(True),
                                   np.array(float("nan"))])
def test_bad_rate_arrays_are_named(value):
    with pytest.raises(ValueError, match=r"^rate must be in \[0, 1\] \(a number\), got "):
        calibrate_rates(tiny("spatial"), torch.randn(1, 3, 64, 64), value)


def test_calibrate_block_keeps_the_training_flag():
    block = tiny("both").layer1[0].train()
    calibrate_block(block, torch.randn(2, block.inplanes, 16, 16), 0.5)
    assert block.training


def _mixed_flags(model: torch.nn.Module) -> list[bool]:
    """``model`` in training with its first stage and one masker frozen in eval (as a
    fine-tuning run holds it); returns every module's flag."""
    model.train()
    model.layer1.eval()
    model.layer2[0].masker_spatial.eval()
    return [m.training for m in model.modules()]


def test_calibrate_rates_reads_a_model_in_eval_as_the_dense_baseline_does():
    """From a mix of flags (a frozen stage inside a training model), calibrate_rates and
    DenseModel both read the model in eval (``in_eval``); DenseModel puts each flag back,
    calibrate_rates leaves every module in eval, as documented (and each flag back when
    it stops on an error)."""
    from laudtriton.baseline import DenseModel

    model = tiny("both")
    flags = _mixed_flags(model)
    DenseModel(model, torch.channels_last)
    assert [m.training for m in model.modules()] == flags
    with pytest.raises(ValueError, match="is too small"):
        calibrate_rates(model, torch.randn(2, 3, 8, 8), 0.5)
    assert [m.training for m in model.modules()] == flags
    calibrate_rates(model, torch.randn(2, 3, 64, 64), 0.5)
    assert not any(m.training for m in model.modules())


def test_calibrate_rates_in_eval_semantics_whatever_the_flags():
    """The rates are those an eval forward realises, from any mix of flags."""
    x = torch.randn(3, 3, 64, 64)
    a, b = tiny("both").eval(), tiny("both")
    _mixed_flags(b)
    assert calibrate_rates(a, x, 0.4) == calibrate_rates(b, x, 0.4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(a.buffers(), b.buffers()))


def test_calibrate_block_puts_back_the_flags_inside_the_block():
    """block.train(was_training) set every module of the block to the block's flag: a
    masker frozen in eval inside a training block came back in training."""
    block = tiny("both").layer2[0].train()
    block.masker_channel.eval()
    flags = [m.training for m in block.modules()]
    calibrate_block(block, torch.randn(2, block.inplanes, 16, 16), 0.5)
    assert [m.training for m in block.modules()] == flags


@pytest.mark.parametrize("part", ["layer2.0.masker_spatial", "layer1.0.bn3"])
def test_a_tensor_left_on_the_meta_device_is_named(part):
    """Only conv1's weight was checked: a masker left on meta failed in torch
    (Tensor.item() cannot be called on meta tensors)."""
    model = tiny("both")
    model.get_submodule(part).to("meta")
    with pytest.raises(ValueError, match=rf"^the model's weights are on the meta device "
                                         rf"\(no data: {part}\.[\w.]+\)"):
        calibrate_rates(model, torch.randn(1, 3, 64, 64), 0.5)
    block = model.get_submodule(part.rsplit(".", 1)[0])
    with pytest.raises(ValueError, match=r"^the block's weights are on the meta device"):
        calibrate_block(block, torch.randn(1, block.inplanes, 16, 16), 0.5)


@pytest.mark.parametrize("wrap, inner", [(torch.nn.DataParallel, "module"),
                                         (torch.nn.Sequential, "0")])
def test_a_wrapped_network_is_refused_naming_the_network_inside(wrap, inner):
    """The hint named calibrate_block (one LaudBottleneck) for a wrapped network."""
    with pytest.raises(ValueError, match=rf"^calibrate_rates takes a LaudResNet, got "
                                         rf"{wrap.__name__} \(one holding a LaudResNet: "
                                         rf"calibrate that network, its '{inner}'\)"):
        calibrate_rates(wrap(tiny("spatial")), torch.randn(1, 3, 64, 64), 0.5)
