"""Review of 40f2473 (repeated names in a cache file, ``cache ls --all``'s reasons) and
36969e0 (gpucheck part 3 records a config that failed at an earlier rate as inf at the
later ones): what compile, the plots and the predictor's fit do with those inf entries,
a failure that must not replace an earlier run's timing, nested repeated names, and a
stale row without versions."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import torch

from laudtriton import gpureport, ops
from laudtriton.gpucheck import blocks, record
from laudtriton.ops.spec import BlockSpec
from laudtriton.ops.synthetic import synthetic_masks
from laudtriton.schedule import rate_key, run_rate
from laudtriton.testing import make_block
from laudtriton.tune.cache import TuneCache
from laudtriton.tune.cache_file import load_cache_file

BLOCK = make_block(16, 4, 1, "spatial", 2)
SPEC = BlockSpec.from_block(BLOCK, (1, 16, 8, 8), torch.float16)


def _realised() -> list[float]:
    """The rates part 3's masks realise on SPEC, one per asked rate (``_time_block``)."""
    return [rate_key(run_rate(SPEC, synthetic_masks(SPEC, r, seed=1)))
            for r in gpureport.RATES]


def _part3(tmp_path, monkeypatch, two_gather_configs: bool = False) -> TuneCache:
    """Part 3 on CPU for SPEC, "patch" failing on its first call (the first rate) and,
    with ``two_gather_configs``, "gather" given a second config that fails there too;
    returns the cache it recorded into (tmp_path/cache)."""
    real = ops.variants_for
    monkeypatch.setattr(blocks, "_static_dense_time", lambda fb, x, dev: 1e-3)
    calls = []

    def variants(s, backend):
        out = []
        for v in real(s, backend):
            if v.name == "patch":
                def run(fb, x, m, c, v=v):
                    calls.append(1)
                    if len(calls) == 1:
                        raise RuntimeError("fails at the first rate")
                    return v.run(fb, x, m, c)
                v = dataclasses.replace(v, run=run, run_inplace=None)
            elif v.name == "gather" and two_gather_configs:
                def run(fb, x, m, c, v=v):
                    if c:
                        raise RuntimeError("this config fails")
                    return v.run(fb, x, m, c)
                v = dataclasses.replace(v, run=run, run_inplace=None,
                                        configs=lambda s: [{}, {"bad": 1}])
            out.append(v)
        return out
    monkeypatch.setattr(ops, "variants_for", variants)
    cache = TuneCache(tmp_path / "cache")
    blocks._time_block(record.Run(tmp_path, 600, "cpu"), "spatial", BLOCK, SPEC,
                       {"m": ["layer1.0"]}, 2, cache)
    return TuneCache(tmp_path / "cache")


def test_a_variant_failed_at_the_first_rate_is_planned_never_picked_nor_drawn(
        tmp_path, monkeypatch, caplog):
    """compile uses every rate part 3 cached (the failed variant inf there), never picks
    that variant and warns nothing; the plots draw no point of it, the fit no sample."""
    from laudtriton.planning import plan_block
    from laudtriton.plot_rows import group_rows, rows_from_cache, spec_curves
    from laudtriton.predict.fit import samples

    cands = ops.variants_for(SPEC, "cpu")  # the registered ones (before the patch)
    cache = _part3(tmp_path, monkeypatch)
    rates = sorted(set(_realised()))
    for r in rates:
        assert cache.lookup(SPEC, r)["patch"] == {"{}": math.inf}, r
    x = torch.randn(1, 16, 8, 8, dtype=torch.float16).contiguous(
        memory_format=torch.channels_last)
    said = []
    caplog.clear()  # (part 3's warning of the failed config)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        table = plan_block(SPEC, ops.fold_block(BLOCK, torch.float16, "cpu"), x,
                           synthetic_masks(SPEC, 0.5), cands, "cached", cache, None,
                           said.append)
    assert sorted(table.entries) == rates and said == [] and caplog.records == []
    assert {c.variant for c in table.entries.values()} <= {"dense", "gather"}
    assert {s.variant for s in samples(cache.entries())} == {"dense", "gather"}
    for g in group_rows(rows_from_cache(cache)).values():
        for sid in g["specs"]:
            assert "patch" not in spec_curves(g, sid, None)


def test_a_failed_config_of_a_variant_whose_other_config_ran(tmp_path, monkeypatch):
    """gather's second config fails at the first rate: inf there and at the later rates,
    its first config timed at every rate."""
    cache = _part3(tmp_path, monkeypatch, two_gather_configs=True)
    for r in set(_realised()):
        got = cache.lookup(SPEC, r)["gather"]
        assert got['{"bad":1}'] == math.inf and 0 < got["{}"] < math.inf, (r, got)


def test_a_failure_keeps_an_earlier_runs_timing_at_the_later_rates(tmp_path, monkeypatch):
    """A config that failed at the first rate was recorded inf at the later rates over
    the time an earlier run (same code, same --out cache) had measured there."""
    later = _realised()[1:]
    earlier = TuneCache(tmp_path / "cache")
    for r in later:
        earlier.record(SPEC, r, {"patch": {"{}": 5e-4}}, {"source": "gpucheck"})
    cache = _part3(tmp_path, monkeypatch)
    assert cache.lookup(SPEC, _realised()[0])["patch"] == {"{}": math.inf}  # measured
    for r in set(later) - {_realised()[0]}:
        assert cache.lookup(SPEC, r)["patch"] == {"{}": 5e-4}, r


def test_with_failed_fills_only_what_neither_this_rate_nor_the_cache_has():
    failed = {("a", "{}"): 0.25, ("b", '{"x":1}'): 0.25}
    got = blocks._with_failed({"b": {"{}": 1.0}}, failed, {"a": {"{}": 2.0}})
    assert got == {"b": {"{}": 1.0, '{"x":1}': math.inf}}
    assert blocks._with_failed({}, failed) == {"a": {"{}": math.inf},
                                              "b": {'{"x":1}': math.inf}}


def _entry_text(data: dict, key: str, field: str, repeat: str) -> str:
    """The cache file text of ``data`` where the entry ``key``'s object ``field`` opens
    with ``repeat`` (a name and value it also holds later)."""
    entries = []
    for k, e in data["entries"].items():
        if k == key:
            inner = json.dumps(e[field])
            rest = json.dumps({f: v for f, v in e.items() if f != field})
            e_text = rest[:-1] + f', "{field}": {{{repeat}, ' + inner[1:] + "}"
        else:
            e_text = json.dumps(e)
        entries.append(f"{json.dumps(k)}: {e_text}")
    return (f'{{"schema": 1, "device": {json.dumps(data["device"])}, "entries": '
            f'{{{", ".join(entries)}}}}}')


def test_a_name_repeated_inside_an_entry_is_said_once_per_load(tmp_path, caplog):
    """In "timings" (a config twice) and in "meta" ("models" twice): json reads the
    last of each, the load says it once, naming the file and the name."""
    cache = TuneCache(tmp_path)
    cache.record(SPEC, 0.5, {"dense": {"{}": 2e-3}}, {"models": {"m": ["b"]}})
    data = json.loads(cache.path.read_text())
    key = next(iter(data["entries"]))
    for field, repeat, name in (("timings", '"{}": 9.0', "{}"),
                                ("meta", '"models": {"x": ["y"]}', "models")):
        cache.path.write_text(_entry_text(data, key, field, repeat))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="laudtriton"):
            _, entries = load_cache_file(cache.path)
            assert TuneCache(tmp_path).lookup(SPEC, 0.5) == {"dense": {"{}": 2e-3}}
        assert entries == data["entries"]  # the last of each: the file's own
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 2 and all(  # one per load: load_cache_file's, the cache's
            "given twice" in m and str(cache.path) in m and repr(name) in m
            for m in said), said


def test_ls_all_says_a_stale_entry_has_no_versions(tmp_path, capsys):
    """An entry without "versions" (hand-edited) is stale; its row read "(stale: ,
    source ...)"."""
    import argparse

    from laudtriton.tune.cache_command import add_cache_parser

    cache = TuneCache(tmp_path)
    cache.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    data = json.loads(cache.path.read_text())
    (key, entry), = data["entries"].items()
    del entry["versions"]
    cache.path.write_text(json.dumps(data))
    p = argparse.ArgumentParser(prog="laudtriton")
    add_cache_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["cache", "ls", "--all", "--cache-dir", str(tmp_path)])
    capsys.readouterr()
    assert args.func(args) == 0
    stale = [ln for ln in capsys.readouterr().out.splitlines() if "(stale: " in ln]
    assert len(stale) == 1 and "(stale: no versions recorded, source " in stale[0], stale
