"""``laudtriton.compile`` on modules a user builds around LAUD networks and blocks
(session 62 audit): one network held under several names is compiled once and shared
by them, as the uncompiled module shares it; and, from the review of 9d027b3, the places
that must stay as the uncompiled module uses them (a block's place the forward never
calls, a network the forward never calls, a place read without being called)."""

import copy
import re
import warnings

import pytest
import torch
from torch import nn

import laudtriton
from laudtriton.compiled import CompiledModel
from laudtriton.compiled_block import CompiledBlock
from laudtriton.nn import LaudResNet, calibrate_block, calibrate_rates
from laudtriton.testing import assert_close, make_block, randomize_bn


def tiny_net(mode="spatial", seed=0):
    with torch.random.fork_rng():  # the global random state stays as it was
        torch.manual_seed(seed)
        net = LaudResNet((1, 1, 1, 1), mode=mode, width_mult=0.25, input_size=None,
                         num_classes=7)
    net = randomize_bn(net).eval()
    calibrate_rates(net, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)),
                    0.5)
    return net


def tiny_block(mode="spatial"):
    blk = make_block(16, 4, mode=mode, granularity=2, channel_granularity=2, seed=1)
    calibrate_block(blk, torch.randn(4, 16, 16, 16, generator=torch.Generator().manual_seed(7)),
                    0.5)
    return blk.eval()


def quiet_compile(model, x):
    """compile on CPU with tune="off"; (compiled module, warning texts)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = laudtriton.compile(model, x, backend="cpu", tune="off", progress=False)
    return out, [str(w.message) for w in seen]


class TwoNames(nn.Module):
    """One module held as ``a`` and ``b`` (or inside two parents), called through ``b``."""

    def __init__(self, part, two_parents=False):
        super().__init__()
        if two_parents:
            self.a, self.b = nn.Sequential(part), nn.Sequential(part)
        else:
            self.a, self.b = part, part

    def forward(self, x):
        return self.b(x)


def shared_parts(model, kind):
    return {n: m for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, kind)}


@pytest.mark.parametrize("two_parents", [False, True])
def test_a_network_under_two_names_is_compiled_once_and_shared(planned, two_parents):
    """It was compiled twice: once as a CompiledModel at the first name, once block by
    block at the second (a LaudResNet with CompiledBlocks), with a warning that the
    forward "did not call" the first, which the uncompiled module calls (one object)."""
    net = tiny_net()
    model = TwoNames(net, two_parents).eval()
    x = torch.randn(1, 3, 64, 64)
    cm, texts = quiet_compile(model, x)
    assert not texts, texts
    nets = shared_parts(cm, CompiledModel)
    names = ["a.0", "b.0"] if two_parents else ["a", "b"]
    assert sorted(nets) == names and nets[names[0]] is nets[names[1]]
    assert not shared_parts(cm, LaudResNet)
    assert len(planned) == len(set(planned)) == 4  # four distinct blocks, tuned once each
    with torch.no_grad():
        ref = model(x)
        assert_close(cm(x), ref, 1e-4)
    assert [r.name for r in nets[names[1]].last_stats] == [
        "layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert model.a is not cm.a  # the user's module is untouched


# --- review of 9d027b3: places that must stay as the uncompiled module uses them ----

class HandleCalled(nn.Module):
    """``self.last = self.net.layer4[0]``; the forward calls the handle, not the net."""

    def __init__(self):
        super().__init__()
        self.net = tiny_net()
        self.last = self.net.layer4[0]

    def forward(self, x):
        return self.last(x)


class SharedWithUncalledNet(nn.Module):
    """n2's layer4[0] is n1's; the forward calls n1 only."""

    def __init__(self):
        super().__init__()
        self.n1 = tiny_net()
        self.n2 = copy.deepcopy(self.n1)
        self.n2.layer4[0] = self.n1.layer4[0]

    def forward(self, x):
        return self.n1(x)


@pytest.mark.parametrize("cls, shape", [(HandleCalled, (2, 256, 4, 4)),
                                        (SharedWithUncalledNet, (1, 3, 64, 64))])
def test_an_uncalled_network_stays_whole_uncompiled(cls, shape):
    """compile warns that the example "never calls" the network, "left uncompiled", and
    README says such a network stays uncompiled; but the place of its block that the
    forward reaches elsewhere now holds a CompiledBlock inside the LaudResNet, whose
    forward then keeps no ``last_stats`` (None; the uncompiled one gives ModelStats)."""
    model = cls().eval()
    x = torch.randn(*shape)
    cm, texts = quiet_compile(model, x)
    net = "net" if cls is HandleCalled else "n2"
    assert any(f"never calls {net};" in t and "left uncompiled" in t for t in texts), texts
    inside = [n for n, m in getattr(cm, net).named_modules() if isinstance(m, CompiledBlock)]
    assert not inside, f"{net} is said left uncompiled but holds CompiledBlocks at {inside}"
    y = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(cm(x), model(x), 1e-4)
        assert_close(getattr(cm, net)(y), getattr(model, net)(y), 1e-4)
    assert getattr(model, net).last_stats is not None
    assert getattr(cm, net).last_stats is not None


class BlockUsedOtherwise(TwoNames):
    """``b`` is ``a``; the forward calls ``a`` and reads ``b``'s masks (not calling it)."""

    def __init__(self):
        super().__init__(tiny_block())

    def forward(self, x):
        masks, _ = self.b.compute_masks(x)
        return self.a(x) + 0 * masks.grid.float().sum()


class HandleUsedOtherwise(nn.Module):
    """``self.last = self.net.layer4[0]``; the forward calls the net and reads a weight
    of the handle."""

    def __init__(self):
        super().__init__()
        self.net = tiny_net()
        self.last = self.net.layer4[0]

    def forward(self, x):
        return self.net(x) + 0 * self.last.conv1.weight.sum()


@pytest.mark.parametrize("cls, shape", [(BlockUsedOtherwise, (2, 16, 16, 16)),
                                        (HandleUsedOtherwise, (1, 3, 64, 64))])
def test_an_uncalled_place_the_forward_uses_otherwise_still_compiles(cls, shape):
    """The place is never called, so it is handed the CompiledBlock of the called one;
    the forward's use of it as a LaudBottleneck (``compute_masks``, ``conv1``) then fails
    and compile raises "the compiled module's forward fails on the example input". Before
    9d027b3 the place stayed a LaudBottleneck and compile succeeded."""
    model = cls().eval()
    x = torch.randn(*shape)
    cm, _ = quiet_compile(model, x)
    with torch.no_grad():
        assert_close(cm(x), model(x), 1e-4)


def test_calling_a_handle_leaves_the_networks_last_stats():
    """``cm.last`` is the very CompiledBlock inside ``cm.net``: calling the handle directly
    rewrites the network's ``last_stats`` and ``last_masks`` for block layer4.0 (another
    batch and map), so they no longer describe the network's last forward, and replaying
    them (``masks=``) is refused. The uncompiled network's stats stay as they were."""
    class Handle(HandleCalled):  # the same handle; the forward calls the net
        def forward(self, x):
            return self.net(x)

    model = Handle().eval()
    x = torch.randn(1, 3, 64, 64)
    cm, _ = quiet_compile(model, x)
    y = torch.relu(torch.randn(4, 256, 8, 8, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        cm(x)
        stats = cm.net.last_stats
        masks = [b.last_masks for b in cm.net.blocks]
        cm.last(y)
        assert cm.net.last_stats == stats
        assert cm.net.blocks[3].last_masks.grid.shape == masks[3].grid.shape
        cm.net(x, masks=[b.last_masks for b in cm.net.blocks])


def test_a_refusal_names_the_place_the_forward_read():
    """One network at ``a`` and ``b``; the forward calls it through ``a`` and one of its
    blocks through ``b``. Both places now hold the CompiledModel, so ``b.layer4`` fails
    (compiled before 9d027b3), and the refusal says the CompiledModel is "in place of a"
    alone: the failing read is through ``b``, which it does not name."""
    class TwoWays(TwoNames):
        def __init__(self):
            super().__init__(tiny_net())

        def forward(self, x):
            feat = torch.relu(torch.randn(x.shape[0], 256, 4, 4,
                                          generator=torch.Generator().manual_seed(1)))
            return self.a(x).sum(1) + self.b.layer4[0](feat).flatten(1).sum(1)

    with pytest.raises(ValueError, match="in place of a") as caught:
        quiet_compile(TwoWays().eval(), torch.randn(1, 3, 64, 64))
    assert re.search(r"in place of [^(]*\bb\b", str(caught.value)), str(caught.value)


# --- review of d4c10ea: the "never calls" warning names every place of the network -----

class NeverCalled(nn.Module):
    """One LaudResNet held twice (``a`` and ``b``, or ``p.net`` and ``q.net``); the forward
    calls neither."""

    def __init__(self, net, two_parents):
        super().__init__()
        if two_parents:
            self.p, self.q = nn.Module(), nn.Module()
            self.p.net = self.q.net = net
        else:
            self.a = self.b = net
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("two_parents, names", [(True, "p.net, q.net"), (False, "a, b")])
def test_a_never_called_network_is_named_at_every_place(two_parents, names):
    """Both places stay uncompiled; the warning named the first alone (before 9d027b3 it
    named both parents' places, and the "did not call" warning still did)."""
    model = NeverCalled(tiny_net("channel"), two_parents).eval()
    _, texts = quiet_compile(model, torch.randn(1, 3, 64, 64))
    never = [t for t in texts if "never calls" in t]
    assert len(never) == 1 and f"never calls {names};" in never[0], never
