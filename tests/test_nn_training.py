"""Training support of laudtriton.nn: Gumbel straight-through masks, gradients to the
maskers, the official sparsity loss (bounds schedule) and the KD loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from laudtriton.nn import BlockStats, KDLoss, LaudResNet, ModelStats, SparsityLoss
from laudtriton.testing import make_block

MODES = [
    dict(mode="spatial", granularity="2-2-1-1"),
    dict(mode="layer"),
    dict(mode="channel", channel_granularity=2, channel_masker_layers=2),
    dict(mode="channel", channel_masker_layers=1),
    dict(mode="channel", channel_masker="conv_linear", channel_masker_reduction=4),
    dict(mode="both", granularity="2-2-1-1", channel_granularity=2, channel_masker_layers=1),
]


def tiny(**kw) -> LaudResNet:
    return LaudResNet((1, 1, 1, 1), width_mult=0.25, input_size=64, num_classes=10, **kw)


def masker_params(model):
    return {n: p for n, p in model.named_parameters() if ".masker_" in n}


def _open_maskers(model):
    """Move every masker to about 50% keep so Gumbel samples vary (the official init starts
    with every mask on, which gives tiny gradients)."""
    with torch.no_grad():
        for _, b in model.blocks():
            if b.masker_spatial is not None:
                b.masker_spatial.conv.bias.zero_()
            if b.masker_channel is not None:
                b.masker_channel.last_linear().bias.zero_()


@pytest.mark.parametrize("loss", ["task", "sparsity"])
@pytest.mark.parametrize("cfg", MODES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_gradients_reach_every_masker_parameter(cfg, loss):
    """Through the straight-through Gumbel masks (task loss) and through the FLOPs of the
    statistics (sparsity loss), every masker parameter gets a finite, non-zero gradient."""
    torch.manual_seed(0)
    model = tiny(**cfg).train()
    _open_maskers(model)
    x = torch.randn(4, 3, 64, 64)
    logits = model(x)
    if loss == "task":
        value = F.cross_entropy(logits, torch.tensor([0, 3, 5, 9]))
    else:
        value = SparsityLoss(target=0.3, num_epochs=10)(model.last_stats, epoch=1.0)
    value.backward()
    params = masker_params(model)
    assert params
    for name, p in params.items():
        if loss == "sparsity" and (".masker_channel.conv.1." in name):
            continue  # masker BN feeds only the masks; checked with the task loss
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


@pytest.mark.parametrize("mode", ["spatial", "layer", "channel", "both"])
def test_train_masks_are_gumbel_straight_through(mode):
    """Train masks are exactly F.gumbel_softmax(logits, hard=True, tau)[:, 0] drawn in the
    official order (channel masker first), and hard 0/1."""
    block = make_block(16, 4, mode=mode, granularity=2, channel_granularity=2, seed=3).train()
    block.temperature = 0.7
    x = torch.randn(3, 16, 8, 8)
    torch.manual_seed(11)
    masks, _ = block.compute_masks(x)
    torch.manual_seed(11)
    if block.masker_channel is not None:
        want_c = F.gumbel_softmax(block.masker_channel.logits(x), dim=1, tau=0.7, hard=True)[:, 0]
        assert torch.equal(masks.channel, want_c)
        assert set(masks.channel.unique().tolist()) <= {0.0, 1.0}
    if block.masker_spatial is not None:
        grid = block.grid_size((8, 8))
        logits = block.masker_spatial.logits(x, grid)
        want_s = F.gumbel_softmax(logits, dim=1, tau=0.7, hard=True)[:, 0:1]
        assert torch.equal(masks.grid, want_s)
        assert masks.grid.requires_grad
        assert set(masks.grid.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_train_masks_of_half_logits_draw_their_noise_in_float32(monkeypatch, dtype):
    """Under CPU autocast the maskers' logits are float16, whose exponential_ draws an
    exact 0 about 3 times in 1e8 (a NaN softmax, then NaN in BN's running statistics):
    the Gumbel noise is drawn in float32, the mask returned in the logits' dtype, hard
    0/1 with its straight-through gradient."""
    block = make_block(16, 4, mode="both", granularity=2, channel_granularity=2, seed=3).train()
    drawn = []
    real = torch.Tensor.exponential_

    def spy(self, *args, **kwargs):
        drawn.append(self.dtype)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "exponential_", spy)
    x = torch.randn(3, 16, 8, 8)
    with torch.autocast("cpu", dtype=dtype):
        masks, _ = block.compute_masks(x)
        out = block(x)
    assert drawn and set(drawn) == {torch.float32}
    for m in (masks.grid, masks.channel):
        assert m.dtype == dtype and set(m.unique().tolist()) <= {0.0, 1.0}
    assert masks.grid.requires_grad
    out.float().sum().backward()
    assert block.masker_spatial.conv.weight.grad is not None


def test_train_mode_is_stochastic_and_eval_is_not():
    torch.manual_seed(0)
    model = tiny(mode="spatial", granularity="1-1-1-1")
    _open_maskers(model)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    grids = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model(x)
        grids.append([blk.last_masks.grid.detach().clone() for _, blk in model.blocks()])
    assert any(not torch.equal(u, v) for u, v in zip(*grids))
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        e1 = model(x)
        torch.manual_seed(2)
        e2 = model(x)
    assert torch.equal(e1, e2)


def test_set_temperature():
    model = tiny()
    model.set_temperature(0.25)
    assert all(b.temperature == 0.25 for _, b in model.blocks())
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"temperature must be a finite number > 0"):
            model.set_temperature(bad)


@pytest.mark.parametrize("cfg", MODES, ids=lambda c: "-".join(map(str, c.values())))
def test_a_model_copies_after_a_training_forward(cfg):
    """After a training forward the last forward's records carry autograd history, which
    deepcopy refuses; copies and pickles leave them out (an EMA or best-model copy)."""
    import copy
    import pickle

    model = tiny(**cfg).train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert twin.last_stats is None
        assert all(b.last_masks is None and b.last_stats is None for _, b in twin.blocks())
        twin.eval()
        model.eval()
        with torch.no_grad():
            assert torch.equal(twin(x), model(x))
        model.train()
    assert model.last_stats is not None  # the model keeps its own


def test_flops_statistics_of_a_half_forward_are_finite():
    """Rates and FLOPs are kept in float32 at least: a conv term of a ResNet-50 block
    (~5e7) overflows float16, as under autocast."""
    block = make_block(256, 64, mode="spatial", granularity=4, seed=0).eval()
    x = torch.randn(1, 256, 56, 56)
    with torch.no_grad():
        block(x)
        want = block.last_stats
        block.half()(x.half())
    got = block.last_stats
    assert got.flops.dtype == torch.float32 and math.isfinite(float(got.flops))
    assert float(got.flops) == pytest.approx(float(want.flops), rel=1e-3)


# ---------------------------------------------------------------------------- sparsity loss


def test_sparsity_bounds_schedule_is_the_official_one():
    """Official SparsityCriterion_bounds: progress = cos^2(pi/2 * min(1, epoch/(0.33 N))),
    upper = 1 - progress (1 - t), lower = progress t. So at epoch 0 both bounds equal the
    target, and from a third of training on they are [0, 1] (the bounds relax)."""
    loss = SparsityLoss(target=0.4, num_epochs=90)
    assert loss.bounds(0) == pytest.approx((0.4, 0.4))
    assert loss.bounds(-3) == pytest.approx((0.4, 0.4))
    assert loss.bounds(0.33 * 90) == pytest.approx((0.0, 1.0))
    assert loss.bounds(89) == pytest.approx((0.0, 1.0))
    # half way through the relaxation: progress = cos^2(pi/4) = 1/2
    assert loss.bounds(0.165 * 90) == pytest.approx((0.2, 0.7))
    lows, ups = zip(*(loss.bounds(e) for e in range(0, 31)))
    assert all(a >= b for a, b in zip(lows, lows[1:]))
    assert all(a <= b for a, b in zip(ups, ups[1:]))


@pytest.mark.parametrize("epoch", [math.nan, math.inf, "3", None, torch.ones(2)])
def test_sparsity_loss_refuses_an_epoch_that_is_not_a_finite_number(epoch):
    """A NaN epoch made both bounds NaN, and the loss NaN, without an error."""
    loss = SparsityLoss(target=0.5, num_epochs=100)
    with pytest.raises(ValueError, match="epoch must be a finite number, got "):
        loss(_model_stats([0.9, 0.5, 0.1], flops=60.0, dense=100.0), epoch)
    assert loss.bounds(torch.tensor(16.5)) == pytest.approx(loss.bounds(16.5))  # 0-d: taken


def test_sparsity_loss_refuses_a_block_s_stats():
    """A block's BlockStats (or a list of them) raised an AttributeError on
    block_flops_ratios."""
    stats = _model_stats([0.9, 0.5, 0.1], flops=60.0, dense=100.0)
    for wrong in (stats.blocks[0], stats.blocks):
        with pytest.raises(ValueError, match="stats must be a LaudResNet's ModelStats "
                                             r"\(model.last_stats\), got (BlockStats|list)"):
            SparsityLoss(0.5, 100)(wrong, 1.0)


def _model_stats(ratios, flops, dense):
    """Stats of a training forward (FLOPs that carry a gradient)."""
    blocks = []
    for r in ratios:
        one = torch.tensor(1.0)
        blocks.append(BlockStats(one, one, one, one, torch.tensor(r * 200.0, requires_grad=True),
                                 200.0, 0.0))
    return ModelStats(blocks, torch.tensor(float(flops), requires_grad=True), float(dense))


def test_sparsity_loss_warns_on_statistics_without_a_gradient():
    """The loss of stats that carry no gradient trains nothing, in silence: an eval-mode
    forward's, or a training forward's through reentrant checkpointing (its stats lose
    their graph). A training forward's, or any under no_grad, give no warning."""
    import warnings

    from torch.utils.checkpoint import checkpoint

    model = tiny(mode="spatial")
    x = torch.randn(2, 3, 64, 64)
    loss = SparsityLoss(target=0.5, num_epochs=10)
    model.train()
    model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(model.last_stats, 1.0).backward()
        with torch.no_grad():
            model.eval()(x)
            loss(model.last_stats, 1.0)
    model(x)  # eval, grad mode on
    with pytest.warns(UserWarning, match="SparsityLoss: the statistics carry no gradient"):
        loss(model.last_stats, 1.0)
    model.train()
    checkpoint(model, x.requires_grad_(), use_reentrant=True)
    with pytest.warns(UserWarning, match=r"reentrant torch.utils.checkpoint"):
        loss(model.last_stats, 1.0)


@pytest.mark.parametrize("epoch,want", [
    (16.5, ((0.9 - 0.75) ** 2 + (0.25 - 0.1) ** 2) / 3 + 0.1**2),  # bounds [0.25, 0.75]
    (0.0, (0.4**2 + 0.4**2) / 3 + 0.1**2),  # bounds [0.5, 0.5]
    (40.0, 0.1**2),  # bounds [0, 1]: only the network term
])
def test_sparsity_loss_value_by_hand(epoch, want):
    stats = _model_stats([0.9, 0.5, 0.1], flops=60.0, dense=100.0)
    got = SparsityLoss(target=0.5, num_epochs=100)(stats, epoch)
    assert got.item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("kw,match", [
    (dict(target=0.0, num_epochs=10), r"target must be a number in \(0, 1\], got 0.0"),
    (dict(target=1.5, num_epochs=10), r"target must be a number in \(0, 1\], got 1.5"),
    (dict(target="0.5", num_epochs=10), r"target must be a number in \(0, 1\], got '0.5'"),
    (dict(target=0.5, num_epochs=0), r"num_epochs must be a positive number, got 0"),
    (dict(target=0.5, num_epochs="10"), r"num_epochs must be a positive number, got '10'"),
    (dict(target=0.5, num_epochs=True), r"num_epochs must be a positive number, got True"),
])
def test_sparsity_loss_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        SparsityLoss(**kw)


def test_sparsity_loss_takes_tensor_and_numpy_numbers():
    """A target and a length given as one-value tensors or numpy numbers (an annealing
    schedule's, as ``set_temperature`` and ``bounds`` take them) make the same loss as
    floats; before, they were refused."""
    want = SparsityLoss(target=0.4, num_epochs=90)
    for target, epochs in ((torch.tensor(0.4), torch.tensor(90)),
                           (np.float32(0.4), np.array(90)), (np.float64(0.4), np.int64(90))):
        got = SparsityLoss(target=target, num_epochs=epochs)
        assert type(got.target) is float and type(got.num_epochs) is float
        assert got.num_epochs == 90.0 and abs(got.target - 0.4) < 1e-7
        assert got.bounds(20) == pytest.approx(want.bounds(20), abs=1e-7)


# --------------------------------------------------------------------------------- KD loss


def _kd_by_hand(student, teacher, t):
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        zs = sum(math.exp(v / t) for v in s_row)
        zt = sum(math.exp(v / t) for v in t_row)
        for sv, tv in zip(s_row, t_row):
            p = math.exp(tv / t) / zt
            q = math.exp(sv / t) / zs
            total += p * (math.log(p) - math.log(q))
    return total / len(student) * t * t


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_kd_loss_by_hand(t):
    student = [[1.0, 2.0, 3.0], [0.0, 0.5, -1.0]]
    teacher = [[3.0, 2.0, 1.0], [1.0, 0.0, -1.0]]
    s = torch.tensor(student, requires_grad=True)
    te = torch.tensor(teacher, requires_grad=True)
    got = KDLoss(temperature=t)(s, te)
    assert got.item() == pytest.approx(_kd_by_hand(student, teacher, t), rel=1e-5)
    got.backward()
    assert s.grad is not None and s.grad.abs().max() > 0
    assert te.grad is None  # the teacher is detached
    assert KDLoss(t)(te.detach(), te.detach()).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_bad_temperature():
    for bad in (0, math.nan, -math.inf):
        with pytest.raises(ValueError, match=rf"temperature must be a finite number > 0, got "
                                             rf"{bad}"):
            KDLoss(temperature=bad)
