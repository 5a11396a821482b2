"""Every config a sweep or a compile times is checked against the dense block first: a
fast config with a wrong output scores inf instead of winning the plan."""

from __future__ import annotations

import functools
import logging
import math

import pytest
import torch

from laudtriton.nn import LaudResNet
from laudtriton.ops import BlockSpec, fold_block, get_variant, registry
from laudtriton.ops.registry import Variant
from laudtriton.ops.synthetic import synthetic_masks
from laudtriton.testing import make_block
from laudtriton.tune import cache as cache_mod
from laudtriton.tune.cache import TuneCache
from laudtriton.tune.measure import time_variants
from laudtriton.tune.sweep import sweep


@pytest.fixture(autouse=True)
def frozen_sources(monkeypatch):
    monkeypatch.setattr(cache_mod, "source_hash", functools.cache(cache_mod.source_hash))


def _wrong(inplace: bool, scale: float = 1.001) -> Variant:
    """The dense variant, its output scaled by ``scale`` (1 + 1e-3: ten times the float32
    bound); offered in place when ``inplace``."""
    dense = get_variant("dense")

    def run(fb, x, masks, cfg):
        return dense.run(fb, x, masks, cfg) * scale

    def run_inplace(fb, x, masks, cfg):
        return dense.run_inplace(fb, x, masks, cfg).mul_(scale)

    return Variant(name="wrong", modes=dense.modes, backends=("cpu",), run=run,
                   cost=dense.cost, run_inplace=run_inplace if inplace else None)


@pytest.mark.parametrize("inplace", [False, True])
def test_time_variants_verify_scores_a_wrong_output_inf(inplace, caplog):
    block = make_block(16, 4, 1, "spatial", 2)
    spec = BlockSpec.from_block(block, (1, 16, 9, 9))
    # negative values: an in-place variant runs on relu(x), the others on x
    x = torch.randn(1, 16, 9, 9).contiguous(memory_format=torch.channels_last)
    masks = synthetic_masks(spec, 0.5)
    fb = fold_block(block)
    cands = [get_variant("dense"), get_variant("gather"), _wrong(inplace)]
    errors = {}
    with caplog.at_level(logging.WARNING, "laudtriton"):
        t = time_variants(fb, spec, x, masks, cands, warmup=0, reps=1, verify=True,
                          errors=errors)
    assert math.isinf(t["wrong"]["{}"]) and list(errors) == [("wrong", "{}")]
    assert isinstance(errors[("wrong", "{}")], AssertionError)
    assert "wrong" in caplog.text and "on its first call" in caplog.text
    assert math.isfinite(t["dense"]["{}"]) and math.isfinite(t["gather"]["{}"])
    # the same wrong variant passes unchecked, and within the bound it passes checked
    assert math.isfinite(time_variants(fb, spec, x, masks, cands[2:], warmup=0,
                                       reps=1)["wrong"]["{}"])
    assert math.isfinite(time_variants(fb, spec, x, masks, [_wrong(inplace, 1 + 1e-6)],
                                       warmup=0, reps=1, verify=True)["wrong"]["{}"])


def test_time_variants_verify_refuses_a_non_bool():
    block = make_block(16, 4, 1, "spatial", 2)
    spec = BlockSpec.from_block(block, (1, 16, 8, 8))
    x = torch.rand(1, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="verify"):
        time_variants(fold_block(block), spec, x, synthetic_masks(spec, 0.5),
                      [get_variant("dense")], warmup=0, reps=1, verify="yes")


def test_sweep_never_records_a_wrong_config_as_fast(tmp_path, monkeypatch):
    """A wrong variant that is the fastest: before, the sweep recorded its time and a
    compile from that cache would have run it."""
    model = LaudResNet((1, 1, 1, 1), width_mult=0.25, input_size=64, granularity="2-2-1-1")
    monkeypatch.setitem(registry._REGISTRY, "wrong", _wrong(True, 1.5))
    cache = TuneCache(tmp_path)
    sweep(model, rates=[0.5], cache=cache, blocks="layer1.0", progress=False, warmup=0,
          reps=1)
    timed = [e for e in cache.entries() if e.variant == "wrong"]
    assert timed and all(math.isinf(e.seconds) for e in timed)
    assert any(e.variant == "dense" and math.isfinite(e.seconds) for e in cache.entries())


def test_compile_never_plans_a_fast_wrong_variant(monkeypatch):
    """tune "off" times the variants on the example input: a variant that returns zeros
    at once, the fastest by far, was planned and the compiled model returned its zeros."""
    import laudtriton
    from laudtriton.testing import assert_close

    dense = get_variant("dense")

    def zeros(fb, x, masks, cfg):
        b, _, h, w = x.shape
        s = fb.stride
        return torch.zeros(b, fb.out_channels, -(-h // s), -(-w // s),
                           dtype=x.dtype).contiguous(memory_format=torch.channels_last)

    monkeypatch.setitem(registry._REGISTRY, "zeros", Variant(
        name="zeros", modes=dense.modes, backends=("cpu",), run=zeros, cost=dense.cost))
    torch.manual_seed(0)
    model = LaudResNet((1, 1, 1, 1), width_mult=0.25, input_size=64,
                       granularity="2-2-1-1").eval()
    x = torch.rand(1, 3, 64, 64)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    chosen = {c.variant for row in cm.plan.rows for c in row[2].entries.values()}
    assert chosen and "zeros" not in chosen
    with torch.no_grad():
        assert_close(cm(x), model(x))
