"""The autotune sweep: parsing, dedup of equal specs, resume from the cache, shards, prune,
CSV, and the sweep/cache subcommands."""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import re
from dataclasses import replace

import pytest

from laudtriton.nn import LaudResNet
from laudtriton.ops import BlockSpec, variants_for
from laudtriton.schedule import DENSE_MARGIN
from laudtriton.tune import cache as cache_mod
from laudtriton.tune import options as options_mod
from laudtriton.tune import sweep as sweep_mod
from laudtriton.tune import sweep_blocks
from laudtriton.tune.cache import TuneCache
from laudtriton.tune.cache_command import add_cache_parser
from laudtriton.tune.commands import _print_summary, add_sweep_parser
from laudtriton.tune.options import parse_rates, parse_shard
from laudtriton.tune.sweep import sweep
from laudtriton.tune.sweep_csv import CSV_FIELDS, read_csv, write_csv

FAST = dict(progress=False, warmup=1, reps=1)
SPEC_FOREIGN = BlockSpec(48, 12, 48, 1, False, (13, 13), "spatial", 3)


def tiny(depths=(1, 1, 1, 1)) -> LaudResNet:
    return LaudResNet(depths, width_mult=0.25, input_size=64, granularity="2-2-1-1")


@pytest.fixture(autouse=True)
def frozen_sources(monkeypatch):
    """Hash each variant's source once per test: other people editing the checkout while
    the test runs must not invalidate the entries between two sweeps."""
    monkeypatch.setattr(cache_mod, "source_hash", functools.cache(cache_mod.source_hash))


@pytest.fixture
def counted(monkeypatch):
    """Counts time_variants calls: [(spec, {variant: [configs]}, grid rate)]."""
    calls = []
    real = sweep_mod.time_variants

    def spy(fb, spec, x, masks, variants, warmup, reps, configs, verify):
        calls.append((spec, {k: list(v) for k, v in configs.items()},
                      round(masks.grid.mean().item(), 2)))
        assert x.abs().sum() > 0  # never time on zeros
        assert verify is True  # every config's output checked before it is timed
        return real(fb, spec, x, masks, variants, warmup=warmup, reps=reps, configs=configs,
                    verify=verify)

    monkeypatch.setattr(sweep_mod, "time_variants", spy)
    return calls


@pytest.mark.parametrize("text,want", [
    ("0.1:1.0:0.1", [round(0.1 * i, 6) for i in range(1, 11)]),
    ("0:1:0.25", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("0.5,0.25", [0.25, 0.5]),
    ("0.5", [0.5]),
    ("0.3:0.3:0.1", [0.3]),
    ("-0", [0.0]), ("-0:0.5:0.5", [0.0, 0.5]),
])
def test_parse_rates(text, want):
    got = parse_rates(text)
    assert got == want
    assert all(str(r) != "-0.0" for r in got)  # -0 is 0, not printed as -0.00


@pytest.mark.parametrize("text", ["abc", "0.1:1.0", "0.5:0.1:0.1", "0.1:1:0", "1.5", "",
                                  "0.2,,0.3", "-0.1:0.5:0.1", "0.1:1:0.1:2", "-0.0000004",
                                  "1.0000004", "0:1.05:0.1", "nan",
                                  # float() read other scripts' digits and underscores
                                  "\uff10.5", "0.2_5", "0:1:0.2_5"])
def test_parse_rates_rejects(text):
    with pytest.raises(ValueError, match="--rates"):
        parse_rates(text)


@pytest.mark.parametrize("text,match", [
    ("0:1:1e-9", r"--rates '0:1:1e-9': step 1e-09 is below 1e-06"),
    ("0:1:1e-8", r"step 1e-08 is below 1e-06"),
    ("0:1:0.0005", r"--rates '0:1:0.0005' gives 2001 rates; at most 1001"),
    ("0:1:0.000999", r"--rates '0:1:0.000999' gives 1002 rates; at most 1001"),  # one over
    ("0:1e12:1", r"rates must lie in \[0, 1\], got \[1000000000000.0\]"),
    (",".join(str(i / 2000) for i in range(2001)), r"lists 2001 rates; at most 1001"),
    ("0:inf:0.1", r"--rates '0:inf:0.1' is malformed"),
])
def test_parse_rates_refuses_too_many_before_building_them(text, match, monkeypatch):
    """A step below the rounding or more than MAX_RATES rates is refused from the text
    (a step of 1e-8 once built a million rates: 53 s, 4 GB): no more rates are rounded
    than the text lists (counted through the module's ``round``)."""
    calls = []

    def counting_round(*args):
        calls.append(1)
        return round(*args)
    monkeypatch.setattr(options_mod, "round", counting_round, raising=False)
    with pytest.raises(ValueError, match=match):
        parse_rates(text)
    assert len(calls) <= (0 if ":" in text else len(text.split(",")))
    monkeypatch.undo()
    assert len(parse_rates("0:1:0.001")) == options_mod.MAX_RATES == 1001


@pytest.mark.parametrize("text,want", [("1/4", (1, 4)), ("4/4", (4, 4)), ("1/1", (1, 1)),
                                       (" 1/2 ", (1, 2)), ("01/02", (1, 2))])
def test_parse_shard(text, want):
    assert parse_shard(text) == want


# int() read '1_0' as 10 and other scripts' digits; ' 1 / 2' is not one number per side
@pytest.mark.parametrize("text", ["0/4", "5/4", "a/b", "1-4", "1/4/2", "", "1_0/20",
                                  "\u0661/\u0662", "1 / 2", "+1/2"])
def test_parse_shard_rejects(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_sweep_refuses_a_cache_of_another_fingerprint(tmp_path, counted):
    """A cache made for another device fingerprint (here: before the thread count
    changed) got the timings filed under its name, where compile on that machine would
    read them as its own; the sweep now refuses it before timing anything."""
    import torch

    cache = TuneCache(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        with pytest.raises(ValueError, match=r"cache: a TuneCache of .* thread\(s\) now"):
            sweep(tiny(), rates=[0.5], cache=cache, **dict(FAST, blocks="layer2.0"))
        assert not counted
        # a clustered sweep files nothing (its own cache in memory): not refused
        sweep(tiny(), rates=[0.5], cache=cache, clustered=True,
              **dict(FAST, blocks="layer2.0"))
        assert counted
    finally:
        torch.set_num_threads(threads)
    assert not cache.path.exists()


def test_sweep_resumes_from_cache(tmp_path, counted):
    model = tiny()
    kw = dict(FAST, blocks="layer2.0,layer4.0")
    r1 = sweep(model, rates=[0.25, 0.75], cache=TuneCache(tmp_path), csv_path=tmp_path / "a.csv",
               **kw)
    n_specs = 2
    assert r1.timed == 2 * n_specs == len(counted) and r1.cached == 0 and r1.saved
    for spec, todo, _ in counted:
        assert set(todo) == {v.name for v in variants_for(spec, "cpu")}
    rows = read_csv(tmp_path / "a.csv")
    assert list(rows[0]) == list(CSV_FIELDS) and len(rows) == len(r1.rows)
    assert {r["input_size"] for r in rows} == {64}  # the model's own (plot keeps sizes apart)
    for r in rows:
        assert r["seconds"] > 0 and r["dense_seconds"] > 0
        assert r["ratio"] == pytest.approx(r["seconds"] / r["dense_seconds"])
        assert 0 < r["flops_ratio"] <= 1

    counted.clear()
    r2 = sweep(model, rates=[0.25, 0.75], cache=TuneCache(tmp_path), **kw)
    assert counted == [] and r2.timed == 0 and r2.cached == r1.timed
    key = ("block", "rate", "variant", "config", "seconds")
    assert sorted(tuple(r[k] for k in key) for r in r2.rows) == \
        sorted(tuple(r[k] for k in key) for r in r1.rows)

    r3 = sweep(model, rates=[0.25, 0.5], cache=TuneCache(tmp_path), **kw)  # one new rate
    assert r3.timed == n_specs and r3.cached == n_specs
    counted.clear()
    r4 = sweep(model, rates=[0.25], cache=TuneCache(tmp_path), force=True, **kw)
    assert r4.timed == n_specs == len(counted)


def test_a_sweep_that_finds_an_item_cached_still_names_its_model_and_rates(tmp_path):
    """The cache's meta names the models, blocks and asked rates of every sweep that met
    an item, not only of the one that timed it: a second model whose blocks were all
    cached (ResNet-101 after ResNet-50) got no figure from ``plot --from cache``, and an
    asked rate met only in the cache no point on the whole-model curve."""
    from laudtriton.plot_rows import rows_from_cache

    model, dense = tiny(), ["dense"]
    kw = dict(FAST, blocks="layer2.0")
    sweep(model, rates=[0.25], cache=TuneCache(tmp_path), model_name="netA", variants=dense,
          **kw)
    sweep(model, rates=[0.25], cache=TuneCache(tmp_path), model_name="netB", **kw)  # partly
    r = sweep(model, rates=[0.26], cache=TuneCache(tmp_path), model_name="netC", **kw)
    assert r.timed == 0 and {row["rate"] for row in r.rows} == {0.25}  # 0.26 realises 0.25
    rows = rows_from_cache(TuneCache(tmp_path))
    variants = {row["variant"] for row in rows}
    assert len(variants) > 1
    for v in variants:
        got = {(row["model"], row["block"], row["asked_rate"]) for row in rows
               if row["variant"] == v}
        want = {(m, "layer2.0", a) for m in ("netB", "netC") for a in (0.25, 0.26)}
        assert want <= got and ({("netA", "layer2.0", 0.25)} <= got) == (v == "dense")
    path = TuneCache(tmp_path).path
    before = path.stat().st_mtime_ns
    sweep(model, rates=[0.26], cache=TuneCache(tmp_path), model_name="netC", **kw)
    assert path.stat().st_mtime_ns == before  # nothing new: the file is not rewritten


def test_timings_are_recorded_at_the_rate_the_masks_realise(tmp_path, counted):
    """A layer gate at batch 1 is off at asked rates 0.3 and 0.5 (round(r·1) = 0) and on
    at 0.6: the sweep times rate 0 once and rate 1 once, and the cache and the CSV hold
    them at 0 and 1 (before, at 0.3, 0.5 and 0.6: a 'rate 0.5' timed with the gate off,
    which compile then served at 0.5). The CSV keeps a row set per asked rate, the cache
    entry every asked rate (for the whole-model plot)."""
    model = LaudResNet((1, 1, 1, 1), width_mult=0.25, input_size=64, mode="layer")
    cache = TuneCache(tmp_path)
    res = sweep(model, rates=[0.3, 0.5, 0.6], cache=cache, blocks="layer4.0",
                csv_path=tmp_path / "l.csv", **FAST)
    assert (res.timed, res.merged) == (2, 1) and len(counted) == 2
    assert [c[2] for c in counted] == [0.0, 1.0]
    spec = counted[0][0]
    assert cache.rates(spec) == [0.0, 1.0]
    rows = read_csv(tmp_path / "l.csv")
    assert sorted({(r["asked_rate"], r["rate"]) for r in rows}) == [(0.3, 0.0), (0.5, 0.0),
                                                                      (0.6, 1.0)]
    asked = {e.rate_bucket: e.meta["asked_rates"] for e in cache.entries()}
    assert asked == {0.0: [0.3, 0.5], 1.0: [0.6]}
    fr = {r["rate"]: r["flops_ratio"] for r in rows}  # rate 0: the downsample alone
    assert fr[0.0] < 0.5 and fr[1.0] == 1.0


def test_sweep_says_it_is_planning_before_building_the_blocks(tmp_path, capsys,
                                                                monkeypatch):
    """Building the blocks (a forward at the input size) and drawing every item's masks
    ran before the progress bar, silent for 44 s on a large sweep."""
    real = sweep_mod.model_blocks

    def building(*args, **kwargs):
        assert "sweep: planning" in capsys.readouterr().err  # said before the work
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_mod, "model_blocks", building)
    sweep(tiny(), rates=[0.5], blocks=[0], cache=TuneCache(tmp_path), progress=True,
          warmup=0, reps=1)
    monkeypatch.setattr(sweep_mod, "model_blocks", real)
    capsys.readouterr()
    sweep(tiny(), rates=[0.5], blocks=[0], cache=TuneCache(tmp_path), progress=False,
          warmup=0, reps=1)
    assert capsys.readouterr().err == ""  # progress=False: silent


def test_equal_specs_tuned_once(tmp_path, counted):
    model = tiny((1, 1, 3, 1))  # layer3.1 and layer3.2 share one BlockSpec
    res = sweep(model, rates=[0.5], cache=TuneCache(tmp_path), blocks="layer3.1,layer3.2",
                **FAST)
    assert res.timed == 1 and len(counted) == 1
    assert {r["block"] for r in res.rows} == {"layer3.1", "layer3.2"}
    by_block = {b: sorted((r["variant"], r["seconds"]) for r in res.rows if r["block"] == b)
                for b in ("layer3.1", "layer3.2")}
    assert by_block["layer3.1"] == by_block["layer3.2"]
    meta = TuneCache(tmp_path).entries()[0].meta
    assert meta["models"] == {"custom_d1-1-3-1_w0.25": ["layer3.1", "layer3.2"]}


def test_a_narrow_factory_network_is_named_with_its_width(tmp_path):
    """A LAUD-ResNet-50 of width 0.25 was filed as laud_resnet50, beside the full width's
    blocks of other specs: one cache then mapped laud_resnet50/layer4.0 to two specs, and
    the plots refused the whole-model figure as "sweeps at several granularities"."""
    from laudtriton.nn import laud_resnet50
    from laudtriton.plot_rows import missing_blocks, model_depths

    narrow = laud_resnet50(width_mult=0.25, input_size=64)
    res = sweep(narrow, rates=[0.5], blocks="layer4.0", cache=TuneCache(tmp_path), **FAST)
    assert {r["model"] for r in res.rows} == {"laud_resnet50_w0.25"}
    (meta,) = {json.dumps(e.meta["models"]) for e in TuneCache(tmp_path).entries()}
    assert json.loads(meta) == {"laud_resnet50_w0.25": ["layer4.0"]}
    assert sweep_blocks.network_name(laud_resnet50(input_size=64)) == "laud_resnet50"
    assert sweep_blocks.network_name(tiny((1, 1, 3, 1))) == "custom_d1-1-3-1_w0.25"
    # the plots still know its blocks (16 in all), as the factory's, and a custom one's
    assert model_depths("laud_resnet50_w0.25") == model_depths("laud_resnet50") == (3, 4, 6, 3)
    assert model_depths("custom_d1-1-3-1_w0.25") == model_depths("custom_d1-1-3-1") == (
        1, 1, 3, 1)
    assert model_depths("tiny") is None and model_depths("custom") is None
    assert len(missing_blocks("laud_resnet50_w0.25", {"layer4.0": 1})) == 15
    # a name no sweep makes: plot listed 100 million missing blocks (42 s); a depth of
    # 5000 digits raised int()'s digit limit
    assert model_depths("custom_d100000000") is None
    assert model_depths("custom_d" + "9" * 5000) is None
    assert model_depths("custom_d5000-5000") == (5000, 5000)
    assert model_depths("custom_d5000-5001") is None
    assert missing_blocks("custom_d100000000", {"layer1.0": 1}) == []


@pytest.mark.parametrize("kwargs,match", [
    (dict(shard=(1.5, 2)), r"shard \(1.5, 2\): need \(i, n\), ints with 1 <= i <= n"),
    (dict(shard=(1, 2.0)), r"shard \(1, 2.0\): need"),
    (dict(shard=(1, 2, 3)), r"shard \(1, 2, 3\): need"),
    (dict(shard=(3, 2)), r"shard \(3, 2\): need"),
    (dict(rates=0.5), r"rates 0.5 must be a sequence of numbers in \[0, 1\] or a string"),
    (dict(rates=["a"]), r"rates \['a'\] must be a sequence of numbers"),
    (dict(csv_path=123), r"csv_path must be a path \(str or os.PathLike\), got int"),
    (dict(input_size=0), r"input_size must be a positive int, got 0"),
    (dict(input_size="64"), r"input_size must be a positive int, got '64'"),
    (dict(shard=5), r"shard 5: need"),
])
def test_sweep_api_arguments_of_the_wrong_type_are_value_errors(tmp_path, kwargs, match):
    """Through the Python API these were TypeErrors (slice indices, iteration, a path)
    or torch's RuntimeError (input_size=0 with a model instance)."""
    with pytest.raises(ValueError, match=match):
        sweep(tiny(), **{"rates": [0.5], "blocks": "layer4.0",
                         "cache": TuneCache(tmp_path), **FAST, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_sweep_api_takes_numpy_ints_and_small_inputs_of_an_instance(tmp_path):
    """input_size as a numpy int passed the checks and failed after the timing (no JSON
    for the cache's meta); a shard as a numpy array is a pair; an instance's input size
    is any its maps allow (16 here: below the command's bound of 32)."""
    import numpy as np

    for size in (np.int64(48), 16):
        res = sweep(tiny(), rates=[0.5], blocks="layer4.0", shard=np.array([1, 1]),
                    input_size=size, cache=TuneCache(tmp_path / str(size)), **FAST)
        assert res.timed == 1 and res.saved
        assert {r["input_size"] for r in res.rows} == {int(size)}


def test_prune_hook_and_block_indices(tmp_path, counted):
    seen = []

    def prune(spec, rate, variant, configs):
        seen.append((spec.short(), rate, variant.name, len(configs)))
        return configs if variant.name == "dense" else []

    res = sweep(tiny(), rates=[0.4], cache=TuneCache(tmp_path), blocks=[0], prune=prune, **FAST)
    assert res.timed == 1 and counted[0][1].keys() == {"dense"}
    assert {v for _, _, v, _ in seen} == {v.name for v in variants_for(counted[0][0], "cpu")}
    assert {r["variant"] for r in res.rows} == {"dense"}


def test_variants_restriction_keeps_dense(tmp_path, counted):
    model = tiny()
    spec = sweep_blocks.model_blocks(model, 64)[0][2]
    names = [v.name for v in variants_for(spec, "cpu") if v.name != "dense"]
    res = sweep(model, rates=[0.5], cache=TuneCache(tmp_path), blocks=[0], variants=names[:1],
                **FAST)
    assert res.timed == 1 and set(counted[0][1]) == {"dense", names[0]}


def test_shards_partition_the_work(tmp_path, counted):
    model = tiny()
    kw = dict(FAST, blocks=[0, 2, 3])
    done = []
    for i in (1, 2):
        counted.clear()
        sweep(model, rates=[0.3, 0.6], cache=TuneCache(tmp_path / str(i)), shard=(i, 2), **kw)
        done.append({(s, json.dumps(sorted(t)), r) for s, t, r in counted})
    assert done[0] and done[1] and not done[0] & done[1]
    counted.clear()
    sweep(model, rates=[0.3, 0.6], cache=TuneCache(tmp_path / "all"), **kw)
    assert len(counted) == len(done[0]) + len(done[1])


def test_unwritable_cache_sweep_goes_on(tmp_path):
    cache = TuneCache(tmp_path / "f")
    (tmp_path / "f").write_text("x")  # a file where the directory should be: fails as root
    res = sweep(tiny(), rates=[0.5], cache=cache, blocks=["layer4.0"], **FAST)
    assert res.timed == 1 and not res.saved and res.rows
    assert all(math.isfinite(r["seconds"]) for r in res.rows)


def test_clustered_timings_never_stand_in_for_scattered_ones(tmp_path, counted):
    """A clustered sweep neither reads nor writes the cache (compile and the predictor
    read it as timings on scattered masks); its CSV rows say clustered 1."""
    kw = dict(FAST, rates=[0.5], blocks=[0])
    model = tiny()
    c1 = sweep(model, clustered=True, cache=TuneCache(tmp_path), csv_path=tmp_path / "c.csv",
               **kw)
    assert (c1.timed, c1.cached, c1.saved, c1.cache_path) == (1, 0, False, None)
    assert not TuneCache(tmp_path).path.exists()
    assert {r["clustered"] for r in read_csv(tmp_path / "c.csv")} == {"1"}
    n = sweep(model, cache=TuneCache(tmp_path), **kw)
    assert (n.timed, n.cached, n.saved) == (1, 0, True)  # timed again, on scattered masks
    assert {r["clustered"] for r in n.rows} == {0}
    c2 = sweep(model, clustered=True, cache=TuneCache(tmp_path), **kw)
    assert (c2.timed, c2.cached) == (1, 0)  # and not the other way round either
    assert len(counted) == 3
    assert [e.meta["clustered"] for e in TuneCache(tmp_path).entries()] == \
        [False] * len(n.rows)


def test_clustered_sweep_command_says_where_the_timings_are(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep_mod, "MAX_REPS", 2)
    monkeypatch.setattr(sweep_mod, "MIN_REPS", 1)
    monkeypatch.chdir(tmp_path)
    args = _parser().parse_args(["sweep", "--rates", "0.5", "--blocks", "layer4.2",
                                 "--cache-dir", str(tmp_path / "c"), "--no-progress",
                                 "--input-size", "64", "--clustered"])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert "1 (spec, rate) items timed, 0 from the cache" in out
    assert "CSV: sweep_laud_resnet50_spatial_4-4-2-1_b1_i64_cpu_clustered.csv" in out
    assert err.strip().splitlines()[-1] == (
        "cache NOT saved (--clustered: timings on clustered masks are never cached); the "
        "results are only in the CSV")
    assert not (tmp_path / "c").exists()


def test_sweep_with_the_cache_disabled_says_so_first_and_makes_no_folder(tmp_path, capsys,
                                                                         monkeypatch):
    """LAUDTRITON_CACHE=0: the sweep made --cache-dir's folder, timed everything, and only
    then said the cache was disabled."""
    monkeypatch.setattr(sweep_mod, "MAX_REPS", 2)
    monkeypatch.setattr(sweep_mod, "MIN_REPS", 1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAUDTRITON_CACHE", "0")
    args = _parser().parse_args(["sweep", "--rates", "0.5", "--blocks", "layer4.2",
                                 "--cache-dir", str(tmp_path / "c"), "--no-progress",
                                 "--input-size", "64"])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert "1 (spec, rate) items timed, 0 from the cache" in out
    lines = err.strip().splitlines()
    assert lines[0] == ("cache disabled (LAUDTRITON_CACHE=0): the timings go to the CSV "
                        "only")
    assert lines[-1].startswith("cache NOT saved (disabled by LAUDTRITON_CACHE=0)")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("kwargs,match", [
    (dict(model="resnet18"), "model 'resnet18' unknown"),
    (dict(blocks="layer9.9"), "--blocks: unknown block 'layer9.9'"),
    (dict(blocks=[99]), "--blocks: index 99"),
    (dict(blocks=[True]), "--blocks: unknown block True"),
    (dict(blocks="4"), r"--blocks: index 4 out of range; the model has 4 blocks \(0\.\.3\)"),
    (dict(rates="0.1:2:0.5"), "--rates"),
    (dict(shard=(3, 2)), "shard"),
    (dict(batch=0), "batch 0"),
    (dict(batch=True), "batch True"),
    (dict(dtype="float8"), "dtype 'float8'"),
    (dict(variants="dense,warp_drive"), "unknown variant 'warp_drive'"),
    (dict(variants=" , "), "--variants is empty"),
    (dict(variants=[]), "--variants is empty"),
    (dict(reps=0), "reps 0 must be a positive int"),
    (dict(reps=2.5), "reps 2.5"),
    (dict(warmup=-1), "warmup -1 must be an int >= 0"),
    (dict(rates=[1.5]), r"^rates \[1.5\] must be non-empty and lie in \[0, 1\]$"),
    (dict(rates=[0.5, -0.25]), r"^rates \[-0.25, 0.5\] must be non-empty and lie in"),
    (dict(rates=[]), r"^rates \[\] must be non-empty and lie in \[0, 1\]$"),
    (dict(blocks=[]), r"^--blocks selects no block; give names or indices, e.g. 'layer1.0,1'$"),
])
def test_sweep_rejects(tmp_path, kwargs, match):
    args = dict(model=tiny(), rates=[0.5], cache=TuneCache(tmp_path), **FAST)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sweep(**args)


@pytest.mark.parametrize("variants,blocks,idle", [
    ("fused", None, "fused"),  # CUDA only
    ("dense,slice,masked", None, "masked, slice"),  # a channel variant, a CUDA one
    ("gather,patch", "layer3.0,layer4.0", "patch"),  # patch runs layer1.0, not selected
])
def test_sweep_refuses_variants_no_selected_block_runs(tmp_path, counted, variants, blocks,
                                                        idle):
    """A variant that none of the selected blocks runs on this backend is refused
    before anything is timed or written, naming each such variant."""
    with pytest.raises(ValueError, match=rf"^--variants {idle}: no selected block of this "
                                         "model and mode runs it on cpu$"):
        sweep(tiny(), rates=[0.5], blocks=blocks, variants=variants,
              cache=TuneCache(tmp_path), csv_path=tmp_path / "s.csv", **FAST)
    assert counted == [] and list(tmp_path.iterdir()) == []


def test_blocks_by_index_take_numpy_ints_and_refuse_bools():
    """An index may be any integer (numpy's too); True and False are not indices."""
    import numpy as np

    named = sweep_blocks.model_blocks(tiny(), 64)
    names = [n for n, _, _ in named]
    assert [n for n, _, _ in sweep_blocks.select_blocks(named, [np.int64(2), 0])] == [
        names[0], names[2]]
    for flag in (True, False, np.bool_(True)):
        with pytest.raises(ValueError, match="--blocks: unknown block"):
            sweep_blocks.select_blocks(named, [flag])


def test_blocks_take_a_numpy_array_and_refuse_a_non_iterable():
    """A numpy array of indices selects its blocks (its truth value raised numpy's own
    error); an array with nothing in it is an empty selection; a bare int is refused
    naming --blocks (it raised a TypeError from the loop)."""
    import numpy as np

    named = sweep_blocks.model_blocks(tiny(), 64)
    names = [n for n, _, _ in named]
    assert [n for n, _, _ in sweep_blocks.select_blocks(named, np.array([2, 0]))] == [
        names[0], names[2]]
    with pytest.raises(ValueError, match="^--blocks selects no block"):
        sweep_blocks.select_blocks(named, np.array([], dtype=int))
    with pytest.raises(ValueError, match="^--blocks takes a list of block names or "
                                         "indices, or a comma list of them, got int 1$"):
        sweep_blocks.select_blocks(named, 1)


def _parser():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    add_sweep_parser(sub)
    add_cache_parser(sub)
    return p


@pytest.mark.parametrize("argv,match", [
    (["sweep", "--rates", "0.1:x"], "--rates"),
    (["sweep", "--shard", "2/1"], "--shard"),
    (["sweep", "--model", "vgg"], "--model 'vgg'"),
    (["sweep", "--device", "tpu"], "--device 'tpu'"),
    (["sweep", "--granularity", "4-4-2"], "granularity '4-4-2' has 3 stages"),
    (["sweep", "--variants", "nope"], "unknown variant 'nope'"),
    (["sweep", "--mode", "sparse"], "mode 'sparse' unknown"),
    (["sweep", "--prune-top", "-1"], "--prune-top -1 must be >= 0"),
    (["sweep", "--prune-top", "2", "--hardware", "nope"], "--hardware 'nope' unknown"),
    # an empty --hardware was read as not given: the CPU's model, silently
    (["sweep", "--prune-top", "2", "--hardware", ""], "--hardware '' unknown"),
    (["sweep", "--prune-top", "1", "--hardware", "v100"], "--hardware 'v100' models a GPU, "
     "and this sweep times --device cpu"),
    (["sweep", "--prune-top", "1", "--hardware", "jetson_tx2"], "models an edge GPU"),
    (["cache", "merge", "nope.json", "--out", "x.json"], "not found"),
    (["sweep", "--hardware", "nothw"],
     "--hardware 'nothw' is used only with --prune-top K (K >= 1)"),
    (["sweep", "--hardware", "v100"], "--hardware 'v100' is used only with --prune-top"),
    (["sweep", "--granularity", "-1"], "--granularity '-1' is not a positive int"),
    (["sweep", "--granularity", "4-0-2-1"], "--granularity '4-0-2-1' is not a positive int"),
    (["sweep", "--channel-granularity", "0"], "--channel-granularity '0' is not a positive"),
    (["sweep", "--csv", ""], "--csv '' is empty"),
    (["sweep", "--rates", "0:1:1e-9"], "--rates '0:1:1e-9': step 1e-09 is below 1e-06"),
    (["cache", "merge", "x.json", "--out", ""], "--out '' is empty"),
    (["cache", "merge", "x.json", "--out", "."], "--out '.' is a directory"),
    (["cache", "merge", "", "--out", "o.json"], "an input file '' is empty"),
    (["cache", "ls", "--cache-dir", ""], "--cache-dir '' is empty"),
    (["cache", "clear", "--cache-dir", " "], "--cache-dir ' ' is empty"),
])
def test_commands_user_errors_exit_2(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _parser().parse_args(argv + (["--cache-dir", str(tmp_path)] if argv[0] == "sweep"
                                        else []))
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"laudtriton {argv[0]}: error:")
    assert os.listdir(tmp_path) == []  # nothing written, in the cache dir or the cwd


def test_cache_dir_that_is_a_file_is_refused(tmp_path, capsys):
    afile = tmp_path / "f.json"
    afile.write_text("x")
    for cmd in ("ls", "clear"):
        args = _parser().parse_args(["cache", cmd, "--cache-dir", str(afile)])
        assert args.func(args) == 2
        assert capsys.readouterr().err == (f"laudtriton cache: error: --cache-dir "
                                           f"{str(afile)!r} is not a directory\n")
    assert afile.read_text() == "x"


def test_cache_commands(tmp_path, capsys):
    c = TuneCache(tmp_path)
    from laudtriton.ops import BlockSpec

    spec = BlockSpec(32, 8, 32, 1, False, (9, 9), "spatial", 3)
    c.record(spec, 0.5, {"dense": {"{}": 2e-3}})
    p = _parser()
    args = p.parse_args(["cache", "ls", "--cache-dir", str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "1 entry, 1 timing" in out and spec.short() in out and "2.000" in out
    half = replace(spec, dtype="bfloat16")  # another dtype: its own row, named
    c.record(half, 0.5, {"dense": {"{}": 5e-3}})
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "2 entries" in out and f"{half.short()}  " in out and "bfloat16" in half.short()
    assert "2.000" in out and "5.000" in out
    args = p.parse_args(["cache", "merge", str(c.path), "--out", str(tmp_path / "m.json")])
    assert args.func(args) == 0 and "2 entries" in capsys.readouterr().out
    args = p.parse_args(["cache", "clear", "--cache-dir", str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "removed 2" in out and ": no file" not in out
    assert not c.path.exists()
    # a directory with no cache file (a mistyped one, say): said, as ls says it
    args = p.parse_args(["cache", "clear", "--cache-dir", str(tmp_path / "typo")])
    assert args.func(args) == 0
    assert f"removed 0 entries ({tmp_path / 'typo'}" in (out := capsys.readouterr().out)
    assert out.rstrip().endswith(".json: no file)") and not (tmp_path / "typo").exists()


def _tiny_sweep_command(tmp_path, monkeypatch) -> int:
    """`laudtriton sweep` of one block at rate 0.5 into the cache dir ``tmp_path``."""
    monkeypatch.setattr(sweep_mod, "MAX_REPS", 2)
    monkeypatch.setattr(sweep_mod, "MIN_REPS", 1)
    argv = ["sweep", "--rates", "0.5", "--blocks", "layer4.2", "--cache-dir", str(tmp_path),
            "--csv", str(tmp_path / "s.csv"), "--no-progress", "--input-size", "64"]
    args = _parser().parse_args(argv)
    return args.func(args)


def test_sweep_command_writes_csv(tmp_path, capsys, monkeypatch):
    assert _tiny_sweep_command(tmp_path, monkeypatch) == 0
    out = capsys.readouterr().out
    assert "1 (spec, rate) items timed" in out and "cache:" in out
    with open(tmp_path / "s.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["block"] for r in rows} == {"layer4.2"} and rows[0]["model"] == "laud_resnet50"


def test_sweep_command_out_of_memory_names_batch_and_input_size(tmp_path, capsys,
                                                                monkeypatch):
    """An input the allocator refuses (a --batch or --input-size too large) is one line
    naming both, where it was a traceback."""
    def huge(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 401408000000 bytes")
    monkeypatch.setattr(sweep_mod, "time_variants", huge)
    assert _tiny_sweep_command(tmp_path, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("laudtriton sweep: error: --batch 1 --input-size 64: out of "
                          "memory (") and "Traceback" not in err
    def other(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(sweep_mod, "time_variants", other)
    with pytest.raises(RuntimeError, match="a bug"):  # any other error is not hidden
        _tiny_sweep_command(tmp_path, monkeypatch)


def test_sweep_command_says_why_a_foreign_file_was_not_written(tmp_path, capsys,
                                                               monkeypatch):
    """A cache file of another device under this device's file name is not written over;
    the command says that (it said "directory not writable" of a writable directory),
    and now before any timing, with exit code 2 (it timed every item, then said "cache
    NOT saved" with exit code 0)."""
    c = TuneCache(tmp_path)
    c.record(SPEC_FOREIGN, 0.5, {"dense": {"{}": 1e-3}})
    data = json.loads(c.path.read_text())
    c.path.write_text(json.dumps({**data, "device": "Some Other CPU 64t"}))
    assert _tiny_sweep_command(tmp_path, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "holds timings of device 'Some Other CPU 64t'" in err and "--cache-dir" in err
    assert "not writable" not in err and not (tmp_path / "s.csv").exists()


def test_summary_names_the_variant_compile_chooses(capsys):
    def row(spec, variant, seconds):
        return {"spec": spec, "rate": 0.5, "variant": variant, "config": "{}",
                "seconds": seconds}

    near = (1 - DENSE_MARGIN / 2) * 1e-3
    _print_summary([row("a", "dense", 1e-3), row("a", "gather", near),
                    row("b", "dense", 1e-3), row("b", "patch", 0.5e-3),
                    row("c", "dense", math.inf), row("c", "gather", math.inf)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["block", "spec", "rate"] and "chosen" in lines[0]
    assert lines[1].split() == ["a", "0.50", "dense", "1.000", "1.000", "1.00", "gather"]
    assert lines[2].split() == ["b", "0.50", "patch", "0.500", "1.000", "0.50"]
    assert len(lines) == 3  # nothing finite for "c": no line


def test_sweep_command_prune_top_runs(tmp_path, capsys, monkeypatch):
    """--prune-top K wires the predictor's prune hook, built for --hardware with top_k K,
    into the sweep: it sees every (spec, rate, variant) the sweep times (CPU variants have
    a single config, so every variant is still timed)."""
    import laudtriton.predict.hardware as hardware_mod
    import laudtriton.predict.prune as prune_mod

    reads = []
    real_cpu = hardware_mod.cpu_hardware
    monkeypatch.setattr(hardware_mod, "cpu_hardware",
                        lambda cache_dir=None: reads.append(cache_dir) or real_cpu(cache_dir))
    monkeypatch.setattr(sweep_mod, "MAX_REPS", 2)
    monkeypatch.setattr(sweep_mod, "MIN_REPS", 1)
    made, seen = [], []
    real = prune_mod.make_prune

    def spy(hw, top_k=3, factors=None, cache_dir=None):
        made.append((hw, top_k, cache_dir))
        hook = real(hw, top_k, factors, cache_dir)

        def prune(spec, rate, variant, configs):
            seen.append((rate, variant.name))
            return hook(spec, rate, variant, configs)

        return prune

    monkeypatch.setattr(prune_mod, "make_prune", spy)
    argv = ["sweep", "--rates", "0.5", "--blocks", "layer4.2", "--cache-dir", str(tmp_path),
            "--csv", str(tmp_path / "s.csv"), "--no-progress", "--input-size", "64",
            "--prune-top", "1", "--hardware", "cpu"]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    with open(tmp_path / "s.csv") as fh:
        timed = {r["variant"] for r in csv.DictReader(fh)}
    assert timed >= {"dense", "gather"}
    # the predictor of --cache-dir, its calibration read once
    assert made == [(real_cpu(str(tmp_path)), 1, str(tmp_path))]
    assert reads == [str(tmp_path)]
    assert {v for _, v in seen} == timed and {r for r, _ in seen} == {0.5}
    # it said nothing of that: the summary now says K pruned nothing here
    assert "; --prune-top 1 left nothing out (no variant" in capsys.readouterr().out


def test_sweep_counts_the_configs_pruned(tmp_path, counted, monkeypatch):
    """SweepResult.pruned: the configs the hook left out, over every item timed."""
    import dataclasses

    from laudtriton.ops import get_variant, registry

    two = dataclasses.replace(get_variant("gather"), configs=lambda spec: [{}, {"k": 1}])
    monkeypatch.setitem(registry._REGISTRY, "gather", two)
    res = sweep(tiny(), rates=[0.25, 0.75], cache=TuneCache(tmp_path),
                prune=lambda spec, rate, v, configs: configs[:1],
                **dict(FAST, blocks="layer2.0"))
    assert res.timed == 2 and res.pruned == 2  # gather's second config, at each rate
    assert [per["gather"] for _, per, _ in counted] == [[{}], [{}]]  # the first kept


def test_time_variants_failing_config_scores_inf():
    """A config that raises scores inf (logged), the others are timed, interleaved."""
    import torch

    from laudtriton.ops import fold_block
    from laudtriton.ops.registry import Variant
    from laudtriton.ops.spec import BlockSpec
    from laudtriton.ops.synthetic import synthetic_masks
    from laudtriton.schedule import fastest
    from laudtriton.testing import make_block
    from laudtriton.tune.measure import time_variants

    calls = []

    def run(fb, x, masks, cfg):
        calls.append(cfg["k"])
        if cfg["k"] == "bad":
            raise RuntimeError("does not compile")
        return x

    fake = Variant(name="fake", modes=("spatial",), backends=("cpu",), run=run,
                   cost=lambda spec, rate: None,
                   configs=lambda spec: [{"k": "bad"}, {"k": "a"}, {"k": "b"}])
    block = make_block(16, 4, 1, "spatial", 2)
    spec = BlockSpec.from_block(block, (1, 16, 8, 8))
    x = torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    errors = {}
    t = time_variants(fold_block(block), spec, x, synthetic_masks(spec, 0.5), [fake],
                      warmup=1, reps=3, errors=errors)
    assert math.isinf(t["fake"]['{"k":"bad"}'])
    assert list(errors) == [("fake", '{"k":"bad"}')]  # why, for the caller to tell
    assert str(errors[("fake", '{"k":"bad"}')]) == "does not compile"
    assert all(math.isfinite(t["fake"][k]) for k in ('{"k":"a"}', '{"k":"b"}'))
    assert calls.count("bad") == 1 and calls.count("a") == calls.count("b") == 1 + 1 + 3
    # round robin after the checks: the warm-up round, then timed rounds each starting
    # one config later (timing.interleaved_medians)
    assert calls[3:] == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert fastest(t)[0] == "fake" and fastest({"fake": {"x": math.inf}}) is None


def both_mode_net() -> tuple[LaudResNet, dict]:
    """A mode-both network whose layer4.0 has a 1x1 grid at input 64 (asked rates 0.6 and
    1.0 both realise grid rate 1, at channel rates 0.59 and 1), and sweep's arguments
    for that block."""
    m = LaudResNet((1, 1, 1, 1), mode="both", granularity="4-4-4-2", width_mult=0.25,
                   input_size=None, num_classes=7, channel_granularity=2)
    return m, dict(blocks="layer4.0", input_size=64, model_name="tiny", **FAST)


def test_both_mode_times_each_channel_rate_and_caches_the_nearest(tmp_path, capsys):
    """Mode both: asked rates 0.6 and 1.0 both realise grid rate 1 on a 1x1 grid, with
    channel rates 0.59 and 1. They were one item, timed once on the first's masks, and
    the CSV rows and the cache entry of 1.0 had 0.6's FLOPs ratio and timing."""
    m, kw = both_mode_net()
    res = sweep(m, rates=[0.6, 1.0], cache=TuneCache(tmp_path), **kw)
    assert (res.timed, res.merged) == (2, 0)
    dense = {r["asked_rate"]: r for r in res.rows if r["variant"] == "dense"}
    assert dense[1.0]["rate"] == dense[0.6]["rate"] == 1.0
    assert dense[1.0]["flops_ratio"] == pytest.approx(1.0)
    assert dense[0.6]["flops_ratio"] < 0.7
    back = read_csv(write_csv(res.rows, tmp_path / "s.csv"))  # the plots keep the cached one
    assert {r["asked_rate"]: r["dispatched"] for r in back} == {0.6: False, 1.0: True}
    entries = TuneCache(tmp_path).entries()
    assert entries and all(e.rate_bucket == 1.0 and e.meta["asked_rates"] == [1.0]
                           and e.meta["flops_ratio"] == pytest.approx(1.0) for e in entries)
    # the summary reads the cached item's timings (compile's), not the last row's (0.6's)
    rows = [dict(r, seconds=r["seconds"] * (1 if r["asked_rate"] == 1.0 else 10))
            for r in sorted(res.rows, key=lambda r: r["asked_rate"] == 0.6)
            if r["variant"] == "dense"]
    dense_ms = min(e.seconds for e in entries if e.variant == "dense") * 1e3
    _print_summary(rows)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # ends: chosen, ms, dense ms, x dense
    assert lines[1].split()[-4:] == ["dense", f"{dense_ms:.3f}", f"{dense_ms:.3f}", "1.00"]


def test_on_cuda_a_failing_config_scores_inf_and_a_fault_that_breaks_cuda_is_raised(
        monkeypatch):
    """On CUDA a kernel's error is reported at the next synchronisation: time_variants
    synchronises after each config's untimed first call, so the error is charged to the
    config that caused it. One that leaves CUDA usable (out of resources) scores inf and
    the next config runs; one that breaks it (an illegal address: every later CUDA call
    fails alike) is raised: it scored inf, and every later config then scored inf too
    and was cached as failed (here a stand-in CUDA input and synchronize)."""
    import types

    import torch

    from laudtriton.ops.registry import Cost, Variant
    from laudtriton.tune import measure

    class CudaInput:
        device = torch.device("cuda")

    def run(errors):
        errs = iter(errors)

        def synchronize(device=None):
            e = next(errs)
            if e:
                raise RuntimeError(e)
        monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
        monkeypatch.setattr(measure, "median_time", lambda fn, dev, warmup, reps: 1e-3)
        # stand-ins without tensors: the first output's shape check has nothing to read
        monkeypatch.setattr(measure, "_check_shape", lambda spec, x, out: None)
        v = Variant("stub", ("spatial",), ("cuda",), run=lambda fb, x, masks, cfg: None,
                    cost=lambda spec, rate: Cost(0.0, 0.0, 1),
                    configs=lambda spec: [{"BLOCK": 16}, {"BLOCK": 32}])
        spec = types.SimpleNamespace(short=lambda: "stub block")
        return measure.time_variants(None, spec, CudaInput(), None, [v], warmup=1, reps=1)

    assert run(["out of resource: shared memory, Required: 300000", None]) == {
        "stub": {'{"BLOCK":16}': math.inf, '{"BLOCK":32}': 1e-3}}
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run(["CUDA error: an illegal memory access was encountered", None])


def test_sweep_default_csv_names_every_option_that_changes_its_rows():
    """Two shards, two channel granularities, two dtypes or input sizes on one machine
    wrote one CSV: the second run left only its own rows."""
    from laudtriton.tune.commands import default_csv

    def name(*argv):
        return default_csv(_parser().parse_args(["sweep", *argv]), "cpu")

    assert name() == "sweep_laud_resnet50_spatial_4-4-2-1_b1_cpu.csv"
    assert name("--clustered") == "sweep_laud_resnet50_spatial_4-4-2-1_b1_cpu_clustered.csv"
    variants = [name("--shard", "1/2"), name("--shard", "2/2"),
                name("--mode", "channel", "--channel-granularity", "2"),
                name("--mode", "channel", "--channel-granularity", "4"),
                name("--dtype", "bfloat16"), name("--input-size", "64"), name("--batch", "8"),
                # a mode per stage with channel skipping in some stage
                name("--mode", "channel-channel-layer-layer", "--channel-granularity", "2"),
                name("--mode", "channel-channel-layer-layer", "--channel-granularity", "4")]
    assert len(set(variants) | {name()}) == len(variants) + 1
    assert variants[0] == "sweep_laud_resnet50_spatial_4-4-2-1_b1_shard1of2_cpu.csv"
    # the shard's numbers, not its text: one shard, one file name
    assert name("--shard", " 01/02 ") == variants[0]
    assert name("--shard", "01/1") == name()


@pytest.mark.parametrize("given,text", [(" 4-4-2-1", "4-4-2-1"), ("04-4-2-01", "4-4-2-1"),
                                        ("2 ", "2"), ("4-4-2-1", "4-4-2-1")])
def test_layout_options_are_written_back_as_the_tables_show_them(given, text):
    """bench's CSV and sweep's default file name kept a granularity as typed (' 4-4-2-1':
    'sweep_laud_resnet50_spatial_ 4-4-2-1_b1_cpu.csv')."""
    from laudtriton.tune.commands import default_csv
    from laudtriton.tune.layout_options import check_layout_options

    args = _parser().parse_args(["sweep", "--mode", "both", "--granularity", given,
                                 "--channel-granularity", given])
    check_layout_options(args)
    assert (args.granularity, args.channel_granularity) == (text, text)
    assert default_csv(args, "cpu") == f"sweep_laud_resnet50_both_{text}_c{text}_b1_cpu.csv"


@pytest.mark.parametrize("given, text", [(" layer ", "layer"),
                                         (" spatial - channel - layer - both ",
                                          "spatial-channel-layer-both")])
def test_layout_options_write_a_mode_back_without_its_spaces(given, text):
    """A mode with spaces, which the model takes, is written back as the model reads it:
    the default CSV name held it as typed, and a spaced stage " channel " did not count
    as channel, so the name lost its channel granularity."""
    from laudtriton.tune.commands import default_csv
    from laudtriton.tune.layout_options import check_layout_options

    cg = ["--channel-granularity", "2"] if "channel" in text else []
    args = _parser().parse_args(["sweep", "--mode", given, *cg])
    check_layout_options(args)
    assert args.mode == text
    suffix = "_c2" if cg else ""
    assert default_csv(args, "cpu") == f"sweep_laud_resnet50_{text}_4-4-2-1{suffix}_b1_cpu.csv"


def test_sweep_command_refuses_a_cache_dir_it_cannot_fill(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    args = _parser().parse_args(["sweep", "--cache-dir", str(tmp_path / "f" / "sub"),
                                 "--no-progress"])
    assert args.func(args) == 2
    assert "--cache-dir" in capsys.readouterr().err
    from laudtriton.tune.paths import make_writable_dir

    with pytest.raises(ValueError, match="--cache-dir '/proc/laudtriton' cannot be made or "
                                         "written"):
        make_writable_dir("/proc/laudtriton", "--cache-dir")


def test_sweep_command_refuses_a_cache_dir_from_the_environment_it_cannot_fill(
        tmp_path, capsys, monkeypatch, read_only_folders):
    """The folder of $LAUDTRITON_CACHE_DIR (or the default) was not checked: the whole
    sweep ran, then said "cache NOT saved", with exit code 0."""
    read_only_folders(sweep_mod, "time_variants", "timed")
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path / "ro"))
    args = _parser().parse_args(["sweep", "--blocks", "layer4.2", "--rates", "0.5",
                                 "--input-size", "32", "--csv", str(tmp_path / "s.csv"),
                                 "--no-progress"])
    assert args.func(args) == 2
    assert capsys.readouterr().err == (
        f"laudtriton sweep: error: the cache directory {str(tmp_path / 'ro')!r} cannot be "
        "made or written (Read-only file system); give a writable --cache-dir (or "
        "LAUDTRITON_CACHE_DIR)\n")
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "ro").exists()


@pytest.mark.parametrize("option", ["--batch", "--input-size"])
def test_sweep_command_sizes_past_int64_are_one_line(tmp_path, capsys, option):
    """A size whose tensor overflows int64 ("Storage size calculation overflowed") was a
    traceback; both are bounded before any work."""
    args = _parser().parse_args(["sweep", option, str(2**62), "--blocks", "layer4.2",
                                 "--rates", "0.5", "--cache-dir", str(tmp_path),
                                 "--csv", str(tmp_path / "s.csv"), "--no-progress"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert (f"--batch {2**62} must be in [1, 4096]" in err) if option == "--batch" else (
        "--input-size must be in [32, 4096]" in err)


def test_a_sweep_refused_after_making_its_cache_folder_removes_it(tmp_path, capsys):
    """--blocks is checked inside the sweep, after --cache-dir's folder was made: a
    refused sweep left the empty folders behind."""
    args = _parser().parse_args(["sweep", "--rates", "0.5", "--blocks", "layer9.9",
                                 "--cache-dir", str(tmp_path / "new" / "cache"),
                                 "--no-progress", "--input-size", "64",
                                 "--csv", str(tmp_path / "s.csv")])
    assert args.func(args) == 2
    assert "--blocks: unknown block 'layer9.9'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()  # a folder that existed stays
    args.cache_dir = str(tmp_path / "kept")
    assert args.func(args) == 2 and (tmp_path / "kept").is_dir()


@pytest.mark.parametrize("option,value,says", [
    ("--blocks", "layer4.2,,layer4.1", "--blocks 'layer4.2,,layer4.1' has an empty item; "
     "give names or indices, e.g. 'layer1.0,1'"),
    ("--variants", "gather,", "--variants 'gather,' has an empty item; give a comma list "
     "of variants"),
])
def test_a_sweep_list_with_an_empty_item_is_refused(tmp_path, capsys, option, value, says):
    """'a,,b' ran as 'a,b' (and 'a,' as 'a'), where a malformed --rates is refused."""
    argv = ["sweep", "--rates", "0.5", "--blocks", "layer4.2", "--cache-dir", str(tmp_path),
            "--no-progress", "--input-size", "64", "--csv", str(tmp_path / "s.csv")]
    args = _parser().parse_args(argv + [option, value])
    assert args.func(args) == 2
    assert capsys.readouterr().err == f"laudtriton sweep: error: {says}\n"
    assert not (tmp_path / "s.csv").exists()


def test_a_cached_item_gets_the_input_size_of_the_sweep_that_finds_it(tmp_path, counted):
    """Entries written before sweeps recorded the input size kept none when a later sweep
    found them cached, and ``plot --from cache`` then drew them with the 224 ones."""
    import json

    kw = dict(FAST, blocks="layer4.0")
    sweep(tiny(), rates=[0.5], cache=TuneCache(tmp_path), **kw)
    cache = TuneCache(tmp_path)
    raw = json.loads(cache.path.read_text())
    for e in raw["entries"].values():
        e["meta"].pop("input_size")
    cache.path.write_text(json.dumps(raw))
    assert all("input_size" not in e.meta for e in TuneCache(tmp_path).entries())
    counted.clear()
    r = sweep(tiny(), rates=[0.5], cache=TuneCache(tmp_path), **kw)
    assert r.timed == 0 and counted == []
    assert {e.meta["input_size"] for e in TuneCache(tmp_path).entries()} == {64}
    with pytest.raises(ValueError, match="input_size 0 is not a positive int"):
        cache.annotate(next(iter(cache.entries())).spec, 0.5, {"input_size": 0})
    # an input size recorded stays: another size's sweep that finds the item cached (a
    # block shape models swept at both sizes share) relabelled it, and `plot --from
    # cache` then drew the first model at a size it was never swept at
    spec = next(iter(cache.entries())).spec
    assert cache.annotate(spec, 0.5, {"input_size": 60, "models": {"other": ["b"]}})
    assert {e.meta["input_size"] for e in TuneCache(tmp_path).entries()} == {64}
    assert all("other" in e.meta["models"] for e in TuneCache(tmp_path).entries()
               if e.spec == spec)


def test_both_mode_a_resumed_sweep_does_not_reuse_another_channel_rates_timing(tmp_path):
    """Mode both keys the cache by the grid's rate: a second sweep at 0.6, whose item
    realises grid rate 1 at channel rate 0.59, found the first sweep's entry (1.0, at
    channel rate 1) and wrote its timings into CSV rows with 0.6's FLOPs ratio. Now the
    item is timed for the CSV and the entry stays the first sweep's."""
    m, kw = both_mode_net()
    first = sweep(m, rates=[1.0], cache=TuneCache(tmp_path), **kw)
    assert first.timed == 1
    entries = TuneCache(tmp_path).entries()
    assert {e.meta["channel_rate"] for e in entries} == {1.0}
    again = sweep(m, rates=[1.0], cache=TuneCache(tmp_path), **kw)
    assert (again.timed, again.cached) == (0, 1)  # the same item: read back
    other = sweep(m, rates=[0.6], cache=TuneCache(tmp_path), **kw)
    assert (other.timed, other.cached) == (1, 0)
    assert {r["dispatched"] for r in other.rows} == {False}
    assert all(r["flops_ratio"] < 0.7 for r in other.rows)
    after = TuneCache(tmp_path).entries()
    assert [(e.variant, e.config, e.seconds, e.meta["asked_rates"]) for e in after] == [
        (e.variant, e.config, e.seconds, [1.0]) for e in entries]


def test_both_mode_a_resumed_sweep_with_more_rates_reads_the_cached_item(tmp_path):
    """A second sweep with one more asked rate at the same grid rate (0.6, then 0.6 and
    1.0): the nearest channel rate (1.0's) was made the cache's item, whose entry is
    0.6's, so both items were timed (0.6's again) and neither was marked dispatched. Now
    0.6's item stays the cache's: read back and dispatched; 1.0's is timed for the CSV."""
    m, kw = both_mode_net()
    first = sweep(m, rates=[0.6], cache=TuneCache(tmp_path), **kw)
    assert first.timed == 1
    entries = TuneCache(tmp_path).entries()
    again = sweep(m, rates=[0.6, 1.0], cache=TuneCache(tmp_path), **kw)
    assert (again.timed, again.cached) == (1, 1)
    assert {r["asked_rate"]: r["dispatched"] for r in again.rows} == {0.6: True, 1.0: False}
    after = TuneCache(tmp_path).entries()
    assert [(e.variant, e.config, e.seconds, e.meta["channel_rate"]) for e in after] == [
        (e.variant, e.config, e.seconds, e.meta["channel_rate"]) for e in entries]


def test_an_interrupted_sweep_writes_the_csv_of_what_it_timed(ctrl_c_at_second_item,
                                                               tmp_path, capsys):
    """Ctrl-C (or SIGTERM in the command) wrote no CSV, and with --clustered everything
    timed was lost; an older CSV at the path passed for this run's."""
    calls = ctrl_c_at_second_item
    out = tmp_path / "s.csv"
    out.write_text("an older run's CSV\n")
    for clustered in (False, True):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            sweep(tiny(), rates=[0.5, 1.0], blocks="layer4.0", cache=TuneCache(tmp_path / "c"),
                  csv_path=out, clustered=clustered, **FAST)
        rows = read_csv(out)
        assert rows and {r["asked_rate"] for r in rows} == {0.5}  # the first item's
        err = capsys.readouterr().err
        assert f"sweep: interrupted after 1 of 2 item(s): its {len(rows)} rows so far are " \
               f"in the CSV {out}; the items timed are " in err
        assert ("clustered masks are never cached" in err) == clustered
        assert ("a re-run reads (it times the rest)" in err) != clustered


def test_sweep_refuses_a_csv_path_that_is_the_cache_file(tmp_path):
    """--csv at the cache's own file reported success and left a corrupt cache; so did
    one at another device's cache file or a calibration file in the same folder."""
    cache = TuneCache(tmp_path)
    for path in (cache.path, cache.lock_path, tmp_path / "calibration_x.v1.json",
                 tmp_path / "Other_CPU_2t.v1.json"):
        with pytest.raises(ValueError, match="is a file of the autotune cache folder"):
            sweep(tiny(), rates=[0.5], blocks="layer4.0", cache=cache, csv_path=path, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_sweep_checks_its_csv_path_and_device_before_timing(tmp_path, counted):
    """sweep() ran every item before the CSV path failed (IsADirectoryError), and an
    unknown device raised torch's RuntimeError."""
    with pytest.raises(ValueError, match="is a directory"):
        sweep(tiny(), rates=[0.5], cache=TuneCache(tmp_path), csv_path=tmp_path, **FAST)
    with pytest.raises(ValueError, match="--device 'tpu'"):
        sweep(tiny(), rates=[0.5], device="tpu", cache=TuneCache(tmp_path), **FAST)
    assert counted == []


def test_an_empty_shard_says_so(tmp_path, capsys):
    """A shard past the item count ran silently and printed a cache file it never made."""
    argv = ["sweep", "--model", "laud_resnet50", "--blocks", "layer4.1", "--rates", "0.5",
            "--shard", "2/2", "--cache-dir", str(tmp_path / "c"), "--csv",
            str(tmp_path / "s.csv")]
    from laudtriton.cli import main

    assert main(argv) == 0
    out = capsys.readouterr()
    assert "sweep: shard 2/2 holds none of the 1 (spec, rate) item(s)" in out.err
    assert "cache: nothing to write (no item)" in out.out
    assert not list((tmp_path / "c").glob("*.json"))


def test_sigterm_interrupts_the_sweep_command_as_ctrl_c():
    """A killed sweep (SIGTERM) died without a word or a CSV; in the command it raises
    KeyboardInterrupt, which ``sweep`` answers with the CSV so far, and the handler
    before is put back after."""
    import signal

    from laudtriton.cli import sigterm_interrupts

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000_000):  # the handler runs between two bytecodes, at once
            pass
    assert signal.getsignal(signal.SIGTERM) is before


def test_cache_ls_all_lists_each_stale_version_of_a_timing_apart(tmp_path, capsys):
    """Stale timings of one block, rate and variant under two torch versions were one
    row ("2 configs", the slower unseen), and the header's count differed from what
    `cache clear` removed."""
    import json as json_mod

    spec = BlockSpec(32, 8, 32, 1, False, (9, 9), "spatial", 3)
    c = TuneCache(tmp_path)
    c.record(spec, 0.5, {"dense": {"{}": 2e-3}})
    data = json_mod.loads(c.path.read_text())
    (key, entry), = data["entries"].items()
    for torch_version, seconds in (("1.0.0", 99.0), ("2.0.0", 3.5e-5)):
        e = json_mod.loads(json_mod.dumps(entry))
        e["versions"]["torch"], e["timings"]["{}"] = torch_version, seconds
        data["entries"][key.replace("torch=", f"torch={torch_version}-was-")] = e
    c.path.write_text(json_mod.dumps(data))
    p = _parser()
    args = p.parse_args(["cache", "ls", "--all", "--cache-dir", str(tmp_path)])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("3 entries, 3 timings")
    stale = [ln for ln in lines if "(stale: " in ln]
    assert len(stale) == 2  # one config each: the configs column before the best ms
    assert all(ln.split("  (stale")[0].split()[-2] == "1" for ln in stale), stale
    assert any("99000.000" in ln and "torch 1.0.0" in ln for ln in stale)
    assert any("0.035" in ln and "torch 2.0.0" in ln for ln in stale)
    args = p.parse_args(["cache", "clear", "--cache-dir", str(tmp_path)])
    assert args.func(args) == 0 and "removed 3 entries" in capsys.readouterr().out


def test_force_with_a_clustered_sweep_says_it_does_nothing(tmp_path, capsys, monkeypatch):
    """--force re-times cached items; a clustered sweep reads no cache, and the flag was
    accepted in silence."""
    monkeypatch.setattr(sweep_mod, "MAX_REPS", 2)
    monkeypatch.setattr(sweep_mod, "MIN_REPS", 1)
    monkeypatch.chdir(tmp_path)
    args = _parser().parse_args(["sweep", "--rates", "0.5", "--blocks", "layer4.2",
                                 "--cache-dir", str(tmp_path / "c"), "--no-progress",
                                 "--input-size", "64", "--clustered", "--force"])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == ("note: --force does nothing here: a --clustered sweep "
                                   "reads no cached timing and times every item anyway")


def test_a_csv_write_cut_short_leaves_the_file_as_it_was(tmp_path):
    """write_csv writes beside the file and moves it over (``atomic.atomic_text``):
    an interruption in the middle leaves the old CSV whole and no temp file."""
    path = write_csv([{"model": "m", "block": "b", "rate": 0.5}], tmp_path / "s.csv")
    before = path.read_bytes()

    class Cut(dict):
        def get(self, key, default=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_csv([{"model": "new"}, Cut()], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]


def test_config_keys_do_not_depend_on_the_order_of_a_configs_keys():
    from laudtriton.tune.measure import config_key

    assert config_key({"BM": 32, "BN": 64}) == config_key({"BN": 64, "BM": 32})
    assert config_key({"conv1": {"b": 1, "a": 2}}) == config_key({"conv1": {"a": 2, "b": 1}})


def test_sweep_times_rate_0_and_puts_dense_first(tmp_path):
    """Rate 0 is a rate like any in [0, 1] (every cell skipped); each block's rows start
    with dense, the baseline the others are read against (then the names in order)."""
    model = LaudResNet((1, 1, 1, 1), mode="layer", width_mult=0.25, input_size=64)
    res = sweep(model, rates=[0.0, 1.0], blocks="layer2.0", batch=2,
                cache=TuneCache(tmp_path), **FAST)
    rates = sorted({round(float(r["rate"]), 6) for r in res.rows})
    assert rates == [0.0, 1.0]
    for rate in rates:
        names = [r["variant"] for r in res.rows if round(float(r["rate"]), 6) == rate]
        assert names == ["dense", "compact"], names


def test_model_blocks_leaves_the_model_in_the_mode_it_found():
    from laudtriton.tune.sweep_blocks import model_blocks

    for training in (True, False):
        model = tiny().train(training)
        model_blocks(model, 64)
        assert model.training is training


def test_reps_time_about_half_a_second_within_10_and_40():
    from laudtriton.tune.sweep import _reps

    assert [_reps(t) for t in (2.0, 0.5, 0.1, 0.02, 0.001, 0.0, math.inf)] == [
        10, 10, 10, 25, 40, 10, 10]


@pytest.mark.parametrize("text, match", [
    ("model,block,spec,rate\nm,b,s,0.5\n",
     r"not a sweep CSV; missing columns \['seconds', 'variant'\]$"),
    (b"model,block\n\xff\xfe\x00bad\n", r"not a readable CSV \("),
    ('model,"block\n' + "x" * 200_000 + "\n", r"not a readable CSV \(field larger than"),
], ids=["missing-columns", "not-utf8", "oversized-field"])
def test_read_csv_names_a_file_that_is_no_sweep_csv(tmp_path, text, match):
    path = tmp_path / "r.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: {match}"):
        read_csv(path)


def test_interleaved_medians_wants_one_setup_per_function():
    from laudtriton.tune.timing import interleaved_medians

    calls = []
    with pytest.raises(ValueError, match=r"^setup has 1 entries for 2 functions$"):
        interleaved_medians([lambda: calls.append(0), lambda: calls.append(1)], warmup=0,
                            reps=1, setup=[None])
    assert calls == []  # refused before any call
