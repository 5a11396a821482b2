"""Audit of the training losses (laudtriton.nn.losses): a model with no dynamic block, a
num_epochs too small for the bounds schedule's arithmetic, and where the "no gradient"
warning of SparsityLoss points."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from laudtriton.nn import BlockStats, LaudResNet, ModelStats, SparsityLoss


def tiny(**kw) -> LaudResNet:
    return LaudResNet((1, 1, 1, 1), width_mult=0.25, input_size=64, num_classes=10, **kw)


def test_sparsity_loss_refuses_stats_without_a_dynamic_block():
    """A LaudResNet whose stages were emptied (no dynamic block) left ModelStats([], ...)
    with int FLOPs: the loss raised AttributeError ('int' object has no attribute
    'requires_grad'); an empty ModelStats with tensor FLOPs raised torch.stack's
    RuntimeError (the official loss divides by zero blocks)."""
    model = tiny().train()
    for i in range(1, 5):
        setattr(model, f"layer{i}", nn.ModuleList())
    model.fc = nn.Linear(16, 10)
    model(torch.randn(2, 3, 64, 64))
    assert model.last_stats is not None and model.last_stats.blocks == []
    loss = SparsityLoss(target=0.5, num_epochs=10)
    empty = ModelStats([], torch.tensor(1.0, requires_grad=True), 2.0)
    for stats in (model.last_stats, empty):
        with pytest.raises(ValueError, match=r"stats hold no dynamic block"):
            loss(stats, 1.0)


@pytest.mark.parametrize("num_epochs", [5e-324, 1e-323])
def test_sparsity_bounds_with_a_tiny_num_epochs(num_epochs):
    """0.33 x 5e-324 underflows to 0: bounds() raised ZeroDivisionError for a num_epochs
    the constructor accepts. Any epoch > 0 is then past the relaxation ([0, 1]), any
    epoch <= 0 before it ([target, target])."""
    loss = SparsityLoss(target=0.5, num_epochs=num_epochs)
    assert loss.bounds(0) == pytest.approx((0.5, 0.5))
    assert loss.bounds(-1) == pytest.approx((0.5, 0.5))
    assert loss.bounds(1) == pytest.approx((0.0, 1.0))


def test_sparsity_bounds_unchanged_for_ordinary_lengths():
    """The schedule keeps its values (progress = cos^2(pi/2 * epoch / (0.33 N)))."""
    import math

    loss = SparsityLoss(target=0.3, num_epochs=90)
    for epoch in (0, 0.5, 3, 10, 29.6, 29.7, 29.8, 60, 1e300):
        p = min(max(epoch / (0.33 * 90), 0.0), 1.0)
        prog = math.cos(p * math.pi / 2) ** 2
        assert loss.bounds(epoch) == pytest.approx((prog * 0.3, 1 - prog * 0.7),
                                                   rel=1e-12, abs=1e-12)


def test_no_gradient_warning_points_at_the_caller():
    """The warning named torch/nn/modules/module.py (stacklevel=2 stops inside
    nn.Module.__call__), not the line that called the loss; called as loss(...) or
    loss.forward(...), it now names the caller's file."""
    model = tiny().eval()
    model(torch.randn(1, 3, 64, 64))  # eval mode, grad on: statistics without a gradient
    loss = SparsityLoss(target=0.5, num_epochs=10)
    for call in (loss, loss.forward):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call(model.last_stats, 1.0)
        assert len(caught) == 1
        assert "statistics carry no gradient" in str(caught[0].message)
        assert caught[0].filename == __file__, caught[0].filename


def test_rates_of_the_training_forward_reach_the_maskers_at_batch_one():
    """Batch 1, every mode: the loss of a training forward is finite and gives every
    spatial / channel masker's last layer a finite, non-zero gradient."""
    for mode in ("spatial", "layer", "channel", "both"):
        torch.manual_seed(0)
        model = tiny(mode=mode, granularity="2-2-1-1").train()
        with torch.no_grad():  # about 50% keep, so the rates are not pinned at 1
            for _, b in model.blocks():
                if b.masker_spatial is not None:
                    b.masker_spatial.conv.bias.zero_()
                if b.masker_channel is not None:
                    b.masker_channel.last_linear().bias.zero_()
        model(torch.randn(1, 3, 64, 64))
        value = SparsityLoss(target=0.3, num_epochs=10)(model.last_stats, 0.0)
        assert torch.isfinite(value)
        value.backward()
        grads = [p.grad for n, p in model.named_parameters() if ".masker_" in n
                 and n.endswith("bias") and p.grad is not None]
        assert grads, mode
        assert all(torch.isfinite(g).all() for g in grads), mode
        assert sum(float(g.abs().sum()) for g in grads) > 0, mode


def test_one_block_stats_ratio_by_hand():
    """One block, target 1 at epoch 0 (bounds [1, 1]): (1 - r)^2 + (F/Fd - 1)^2."""
    one = torch.tensor(1.0)
    block = BlockStats(one, one, one, one, torch.tensor(50.0, requires_grad=True), 100.0, 0.0)
    stats = ModelStats([block], torch.tensor(80.0, requires_grad=True), 100.0)
    got = SparsityLoss(target=1.0, num_epochs=10)(stats, 0)
    assert got.item() == pytest.approx(0.5**2 + 0.2**2)


def test_sparsity_loss_resumes_from_its_arguments():
    """Item: the loss keeps target and num_epochs out of its state_dict. Not a loss of
    state: it holds none (epoch comes with every call), as a torch loss's options are
    constructor arguments. A checkpoint (model + optimizer + loss state) round-trips with
    weights_only=True, and the loss rebuilt from its arguments gives the same values at
    the resumed epoch; keeping the state_dict empty keeps the keys of a module holding it."""
    import io

    model = tiny().train()
    model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    loss = SparsityLoss(target=0.3, num_epochs=90)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "loss": loss.state_dict(), "epoch": 12}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert ckpt["loss"] == {}
    again = SparsityLoss(target=0.3, num_epochs=90)
    again.load_state_dict(ckpt["loss"])  # strict: no key expected, none given
    for epoch in (ckpt["epoch"], 29.7, 60):
        assert again.bounds(epoch) == loss.bounds(epoch)
        assert torch.equal(again(model.last_stats, epoch), loss(model.last_stats, epoch))
    holder = nn.Module()
    holder.crit = loss
    assert list(holder.state_dict()) == []


def test_non_finite_stats_give_a_non_finite_loss_that_a_grad_scaler_skips():
    """Item: SparsityLoss does not refuse NaN/inf statistics. Kept, as torch's losses do:
    an AMP GradScaler needs the non-finite gradient to skip the step and lower its scale
    (a raise would end the run), and a check would wait on the device every step."""
    one = torch.tensor(1.0)
    for bad in (float("nan"), float("inf")):
        block = BlockStats(one, one, one, one, torch.tensor(50.0, requires_grad=True),
                           100.0, 0.0)
        stats = ModelStats([block], torch.tensor(bad, requires_grad=True), 100.0)
        assert not torch.isfinite(SparsityLoss(target=0.5, num_epochs=10)(stats, 0))
    model = tiny().train()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, 0] = float("nan")  # a model whose forward produces NaN
    model(x)
    value = SparsityLoss(target=0.5, num_epochs=10)(model.last_stats, 0)
    assert torch.isnan(value)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(value).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() == 2.0**15


@pytest.mark.parametrize("shape", [(3, 0), (1, 0)])
def test_kd_loss_refuses_logits_of_no_class(shape):
    """[B, 0] logits gave a loss of 0 with no gradient (softmax over no class: no
    distribution to distil); they are refused as an empty batch is."""
    from laudtriton.nn import KDLoss

    student, teacher = torch.randn(shape, requires_grad=True), torch.randn(shape)
    with pytest.raises(ValueError, match=r"hold no class \(shape \(\d, 0\)\)"):
        KDLoss(2.0)(student, teacher)
    assert KDLoss(2.0)(torch.randn(3, 1), torch.randn(3, 1)).item() == 0.0  # one class: 0
