"""laudtriton.pooling: the gates' global pooling equals the mean in either form; a compiled
block pools in the form timed faster, which its plan names; both forms give the
reference's masks and logits."""

import pytest
import torch

import laudtriton
from laudtriton import compiled_block, pooling
from laudtriton.nn import LaudResNet
from laudtriton.pooling import FORMS, MIN_ROUNDS, ROUNDS, fastest_form, mean_rows, time_forms
from laudtriton.testing import TOLERANCE, assert_close, assert_same_masks


@pytest.fixture
def fake_times(monkeypatch):
    """The timings ``fastest_form`` reads, set by the test (its cache emptied before and
    after, so no other test sees them)."""
    times: dict[str, list[float]] = {}
    calls = []

    def fake(channels, hw):
        calls.append((channels, hw))
        return times
    monkeypatch.setattr(pooling, "time_forms", fake)
    pooling._fastest_form.cache_clear()
    yield times, calls
    pooling._fastest_form.cache_clear()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", [(1, 7, 5, 3), (1, 64, 1, 1), (1, 33, 14, 14), (3, 16, 6, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_mean_rows_is_the_global_pool(shape, dtype, form):
    """The maskers' pooling (either form for one float32 sample on CPU, ``global_pool``
    elsewhere) averages each sample's map, on channels_last or contiguous x alike, and
    returns a tensor of its own."""
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    want = x.double().mean((2, 3))
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):
        got = mean_rows(xx, form)
        assert got.shape == shape[:2] and got.dtype == dtype
        # the bound of the type (a float64 mean taken in float32 passed 1e-6)
        assert_close(got.double(), want, TOLERANCE[dtype])
        got.fill_(7)  # not a view of x
        assert not bool((xx == 7).any())


def test_mean_rows_refuses_an_unknown_form():
    with pytest.raises(ValueError, match=r"mean_rows: form 'sum' is not one of \('gemm', 'mean'\)"):
        mean_rows(torch.ones(1, 4, 3, 3), "sum")


def test_fastest_form_takes_the_lower_median_and_gemm_on_a_tie(fake_times, monkeypatch):
    times, calls = fake_times
    times.update(gemm=[3.0, 1.0, 2.0], mean=[1.5, 1.5, 9.0])  # medians 2 and 1.5
    assert fastest_form(8, (5, 5)) == "mean"
    times.update(gemm=[1.0, 2.0, 3.0], mean=[2.0, 2.0, 2.0])  # a tie: the first form
    assert fastest_form(8, (5, 5)) == "mean"  # the shape's choice is kept, not timed again
    assert calls == [(8, (5, 5))]
    assert fastest_form(8, [5, 6]) == "gemm"  # another shape: timed
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    times.update(gemm=[5.0], mean=[1.0])
    assert fastest_form(8, (5, 5)) == "mean"  # another thread count: timed again
    assert calls == [(8, (5, 5)), (8, (5, 6)), (8, (5, 5))]


def test_time_forms_times_each_form_every_round(monkeypatch):
    """Every round times each form, ``ROUNDS`` rounds, or ``MIN_ROUNDS`` past the time
    budget; on a float32 CPU map whatever torch's default dtype, and without touching
    torch's random state."""
    seen = []

    def spy(x, form="gemm"):
        seen.append((x.dtype, x.device.type, form))
        return mean_rows(x, form)
    monkeypatch.setattr(pooling, "mean_rows", spy)
    state = torch.get_rng_state()
    torch.set_default_dtype(torch.float64)
    try:
        times = time_forms(16, (6, 5))
    finally:
        torch.set_default_dtype(torch.float32)
    assert torch.equal(torch.get_rng_state(), state)
    assert set(times) == set(FORMS)
    assert all(len(t) == ROUNDS and all(s > 0 for s in t) for t in times.values())
    assert set(seen) == {(torch.float32, "cpu", f) for f in FORMS}
    assert len(seen) == 2 * (ROUNDS + 2)
    monkeypatch.setattr(pooling, "BUDGET_S", 0.0)
    assert all(len(t) == MIN_ROUNDS for t in time_forms(16, (6, 5)).values())


def four_modes_model():
    torch.manual_seed(0)
    return LaudResNet((1, 1, 1, 1), mode="spatial-both-channel-layer", granularity="2-2-1-1",
                      channel_granularity=2, width_mult=0.25, input_size=None,
                      num_classes=7).eval()


def test_compiled_blocks_pool_in_the_form_timed_faster(fake_times):
    """Blocks whose gates pool (a channel MLP masker: channel and both; a layer gate) take
    ``fastest_form`` of their input's shape and the plan names it; a spatial block's
    masker pools to its grid and has none. Either form gives the reference's masks and
    logits, and a block pickled before it kept a form pools with the GEMM."""
    times, calls = fake_times
    times.update(gemm=[2.0], mean=[1.0])
    model = four_modes_model()
    x = torch.randn(1, 3, 32, 32)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    lines = {line.split()[0]: line for line in str(cm.plan).splitlines()[2:]}
    pooled = {"layer2.0", "layer3.0", "layer4.0"}
    for blk in cm.blocks:
        assert blk.times_pooling == (blk.name in pooled)
        assert blk.form == ("mean" if blk.name in pooled else "gemm")
        assert lines[blk.name].endswith("[pooling: mean]") == (blk.name in pooled)
    assert sorted(calls) == sorted({(b.spec.in_channels, b.spec.in_hw) for b in cm.blocks
                                    if b.name in pooled})
    with torch.no_grad():
        ref = model(x)
        for form in FORMS:
            for blk in cm.blocks:
                blk.pooling = form
            assert_close(cm(x), ref)
            assert_same_masks(cm, model)
    del cm.blocks[2].pooling  # as a block pickled before ``pooling``
    assert cm.blocks[2].form == "gemm"


@pytest.mark.parametrize("mode,batch", [("channel", 1), ("layer", 1), ("layer", 3)])
def test_blocks_pool_in_their_form(mode, batch, monkeypatch):
    """The gates' pooling (the block's own, and the one a layer block keeps over the
    window it ran) is called with the blocks' form, each form in turn."""
    torch.manual_seed(0)
    model = LaudResNet((1, 2, 1, 1), mode=mode, channel_granularity=2, width_mult=0.25,
                       input_size=None, num_classes=7).eval()
    x = torch.randn(batch, 3, 32, 32)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    calls = []

    def spy(t, form="gemm"):
        calls.append(form)
        return mean_rows(t, form)
    monkeypatch.setattr(compiled_block, "mean_rows", spy)
    with torch.no_grad():
        ref = model(x)
        for form in FORMS:
            for blk in cm.blocks:
                blk.pooling = form
            calls.clear()
            assert_close(cm(x), ref)
            assert calls and set(calls) == {form}


def test_compile_leaves_the_rng_alone_while_timing_the_pooling():
    pooling._fastest_form.cache_clear()
    model = four_modes_model()
    x = torch.randn(1, 3, 32, 32)
    state = torch.get_rng_state()
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    assert torch.equal(torch.get_rng_state(), state)
    assert pooling._fastest_form.cache_info().misses >= 1
    assert any(b.times_pooling for b in cm.blocks)


def test_other_dtypes_time_no_pooling(fake_times):
    """A float64 model's gates pool through ``global_pool``: nothing is timed, and its plan
    names no form."""
    times, calls = fake_times
    model = four_modes_model()
    cm = laudtriton.compile(model, torch.randn(1, 3, 32, 32), backend="cpu", tune="off",
                            dtype=torch.float64)
    assert calls == [] and "[pooling" not in str(cm.plan)
    assert not any(b.times_pooling for b in cm.blocks)
