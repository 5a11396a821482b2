"""``laudtriton.compile`` on modules a user builds around LAUD networks and blocks
(session 62 audit): one network held under several names is compiled once and shared
by them, as the uncompiled module shares it."""

import sys
import warnings

import pytest
import torch
from torch import nn

import laudtriton
from laudtriton.compiled import CompiledModel
from laudtriton.nn import LaudResNet, calibrate_block, calibrate_rates
from laudtriton.testing import assert_close, make_block, randomize_bn


def tiny_net(mode="spatial", seed=0):
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


@pytest.fixture
def planned(monkeypatch):
    """The specs ``plan_block`` is called for (one per distinct block tuned)."""
    compile_module = sys.modules["laudtriton.compile"]  # (the package's name is the function)
    calls = []
    real = compile_module.plan_block
    monkeypatch.setattr(compile_module, "plan_block",
                        lambda spec, *a, **k: calls.append(spec) or real(spec, *a, **k))
    return calls


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
