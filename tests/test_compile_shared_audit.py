"""``laudtriton.compile`` on modules that hold or call one LAUD block object more than
once: each place is compiled for the input it is called with, the places share one copy
of the folded weights, and a block that one place calls at two map sizes is warned
about (planned for the first)."""

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import laudtriton
from laudtriton.compiled_block import CompiledBlock
from laudtriton.nn import calibrate_block
from laudtriton.testing import assert_close, make_block

MODES = ["spatial", "channel", "layer"]


def compile_cpu(model, x, **kw):
    return laudtriton.compile(model, x, backend="cpu", tune="off", progress=False, **kw)


def shared_block(mode, seed=1):
    """A block whose maskers keep about half of what they see (not every cell)."""
    blk = make_block(16, 4, mode=mode, granularity=2, channel_granularity=2, seed=seed)
    calibrate_block(blk, torch.randn(4, 16, 16, 16, generator=torch.Generator().manual_seed(7)),
                    0.5)
    return blk.eval()


class TwoParents(nn.Module):
    """One block held by two parent modules, called at 16x16 then at 8x8."""

    def __init__(self, blk):
        super().__init__()
        self.a, self.pool, self.b = nn.Sequential(blk), nn.MaxPool2d(2), nn.Sequential(blk)

    def forward(self, x):
        return self.b(self.pool(self.a(x)))


class CalledTwice(nn.Module):
    """One block in one place, called twice (at two sizes when pool)."""

    def __init__(self, blk, pool=True):
        super().__init__()
        self.blk, self.pool = blk, nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x):
        return self.blk(self.pool(self.blk(x)))


def compiled_places(model):
    return {n: m for n, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, CompiledBlock)}


def quiet_compile(model, x, **kw):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = compile_cpu(model, x, **kw)
    return out, [str(w.message) for w in seen]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["two_parents", "one_parent"])
def test_each_place_of_a_shared_block_is_planned_for_its_own_input(mode, layout):
    """The second place's spec was the first's (16x16 for an 8x8 call): the capture hooks
    of both places sat on one object and both took its first call. nn.Sequential(blk,
    pool, blk) compiled the first place only and left the second dense with masks."""
    torch.manual_seed(0)
    blk = shared_block(mode)
    if layout == "two_parents":
        model, first, second = TwoParents(blk).eval(), "a.0", "b.0"
    else:
        model, first, second = nn.Sequential(blk, nn.MaxPool2d(2), blk).eval(), "0", "2"
    x = torch.randn(2, 16, 16, 16)
    cm, texts = quiet_compile(model, x)
    places = compiled_places(cm)
    assert sorted(places) == sorted([first, second]), texts
    assert places[first].spec.in_hw == (16, 16)
    assert places[second].spec.in_hw == (8, 8)
    assert places[first].fb is places[second].fb  # one copy of the folded weights
    assert not texts, texts
    with torch.no_grad():
        assert_close(cm(x), model(x))
        # each place's masks are those of its own input
        want, _ = blk.compute_masks(nn.MaxPool2d(2)(blk(x)))
    got = places[second].last_masks
    for field in ("grid", "channel"):
        if getattr(want, field) is not None:
            assert torch.equal(getattr(got, field).bool(), getattr(want, field).bool()), field
    assert places[second].last_run.name == second


@pytest.mark.parametrize("mode", MODES)
def test_one_place_called_at_two_sizes_is_warned_about_and_runs_right(mode):
    """One object called twice from one place cannot be told apart by place: it is
    planned for its first call; that used to pass silently."""
    torch.manual_seed(0)
    blk = shared_block(mode)
    model = CalledTwice(blk).eval()
    x = torch.randn(2, 16, 16, 16)
    with pytest.warns(UserWarning, match=r"laudtriton.compile: blk is called at map sizes "
                                         r"16x16 and 8x8 .*planned for the first"):
        cm = compile_cpu(model, x)
    assert [p.spec.in_hw for p in compiled_places(cm).values()] == [(16, 16)]
    with torch.no_grad():
        assert_close(cm(x), model(x))


@pytest.mark.parametrize("mode", MODES)
def test_a_block_called_twice_at_one_size_is_compiled_once_without_a_warning(mode):
    torch.manual_seed(0)
    blk = shared_block(mode)
    model = CalledTwice(blk, pool=False).eval()
    x = torch.randn(2, 16, 16, 16)
    cm, texts = quiet_compile(model, x)
    assert not texts, texts
    places = compiled_places(cm)
    assert list(places) == ["blk"] and places["blk"].spec.in_hw == (16, 16)
    with torch.no_grad():
        assert_close(cm(x), model(x))


def test_two_places_at_one_size_are_tuned_once_and_share_the_fold(planned):
    calls = planned
    torch.manual_seed(0)
    blk = shared_block("spatial")
    model = nn.Sequential(blk, blk).eval()
    x = torch.randn(2, 16, 16, 16)
    cm, texts = quiet_compile(model, x)
    assert not texts, texts
    places = compiled_places(cm)
    assert sorted(places) == ["0", "1"] and len(calls) == 1
    assert places["0"].fb is places["1"].fb and places["0"].table is places["1"].table
    with torch.no_grad():
        assert_close(cm(x), model(x))


def test_shared_places_survive_pickling_deepcopy_and_state_dict():
    torch.manual_seed(0)
    blk = shared_block("spatial")
    model = TwoParents(blk).eval()
    x = torch.randn(2, 16, 16, 16)
    cm, _ = quiet_compile(model, x)
    with torch.no_grad():
        want = model(x)
    buf = io.BytesIO()
    torch.save(cm, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    for other in (back, copy.deepcopy(cm)):
        places = compiled_places(other)
        assert places["a.0"].fb is places["b.0"].fb
        assert places["b.0"].spec.in_hw == (8, 8)
        with torch.no_grad():
            assert_close(other(x), want)
    assert cm.state_dict().keys() == back.state_dict().keys()


def test_a_place_the_example_never_calls_is_left_as_it_is_and_still_runs():
    """Two places, the forward calls the second: the first is left uncompiled (warned
    about, as any block the example does not reach) and still computes the block."""
    torch.manual_seed(0)
    blk = shared_block("spatial")

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = blk, blk

        def forward(self, x):
            return self.b(x)

    model = Two().eval()
    x = torch.randn(2, 16, 8, 8)
    cm, texts = quiet_compile(model, x)
    assert any("never calls a; left uncompiled" in t for t in texts), texts
    assert not any("did not call" in t for t in texts), texts
    assert list(compiled_places(cm)) == ["b"]
    with torch.no_grad():
        assert_close(cm(x), blk(x))
        assert_close(cm.a(x), blk(x))
    assert cm.a.conv1 is not blk.conv1  # compile's copy: the user's model is untouched
    assert model.a is model.b is blk


def test_a_block_in_a_container_held_in_two_places_is_one_place():
    """One nn.Sequential holding the block, held by two parents: its one attribute was
    captured twice (two hooks on one object), compiled twice and warned about twice."""
    torch.manual_seed(0)
    blk = shared_block("layer")
    seq = nn.Sequential(blk)

    class SharedSeq(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.pool, self.b = seq, nn.MaxPool2d(2), nn.Sequential(seq)

        def forward(self, x):
            return self.b(self.pool(self.a(x)))

    model = SharedSeq().eval()
    x = torch.randn(2, 16, 16, 16)
    cm, texts = quiet_compile(model, x)
    assert len(texts) == 1 and "a.0 is called at map sizes 16x16 and 8x8" in texts[0], texts
    places = compiled_places(cm)
    assert sorted(places) == ["a.0", "b.0.0"] and places["a.0"] is places["b.0.0"]
    assert places["a.0"].name == "a.0"
    with torch.no_grad():
        assert_close(cm(x), model(x))


def test_compile_and_capture_warnings_point_at_the_callers_line():
    """Both rules of ``capture.stacklevel_outside``: compile's own warning (no LAUD block)
    and capture's (a block called at two sizes) name this file, the line that called
    compile, not a frame inside the package."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        compile_cpu(nn.Sequential(nn.Conv2d(3, 4, 1)).eval(), torch.randn(1, 3, 8, 8))
        compile_cpu(CalledTwice(shared_block("spatial")).eval(), torch.randn(2, 16, 16, 16))
    wanted = [w for w in seen if "no LAUD block" in str(w.message)
              or "called at map sizes" in str(w.message)]
    assert len(wanted) == 2, [str(w.message) for w in seen]
    assert all(w.filename == __file__ for w in wanted), [(w.filename, w.lineno) for w in wanted]
