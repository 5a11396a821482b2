"""Session 66 audit of the autotune round trip (compile tune="quick" -> cache ->
compile tune="cached"). No defect was found in it; these tests pin what was checked, on
timings made up per variant and rate (no wall-clock timing decides a winner)."""

from __future__ import annotations

import pytest
import torch

import laudtriton
from laudtriton import planning
from laudtriton.schedule import run_rate
from laudtriton.testing import make_block
from laudtriton.tune.measure import config_key


def fake_time_variants(fb, spec, x, masks, cands, verify=True, **kwargs):
    """Made-up timings: dense 1 ms; each other variant's configs cost more at a higher
    rate, the last config the cheapest, so that the winner (and its config) changes
    with the rate."""
    rate = run_rate(spec, masks)
    out = {}
    for i, v in enumerate(cands):
        cfgs = v.configs(spec) or [{}]
        base = 1e-3 if v.name == "dense" else (0.2 + rate + 0.01 * i) * 1e-3
        out[v.name] = {config_key(c): base * (1 + 0.01 * (len(cfgs) - j) * (v.name != "dense"))
                       for j, c in enumerate(cfgs)}
    return out


@pytest.mark.parametrize("mode,batch", [("spatial", 1), ("channel", 1), ("layer", 4),
                                        ("both", 2)])
def test_cached_compile_plans_what_the_quick_compile_timed(tmp_path, monkeypatch, mode,
                                                          batch) -> None:
    """compile(tune="cached") after compile(tune="quick") into an empty cache chooses
    the same variant and config at every rate the quick compile recorded, each marked
    "cached"; an input of another batch finds none of those entries."""
    monkeypatch.setattr(planning, "time_variants", fake_time_variants)
    monkeypatch.delenv("LAUDTRITON_CACHE", raising=False)
    block = make_block(32, 8, mode=mode, granularity=2, channel_granularity=2, seed=1)
    x = torch.randn(batch, 32, 8, 8)
    kw = dict(backend="cpu", cache_dir=tmp_path, progress=False)
    quick = laudtriton.compile(block, x, tune="quick", **kw).blocks[0].table
    cached = laudtriton.compile(block, x, tune="cached", **kw).blocks[0].table
    timed = {r: (c.variant, c.config) for r, c in quick.entries.items()
             if c.source == "measured"}
    assert timed and {r: (c.variant, c.config) for r, c in cached.entries.items()
                      if r in timed} == timed
    assert {cached.entries[r].source for r in timed} == {"cached"}
    other = laudtriton.compile(block, torch.randn(batch + 1, 32, 8, 8), tune="cached",
                               **kw).blocks[0].table
    assert "cached" not in {c.source for c in other.entries.values()}


@pytest.mark.parametrize("mode", ["spatial", "both"])
def test_sweep_after_a_quick_compile_finds_its_items_cached(tmp_path, monkeypatch,
                                                            mode) -> None:
    """A sweep after compile(tune="quick") finds the items compile timed in the cache
    and leaves them there. In mode both compile's entries carried no "channel_rate", so
    the sweep took them for another channel rate's item: it timed them again at every
    run, for its CSV only, and never recorded or annotated them."""
    from laudtriton.nn import laud_resnet50
    from laudtriton.tune import sweep as sweep_mod
    from laudtriton.tune.cache import TuneCache

    monkeypatch.setattr(planning, "time_variants", fake_time_variants)
    monkeypatch.setattr(sweep_mod, "time_variants",
                        lambda fb, spec, x, m, cands, **kw: fake_time_variants(
                            fb, spec, x, m, cands))
    monkeypatch.delenv("LAUDTRITON_CACHE", raising=False)
    torch.manual_seed(0)
    model = laud_resnet50(mode=mode, input_size=32, channel_granularity=4).eval()
    laudtriton.compile(model, torch.randn(1, 3, 32, 32), tune="quick", cache_dir=tmp_path,
                       progress=False)
    result = sweep_mod.sweep(model, rates="0.5", blocks="0", cache=TuneCache(tmp_path),
                             progress=False)
    assert (result.timed, result.cached) == (0, 1)
