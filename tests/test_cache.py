"""The persistent autotune cache: round trip, concurrency, corruption, versions, merge."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import re

import pytest

from laudtriton.ops import BlockSpec, all_variants
from laudtriton.tune import atomic as atomic_mod
from laudtriton.tune import cache as cache_mod
from laudtriton.tune import cache_file as cache_file_mod
from laudtriton.tune import cache_merge as cache_merge_mod
from laudtriton.tune import cache_store as cache_store_mod
from laudtriton.tune.cache import TuneCache
from laudtriton.tune.cache_file import SCHEMA_VERSION
from laudtriton.tune.cache_merge import NotACacheError, merge_files
from laudtriton.tune.keys import device_fingerprint, rate_bucket

SPEC = BlockSpec(48, 12, 48, 1, False, (13, 13), "spatial", 3)
SPEC2 = SPEC.with_(stride=2, downsample=True, out_channels=96, in_hw=(15, 15))


def _names() -> list[str]:
    """Two registered variant names (dense first), whatever the registry holds."""
    names = [v.name for v in all_variants()]
    other = next(n for n in names if n != "dense")
    return ["dense", other]


def _timings(scale: float = 1.0) -> dict[str, dict[str, float]]:
    a, b = _names()
    return {a: {"{}": 1e-3 * scale}, b: {'{"BLOCK":16}': 5e-4 * scale, '{"BLOCK":32}': math.inf}}


def test_round_trip_across_instances(tmp_path):
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, _timings(), meta={"models": {"m": ["layer1.1"]}})
    c.record(SPEC2, 0.3, _timings(2.0))
    fresh = TuneCache(tmp_path)
    assert fresh.path == c.path and fresh.path.is_file()
    assert fresh.lookup(SPEC, 0.5) == _timings()
    assert fresh.lookup(SPEC2, 0.3) == _timings(2.0)
    assert fresh.lookup(SPEC, 0.3) is None
    assert fresh.lookup(SPEC.with_(batch=2), 0.5) is None
    assert fresh.lookup(SPEC.with_(dtype="float16"), 0.5) is None
    assert fresh.lookup(SPEC.with_(granularity=1), 0.5) is None
    entries = fresh.entries()
    assert len(entries) == 6
    e = next(e for e in entries if e.spec == SPEC and e.variant == "dense")
    assert e.meta["models"] == {"m": ["layer1.1"]} and not e.meta["stale"]
    assert e.rate_bucket == 0.5 and e.seconds == 1e-3


def test_record_merges_configs_and_meta(tmp_path):
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.4, {"dense": {"{}": 2e-3}}, meta={"models": {"m": ["a"]}})
    name = _names()[1]
    c.record(SPEC, 0.4, {name: {'{"BLOCK":16}': 1e-3}}, meta={"models": {"m": ["b"]}})
    c.record(SPEC, 0.4, {name: {'{"BLOCK":64}': 3e-3}, "dense": {"{}": 1.5e-3}},
             meta={"models": {"m": ["b"]}})
    got = TuneCache(tmp_path).lookup(SPEC, 0.4)
    assert got == {"dense": {"{}": 1.5e-3}, name: {'{"BLOCK":16}': 1e-3, '{"BLOCK":64}': 3e-3}}
    metas = {e.variant: e.meta["models"] for e in TuneCache(tmp_path).entries()}
    assert metas["dense"] == {"m": ["a", "b"]}


@pytest.mark.parametrize("rate,step,want", [
    (0.47, 0.1, 0.5), (0.04, 0.1, 0.0), (0.96, 0.1, 1.0), (0.3, 0.1, 0.3),
    (0.26, 0.05, 0.25), (1.0, 0.25, 1.0), (0.0, 0.1, 0.0), (0.71, 0.2, 0.8),
    # ties go to the lower bucket, as DispatchTable.choose (half-even rounding sent 0.25
    # down and 0.75 up, 0.35 down and 0.55 up)
    (0.25, 0.1, 0.2), (0.75, 0.1, 0.7), (0.35, 0.1, 0.3), (0.55, 0.1, 0.5), (0.65, 0.1, 0.6),
    (0.05, 0.1, 0.0), (0.95, 0.1, 0.9), (0.375, 0.25, 0.25),
])
def test_rate_bucket(rate, step, want):
    assert rate_bucket(rate, step) == want


@pytest.mark.parametrize("rate,step", [(-0.1, 0.1), (1.5, 0.1), (0.5, 0.0), (0.5, -1), ("x", 0.1),
                                       (0.5, 1.5)])  # a step past 1: one bucket, 0
def test_rate_bucket_rejects(rate, step):
    with pytest.raises(ValueError, match="rate|step"):
        rate_bucket(rate, step)


def test_device_fingerprint(monkeypatch, tmp_path):
    import torch

    from laudtriton.tune import keys

    fp = device_fingerprint("cpu")
    assert fp == f"{keys.cpu_model()} {keys.cpu_isa()} {torch.get_num_threads()}t"
    with pytest.raises(ValueError, match="device 'meta'"):
        device_fingerprint("meta")
    # one model name (a VM's generic brand) with and without AVX-512: two machine kinds
    isa = "avx2" if keys.cpu_isa() != "avx2" else "avx512"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa.upper())
    assert device_fingerprint("cpu") != fp and f" {isa} " in device_fingerprint("cpu")
    other = TuneCache(tmp_path)
    other.record(SPEC, 0.5, {"dense": {"{}": 2e-3}})
    assert other.lookup(SPEC, 0.5) == {"dense": {"{}": 2e-3}}
    monkeypatch.undo()
    assert TuneCache(tmp_path).lookup(SPEC, 0.5) is None  # the other ISA's timings


def _writer(path: str, worker: int, n: int) -> None:
    c = TuneCache(path)
    for i in range(n):
        c.record(SPEC.with_(batch=1 + worker), round(i / n, 6), {"dense": {"{}": i + 1.0}})


def test_two_processes_lose_no_entry(tmp_path):
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    n = 12
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, n)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    c = TuneCache(tmp_path)
    for w in range(2):
        for i in range(n):
            assert c.lookup(SPEC.with_(batch=1 + w), round(i / n, 6)) == {"dense": {"{}": i + 1.0}}
    assert len(c.entries()) == 2 * n
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("content", ["{not json", '{"schema": 1}', "[]", "",
                                     b"\xff\xfe{not utf-8",
                                     pytest.param("[" * 100000 + "]" * 100000,
                                                  id="nested-too-deep")])
def test_corrupt_file_warns_and_is_moved_aside(tmp_path, caplog, content):
    """A corrupt file is ignored, and the next write moves it aside (its bytes kept)
    before writing a new one: it wrote over it before, losing every timing a git
    conflict line or a truncated write had left readable by hand."""
    c = TuneCache(tmp_path)
    c.dir.mkdir(parents=True, exist_ok=True)
    raw = content if isinstance(content, bytes) else content.encode()
    c.path.write_bytes(raw)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert TuneCache(tmp_path).lookup(SPEC, 0.5) is None
        assert "corrupt" in caplog.text and str(c.path) in caplog.text
        assert "the next write moves it aside" in caplog.text
        c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    aside = list(tmp_path.glob(c.path.name + ".unusable-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == raw
    assert f"moved it to {aside[0].name}" in caplog.text
    data = json.loads(c.path.read_text())
    assert data["schema"] == SCHEMA_VERSION and len(data["entries"]) == 1
    assert TuneCache(tmp_path).lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}


def test_a_second_unusable_file_in_the_same_second_is_moved_aside_under_another_name(
        tmp_path, monkeypatch):
    """Two unusable files moved aside within one second (the clock is stopped here) both
    survive: the second takes a "-1" suffix, the third "-2", none is written over."""
    import time
    import types

    stopped = time.struct_time((2026, 1, 2, 3, 4, 5, 4, 2, 0))
    clock = {n: getattr(time, n) for n in ("time", "monotonic", "sleep", "strftime")}
    monkeypatch.setattr(atomic_mod, "time",
                        types.SimpleNamespace(**clock, gmtime=lambda: stopped))
    c = TuneCache(tmp_path)
    c.dir.mkdir(parents=True, exist_ok=True)
    stem = c.path.name + ".unusable-20260102T030405"
    for i, suffix in enumerate(("", "-1", "-2")):
        c.path.write_text(f"{{broken {i}")
        TuneCache(tmp_path).record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
        assert (tmp_path / (stem + suffix)).read_text() == f"{{broken {i}"
    assert sorted(p.name for p in tmp_path.glob("*.unusable-*")) == [
        stem, stem + "-1", stem + "-2"]
    assert TuneCache(tmp_path).lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}


def test_other_schema_file_is_moved_aside_not_written_over(tmp_path):
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    other = json.dumps({**json.loads(c.path.read_text()), "schema": SCHEMA_VERSION + 1})
    c.path.write_text(other)
    TuneCache(tmp_path).record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
    (aside,) = tmp_path.glob(c.path.name + ".unusable-*")
    assert aside.read_text() == other
    assert TuneCache(tmp_path).lookup(SPEC2, 0.5) == {"dense": {"{}": 2e-3}}



def test_a_schema_of_true_is_another_schema(tmp_path, caplog):
    """``"schema": true`` (True == 1 in Python) passed for schema 1: its entries were
    read, a write kept the file, and merge wrote into it. It is another schema now."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    other = json.dumps({**json.loads(c.path.read_text()), "schema": True})
    c.path.write_text(other)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert TuneCache(tmp_path).lookup(SPEC, 0.5) is None
    assert "has schema True, this laudtriton uses 1" in caplog.text
    shard = TuneCache(tmp_path / "shard")
    shard.record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
    with pytest.raises(NotACacheError, match="is a cache file of schema True"):
        merge_files([shard.path], c.path)
    TuneCache(tmp_path).record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
    (aside,) = tmp_path.glob(c.path.name + ".unusable-*")
    assert aside.read_text() == other

def test_entries_no_reader_can_use_survive_a_write(tmp_path, caplog):
    """An entry this version cannot parse (e.g. written by a newer laudtriton whose spec
    has another field) is hidden, and kept as it is when the file is rewritten; a record
    of the same key replaces it. Before, the next write dropped it."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    data = json.loads(c.path.read_text())
    (key, entry), = data["entries"].items()
    odd = {**entry, "spec": {**entry["spec"], "a_field_of_a_later_version": 1}}
    data["entries"]["later-version-key"] = odd
    c.path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert len(TuneCache(tmp_path).entries()) == 1
    assert "1 malformed entries ignored (the first: 'later-version-key'" in caplog.text
    TuneCache(tmp_path).record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
    after = json.loads(c.path.read_text())["entries"]
    assert after["later-version-key"] == odd and len(after) == 3
    after[key] = {"spec": "broken"}  # a key of ours held by an unusable entry
    c.path.write_text(json.dumps({**data, "entries": after}))
    TuneCache(tmp_path).record(SPEC, 0.5, {"dense": {"{}": 3e-3}})
    assert TuneCache(tmp_path).lookup(SPEC, 0.5) == {"dense": {"{}": 3e-3}}


def test_record_refuses_meta_json_cannot_hold_and_stays_usable(tmp_path):
    """A meta value JSON cannot encode is a ValueError naming it, before anything is
    kept: it was a TypeError from the write, after the entry had entered memory, and
    every later record of that cache raised it again and saved nothing."""
    from pathlib import Path

    c = TuneCache(tmp_path)
    with pytest.raises(ValueError, match="meta .* cannot be written as JSON"):
        c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}}, meta={"where": Path("/x")})
    c.record(SPEC2, 0.5, {"dense": {"{}": 2e-3}}, meta={"input_size": 224})
    assert c.saved and TuneCache(tmp_path).lookup(SPEC2, 0.5) == {"dense": {"{}": 2e-3}}
    assert TuneCache(tmp_path).lookup(SPEC, 0.5) is None


def test_record_refuses_meta_with_keys_the_sorted_write_cannot_order(tmp_path):
    """Meta keys of mixed types pass a plain json.dumps but not the file's sorted write:
    the entry entered memory, the write raised a TypeError, and every later record of
    that cache raised it again and saved nothing."""
    c = TuneCache(tmp_path)
    with pytest.raises(ValueError, match="meta .* cannot be written as JSON"):
        c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}}, meta={"flops_ratio": 0.5, 7: "x"})
    c.record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
    assert c.saved and TuneCache(tmp_path).lookup(SPEC2, 0.5) == {"dense": {"{}": 2e-3}}


def test_a_symlinked_cache_file_keeps_feeding_the_file_it_points_to(tmp_path):
    """The atomic write replaced the link itself by a private copy (the shared file got
    no more records), and the lock was taken beside the link, not beside the file."""
    shared, mine = tmp_path / "shared", tmp_path / "mine"
    shared.mkdir()
    mine.mkdir()
    TuneCache(shared).record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    target = TuneCache(shared).path
    link = mine / target.name
    link.symlink_to(target)
    c = TuneCache(mine)
    assert c.lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}
    c.record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
    assert c.saved and link.is_symlink()
    assert TuneCache(shared).lookup(SPEC2, 0.5) == {"dense": {"{}": 2e-3}}
    assert c.lock_path == TuneCache(shared).lock_path == target.with_name(target.name + ".lock")


def test_a_symlinked_cache_file_is_cleared_and_moved_aside_at_its_target(tmp_path):
    """An unusable shared file was renamed by its link (the link moved aside, a private
    file written in its place, the shared file left corrupt), and ``clear`` removed the
    link only, while it reported the shared file's entries as removed."""
    shared, mine = tmp_path / "shared", tmp_path / "mine"
    shared.mkdir()
    mine.mkdir()
    target = TuneCache(shared).path
    target.write_text('{"schema": 1,')
    link = mine / target.name
    link.symlink_to(target)
    c = TuneCache(mine)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    assert c.saved and link.is_symlink()
    assert [p.name for p in mine.iterdir()] == [link.name]  # nothing moved aside here
    assert [p.name for p in shared.glob("*.unusable-*")] != []
    assert TuneCache(shared).lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}
    assert TuneCache(mine).clear() == 1
    assert link.is_symlink() and not target.exists()
    assert TuneCache(shared).entries() == []


def test_a_dangling_link_makes_no_folder_where_it_points(tmp_path, caplog):
    """A cache file linked into a folder that is not there: the lock made that folder
    (and the file in it), wherever the link pointed, and the record said it was saved."""
    mine = tmp_path / "mine"
    mine.mkdir()
    nowhere = tmp_path / "gone" / "deeper" / "x.json"
    link = mine / TuneCache(mine).path.name
    link.symlink_to(nowhere)
    c = TuneCache(mine)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    assert not c.saved and "link into the missing folder" in c.unsaved_why
    assert "symbolic link into the missing folder" in caplog.text
    assert not (tmp_path / "gone").exists()
    assert c.lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}  # kept in memory
    assert c.clear() == 1 and not (tmp_path / "gone").exists()


def test_a_sweep_into_a_dangling_cache_link_is_refused_before_timing(tmp_path, capsys):
    """The cache kept the timings in memory only: the sweep timed everything, then said
    "cache NOT saved", with exit code 0."""
    import argparse

    from laudtriton.tune.commands import add_sweep_parser

    mine = tmp_path / "mine"
    mine.mkdir()
    link = mine / TuneCache(mine).path.name
    link.symlink_to(tmp_path / "gone" / "x.json")
    p = argparse.ArgumentParser()
    add_sweep_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["sweep", "--cache-dir", str(mine), "--blocks", "layer4.2",
                         "--rates", "0.5", "--input-size", "32", "--csv",
                         str(tmp_path / "s.csv"), "--no-progress"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert f"the cache file {str(link)!r} is a link into the missing folder" in err
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "gone").exists()


def test_an_integer_time_too_large_for_a_float_is_malformed_not_fatal(tmp_path, caplog):
    """JSON holds integers of any size: one of 401 digits passed as a valid time, then
    lookup and entries raised OverflowError (``cache ls``, compile's cached rule), and
    record(10**400) raised it instead of its ValueError."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    data = json.loads(c.path.read_text())
    (entry,) = data["entries"].values()
    entry["timings"]["{}"] = 10 ** 400
    c.path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        fresh = TuneCache(tmp_path)
        assert fresh.lookup(SPEC, 0.5) is None and fresh.entries() == []
    assert "1 malformed entries ignored" in caplog.text
    with pytest.raises(ValueError, match="a time is a number of seconds > 0"):
        fresh.record(SPEC2, 0.5, {"dense": {"{}": 10 ** 400}})


def test_a_cache_file_with_a_byte_order_mark_is_read(tmp_path):
    """An editor's UTF-8 BOM made the file 'corrupt': its timings were ignored and the
    next write moved the whole file aside."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    c.path.write_bytes(b"\xef\xbb\xbf" + c.path.read_bytes())
    fresh = TuneCache(tmp_path)
    assert fresh.lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}
    fresh.record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
    assert sorted(p.name for p in tmp_path.iterdir() if "unusable" in p.name) == []
    assert TuneCache(tmp_path).lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}


def test_a_write_removes_temp_files_a_killed_writer_left(tmp_path):
    """A process killed mid-write leaves the file whole and its temp file for good (an
    untracked file in a checkout's autotune_cache/); the next write removes those older
    than ``ORPHAN_AGE``, and leaves a fresh one (a write under way elsewhere)."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    old, fresh = (tmp_path / f"{c.path.name}.laudtriton-{tag}.tmp"
                  for tag in ("abc12345", "def45678"))
    old.write_text("{")
    fresh.write_text("{")
    past = os.stat(old).st_mtime - atomic_mod.ORPHAN_AGE - 5
    os.utime(old, (past, past))
    c.record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
    assert c.saved and not old.exists() and fresh.exists()


def test_annotate_never_writes_back_timings_it_read(tmp_path):
    """annotate adds names to the entry on disk at its write, not the whole entry as it
    read it: another process's newer timing of that entry in between is kept."""
    a = TuneCache(tmp_path)
    a.record(SPEC, 0.5, {"dense": {"{}": 9e-3}})
    saved = a._save
    a._save = lambda: None  # A's write comes late
    assert a.annotate(SPEC, 0.5, {"models": {"m": ["layer1.0"]}, "asked_rates": [0.5]})
    assert not a.saved and a.entries()[0].meta["models"] == {"m": ["layer1.0"]}
    TuneCache(tmp_path).record(SPEC, 0.5, {"dense": {"{}": 1e-3}})  # B re-times it
    a._save = saved
    a._save()
    assert a.saved
    (e,) = TuneCache(tmp_path).entries()
    assert e.seconds == 1e-3 and e.meta["models"] == {"m": ["layer1.0"]}


def test_annotate_leaves_an_entry_no_reader_can_use_as_it_is(tmp_path):
    """An entry that another writer made malformed between annotate and its write (here:
    a negative time) is kept on disk as it is: the names are not merged into an
    entry no reader can use (whose meta may not even be a dict)."""
    a = TuneCache(tmp_path)
    a.record(SPEC, 0.5, {"dense": {"{}": 9e-3}})
    saved = a._save
    a._save = lambda: None  # A's write comes late
    assert a.annotate(SPEC, 0.5, {"models": {"m": ["layer1.0"]}, "asked_rates": [0.5]})
    data = json.loads(a.path.read_text())
    (key,) = data["entries"]
    data["entries"][key]["timings"] = {"{}": -1.0}  # another writer's malformed entry
    bad = data["entries"][key]
    a.path.write_text(json.dumps(data))
    a._save = saved
    a._save()
    assert json.loads(a.path.read_text())["entries"] == {key: bad}


@pytest.mark.parametrize("meta, match", [
    (["models"], "annotate: meta must be a dict, got list"),
    ({"input_size": 0}, "annotate: meta's input_size 0 is not a positive int"),
    ({"input_size": True}, "annotate: meta's input_size True is not a positive int"),
    ({"models": "m"}, r"annotate: spec .* or meta \{'models': 'm'\} is malformed"),
    ({"models": {"m": "layer1.0"}}, r"meta \{'models': \{'m': 'layer1.0'\}\} is malformed"),
    ({"asked_rates": [1.5]}, r"meta \{'asked_rates': \[1.5\]\} is malformed \('models' "
                             r"\{model: \[block names\]\}, 'asked_rates' rates in \[0, 1\]\)"),
])
def test_annotate_refuses_malformed_meta_and_changes_nothing(tmp_path, meta, match):
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    before = c.path.read_bytes()
    with pytest.raises(ValueError, match=match):
        c.annotate(SPEC, 0.5, meta)
    assert c.path.read_bytes() == before and c.entry_meta(SPEC, 0.5) == {}


def test_annotate_names_a_record_not_yet_written_in_that_record(tmp_path):
    """A record still in memory (its write failed or is late) takes annotate's names
    itself: they are written with its timings, not kept as a note beside it."""
    c = TuneCache(tmp_path)
    saved = c._save
    c._save = lambda: None  # the record's write has not happened
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}}, meta={"models": {"a": ["layer1.0"]}})
    assert not c.saved and not c.path.exists()
    assert c.annotate(SPEC, 0.5, {"models": {"b": ["layer2.1"]}, "asked_rates": [0.5],
                                  "input_size": 64})
    assert c._notes == {}
    (mine,) = c._memory.values()
    assert mine["meta"]["models"] == {"a": ["layer1.0"], "b": ["layer2.1"]}
    c._save = saved
    c._save()
    assert c.saved
    (e,) = TuneCache(tmp_path).entries()
    assert e.seconds == 1e-3 and e.meta["models"] == {"a": ["layer1.0"], "b": ["layer2.1"]}
    assert e.meta["asked_rates"] == [0.5] and e.meta["input_size"] == 64


@pytest.mark.parametrize("value, on", [("0", False), ("false", False), (" OFF ", False),
                                       ("no", False), ("1", True), ("", True), ("yes", True),
                                       ("True", True)])
def test_laudtriton_cache_env_spellings(monkeypatch, tmp_path, value, on):
    monkeypatch.setenv("LAUDTRITON_CACHE", value)
    assert TuneCache(tmp_path).enabled is on


def test_laudtriton_cache_env_unknown_value_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("LAUDTRITON_CACHE", "disabled")
    with pytest.raises(ValueError, match="LAUDTRITON_CACHE='disabled': accepted 0"):
        TuneCache(tmp_path)


class HeldLock:
    """A cache lock another process holds past LOCK_TIMEOUT."""

    def __enter__(self):
        raise cache_file_mod.LockTimeout("held")

    def __exit__(self, *exc):
        return False


def hold_lock(monkeypatch, cache: TuneCache) -> None:
    """Make ``cache``'s lock time out, as when another process holds it (monkeypatch.undo
    releases it)."""
    monkeypatch.setattr(cache, "_lock", HeldLock)


def test_lock_timeout_is_reported_as_such(tmp_path, caplog, monkeypatch):
    """Another process holding the lock past LOCK_TIMEOUT: the records stay in memory and
    the warning says so (it said the directory was not writable), and a later record
    writes them."""
    c = TuneCache(tmp_path)
    hold_lock(monkeypatch, c)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    assert "another process held its lock" in caplog.text and "not writable" not in caplog.text
    assert not c.saved and "held the lock" in c.unsaved_why
    monkeypatch.undo()
    c.record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
    assert c.saved and TuneCache(tmp_path).lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}


def test_clear_that_cannot_delete_is_a_value_error(tmp_path, monkeypatch):
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})

    def refuse(*a, **k):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(cache_store_mod, "file_lock", refuse)
    with pytest.raises(ValueError, match="cannot clear the autotune cache in .*nothing deleted"):
        c.clear()
    assert TuneCache(tmp_path).lookup(SPEC, 0.5) is not None



def test_clear_that_cannot_take_the_lock_names_the_lock_file(tmp_path):
    """A lock path that cannot be opened (here a directory) made clear say "cannot clear
    the autotune cache in <dir> (Is a directory)", naming the folder, which is one, and
    not the lock file that is the trouble."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    c.lock_path.unlink(missing_ok=True)
    c.lock_path.mkdir()
    with pytest.raises(ValueError, match=f"cannot clear the autotune cache in .*: "
                                         f"{re.escape(str(c.lock_path))}\\); nothing deleted"):
        c.clear()
    assert TuneCache(tmp_path).lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}

def test_write_json_atomic_keeps_the_umask(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        atomic_mod.write_json_atomic(tmp_path / "a.json", {"x": 1})
        assert os.umask(0o027) == 0o027  # unchanged by the write
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


def test_write_bytes_atomic_keeps_the_old_file_whole_and_the_link(tmp_path, monkeypatch):
    """Bytes (an image, a saved model) written as atomic_text writes text: an interrupted
    write leaves the old file and no temp file; through a link, the link is kept."""
    import os

    target = tmp_path / "m.pt"
    target.write_bytes(b"old")
    link = tmp_path / "link.pt"
    link.symlink_to(target)

    def killed(fd):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", killed)
        with pytest.raises(KeyboardInterrupt):
            atomic_mod.write_bytes_atomic(link, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.pt", "m.pt"]
    atomic_mod.write_bytes_atomic(link, b"\x00new")
    assert link.is_symlink() and target.read_bytes() == b"\x00new"


def test_atomic_write_refuses_to_replace_a_pipe(tmp_path):
    """A file moved over a device or a pipe replaces it (a sweep's --csv /dev/null
    replaced the device with its CSV): refused, the pipe and the folder as they were."""
    import os
    import stat

    fifo = tmp_path / "p.json"
    os.mkfifo(fifo)
    link = tmp_path / "link.json"
    link.symlink_to(fifo)
    for path in (fifo, link):
        with pytest.raises(ValueError, match=r"p\.json is not a regular file .* replaced"):
            atomic_mod.write_json_atomic(path, {"x": 1})
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "p.json"]



def test_a_pipe_at_the_cache_path_is_not_read(tmp_path, caplog):
    """A pipe where the cache file should be: every read (lookup, `cache ls`) and every
    record (under the lock, so other writers timed out too) and clear waited forever for
    a writer. It is reported and left alone; records stay in memory; clear refuses."""
    import stat
    import threading

    c = TuneCache(tmp_path)
    os.mkfifo(c.path)
    done: list[object] = []

    def use() -> None:
        fresh = TuneCache(tmp_path)
        done.append(fresh.lookup(SPEC, 0.5))
        fresh.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
        done.append(fresh.saved)
        try:
            fresh.clear()
        except ValueError as e:
            done.append(str(e))

    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        worker = threading.Thread(target=use, daemon=True)
        worker.start()
        worker.join(20)
    if worker.is_alive():  # let the blocked read return
        with open(c.path, "wb"):
            pass
        worker.join(5)
        pytest.fail("a read of the pipe blocked")
    assert done[:2] == [None, False]
    assert "not a regular file" in done[2] and "not deleting it" in done[2]
    assert f"autotune cache {c.path} is not a regular file" in caplog.text
    assert stat.S_ISFIFO(os.lstat(c.path).st_mode)

def test_foreign_schema_and_device_are_ignored(tmp_path, caplog):
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    data = json.loads(c.path.read_text())
    for change, word in (({"schema": SCHEMA_VERSION + 1}, "schema"),
                         ({"device": "Some Other CPU 64t"}, "device")):
        c.path.write_text(json.dumps({**data, **change}))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="laudtriton"):
            assert TuneCache(tmp_path).lookup(SPEC, 0.5) is None
        assert word in caplog.text


def test_record_never_writes_over_another_devices_timings(tmp_path, caplog):
    """A file of another device under this device's file name (two names with one slug)
    keeps its entries: the new timings stay in memory, reported once. Before, record
    wrote this device's entries over them."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    data = json.loads(c.path.read_text())
    foreign = json.dumps({**data, "device": "Some Other CPU 64t"})
    c.path.write_text(foreign)
    mine = TuneCache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        mine.record(SPEC2, 0.3, {"dense": {"{}": 2e-3}})
        mine.record(SPEC2, 0.4, {"dense": {"{}": 2e-3}})
    assert c.path.read_text() == foreign and not mine.saved
    assert caplog.text.count("not writing over them") == 1
    assert mine.lookup(SPEC2, 0.4) == {"dense": {"{}": 2e-3}}


def test_version_change_hides_old_entries(tmp_path):
    old = dict(cache_mod.current_versions(), torch="1.0.0")
    TuneCache(tmp_path, versions=old).record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    c = TuneCache(tmp_path)
    assert c.lookup(SPEC, 0.5) is None and c.entries() == []
    stale = c.entries(include_stale=True)
    assert len(stale) == 1 and stale[0].meta["stale"]
    c.record(SPEC, 0.5, {"dense": {"{}": 2e-3}})  # both versions live side by side
    assert c.lookup(SPEC, 0.5) == {"dense": {"{}": 2e-3}}
    assert TuneCache(tmp_path, versions=old).lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}


def test_kernel_source_change_hides_old_entries(tmp_path, monkeypatch):
    TuneCache(tmp_path).record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    monkeypatch.setattr(cache_mod, "source_hash", lambda name: "0123456789abcdef")
    assert TuneCache(tmp_path).lookup(SPEC, 0.5) is None


def test_unwritable_dir_is_not_fatal(tmp_path, caplog):
    c = TuneCache(tmp_path / "gone")
    (tmp_path / "gone").write_text("x")  # a file where the directory should be, made
    # after the cache checked it: writing fails even as root
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
        c.record(SPEC, 0.6, {"dense": {"{}": 2e-3}})
    assert caplog.text.count("cannot write the autotune cache") == 1
    assert not c.saved
    assert c.lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}
    assert len(c.entries()) == 2


def test_env_dir_blank_or_a_file_is_refused(tmp_path, monkeypatch, capsys, caplog):
    """As --cache-dir is: a blank value made a directory named '  ' in the current one,
    a file let `cache ls` say "(no file yet)" and sweep time everything unsaved."""
    from laudtriton.cli import main

    (tmp_path / "f").write_text("x")
    for value, why in (("  ", "is empty"), (str(tmp_path / "f"), "is not a directory")):
        monkeypatch.setenv("LAUDTRITON_CACHE_DIR", value)
        with pytest.raises(ValueError, match=f"^LAUDTRITON_CACHE_DIR {value!r} {why}"):
            TuneCache()
        assert main(["cache", "ls"]) == 2
        assert f"LAUDTRITON_CACHE_DIR {value!r} {why}" in capsys.readouterr().err
        with caplog.at_level(logging.WARNING, logger="laudtriton"):
            assert main(["predict", "--model", "laud_resnet50"]) == 2
        # not first taken for a corrupt calibration (warned about, then ignored)
        assert f"LAUDTRITON_CACHE_DIR {value!r} {why}" in capsys.readouterr().err
        assert "ignoring it" not in caplog.text
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", "")  # empty: not given
    assert TuneCache().dir != tmp_path / "f"


def test_env_dir_and_disable(tmp_path, monkeypatch):
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path / "env"))
    c = TuneCache()
    assert c.path.parent == tmp_path / "env"
    monkeypatch.setenv("LAUDTRITON_CACHE", "0")
    off = TuneCache()
    assert not off.enabled
    off.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    assert off.lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}
    assert not off.path.exists() and not off.saved
    monkeypatch.delenv("LAUDTRITON_CACHE")
    assert TuneCache().lookup(SPEC, 0.5) is None


def test_clear(tmp_path):
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, _timings())
    assert c.clear() == 2
    assert not c.path.exists() and c.lookup(SPEC, 0.5) is None


def test_merge_files(tmp_path, caplog):
    a, b = TuneCache(tmp_path / "a"), TuneCache(tmp_path / "b")
    a.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    b.record(SPEC, 0.5, {"dense": {"{}": 3e-3}})  # same key: the later file wins
    b.record(SPEC2, 0.2, {"dense": {"{}": 2e-3}})
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    out = tmp_path / "out" / a.path.name
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert merge_files([a.path, b.path, bad], out) == 2
    assert "corrupt" in caplog.text
    m = TuneCache(out.parent)
    assert m.lookup(SPEC, 0.5) == {"dense": {"{}": 3e-3}}
    assert m.lookup(SPEC2, 0.2) == {"dense": {"{}": 2e-3}}


def test_source_hash_follows_the_ops_a_variant_runs_through_others():
    """dense runs ops.packed (PackedConv) through ops.channel (dense_weights), and the
    spatial variants ops.packed through ops.rows: an edit there must hide their timings.
    Only the variant module's direct imports were hashed."""
    from laudtriton.ops import get_variant
    from laudtriton.tune.keys import _source_files

    for name in ("dense", "slice", "compact", "gather", "patch"):
        names = {f.name for f in _source_files(get_variant(name))}
        assert {"packed.py", "fold.py"} <= names, name
    assert "rows.py" in {f.name for f in _source_files(get_variant("gather"))}


def test_merge_reads_its_output_under_the_lock(tmp_path, monkeypatch):
    """A sweep that records into the output file while merge_files works (here: just
    before merge takes the lock) keeps its entry: the output is read under the lock
    (it was read before it, and the sweep's entry was written over)."""
    live, shard = TuneCache(tmp_path / "live"), TuneCache(tmp_path / "shard")
    live.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    shard.record(SPEC, 1.0, {"dense": {"{}": 2e-3}})
    real, raced = cache_merge_mod.file_lock, []

    def racing_lock(path):
        if path.name == live.path.name + ".lock" and not raced:
            raced.append(1)
            TuneCache(tmp_path / "live").record(SPEC2, 0.5, {"dense": {"{}": 3e-3}})
        return real(path)

    monkeypatch.setattr(cache_merge_mod, "file_lock", racing_lock)
    assert merge_files([shard.path], live.path) == 3
    after = TuneCache(tmp_path / "live")
    assert after.lookup(SPEC2, 0.5) == {"dense": {"{}": 3e-3}}
    assert after.lookup(SPEC, 1.0) == {"dense": {"{}": 2e-3}}


def test_merge_into_an_existing_output_lets_the_inputs_win(tmp_path):
    """Merging into an --out that already holds a key: the inputs' time of a config
    replaces the output's (the newer timing wins), the output's other configs and
    keys stay."""
    out, shard = TuneCache(tmp_path / "out"), TuneCache(tmp_path / "shard")
    out.record(SPEC, 0.5, {"dense": {"{}": 9e-3, '{"k":1}': 4e-3}})
    out.record(SPEC2, 0.5, {"dense": {"{}": 7e-3}})
    shard.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    assert merge_files([shard.path], out.path) == 2
    after = TuneCache(tmp_path / "out")
    assert after.lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3, '{"k":1}': 4e-3}}
    assert after.lookup(SPEC2, 0.5) == {"dense": {"{}": 7e-3}}


@pytest.mark.parametrize("bad", [-1.0, 0.0])
def test_non_positive_timings_are_malformed(tmp_path, caplog, bad):
    """A timing read from a file is > 0: a negative one or 0 s (no measurement gives it;
    it would win every dispatch) drops its entry."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    c.record(SPEC, 0.6, {"dense": {"{}": 1e-3}})
    data = json.loads(c.path.read_text())
    for e in data["entries"].values():
        if e["rate_bucket"] == 0.6:
            e["timings"]["{}"] = bad
    c.path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert TuneCache(tmp_path).rates(SPEC) == [0.5]
    assert "1 malformed entries ignored" in caplog.text


def test_config_keys_that_are_not_json_objects_are_malformed(tmp_path, caplog):
    """A config key every reader parses (compile's dispatch builds a Choice of it): a
    JSON object; "not json", a list or a number drop the entry, as other malformed
    fields do, instead of failing compile."""
    c = TuneCache(tmp_path)
    bad = {0.5: '{"BLOCK": 16}', 0.6: "not json", 0.7: "[1, 2]", 0.8: "5"}
    for r in bad:
        c.record(SPEC, r, {"dense": {"{}": 1e-3}})
    data = json.loads(c.path.read_text())
    for e in data["entries"].values():
        e["timings"] = {bad[e["rate_bucket"]]: 1e-3}
    c.path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert TuneCache(tmp_path).rates(SPEC) == [0.5]
    assert "3 malformed entries ignored" in caplog.text


def test_malformed_asked_rates_drop_the_entry(tmp_path, caplog):
    c = TuneCache(tmp_path)
    bad = {0.5: [0.5], 0.6: "0.6", 0.7: [[0.7]], 0.8: [1.5]}
    for r in bad:
        c.record(SPEC, r, {"dense": {"{}": 1e-3}}, {"asked_rates": [0.1]})
    data = json.loads(c.path.read_text())
    for e in data["entries"].values():
        e["meta"]["asked_rates"] = bad[e["rate_bucket"]]
    c.path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert TuneCache(tmp_path).rates(SPEC) == [0.5]
    assert "3 malformed entries ignored" in caplog.text


def test_merge_files_rejects(tmp_path, caplog):
    a = TuneCache(tmp_path / "a")
    a.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    other = tmp_path / "other.json"
    data = json.loads(a.path.read_text())
    other.write_text(json.dumps({**data, "device": "Another CPU 8t"}))
    with pytest.raises(ValueError, match="different devices"):
        merge_files([a.path, other], tmp_path / "o.json")
    with pytest.raises(ValueError, match="not found"):
        merge_files([a.path, tmp_path / "missing.json"], tmp_path / "o.json")
    with pytest.raises(ValueError, match="a directory, not a cache file; give the JSON"):
        merge_files([a.path, a.dir], tmp_path / "o.json")  # it said "not found"
    with pytest.raises(ValueError, match="^/dev/null: not a regular file"):
        merge_files([a.path, "/dev/null"], tmp_path / "o.json")  # it said "not found" too
    with pytest.raises(ValueError, match="at least one"):
        merge_files([], tmp_path / "o.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        with pytest.raises(ValueError, match="no valid cache entry"):
            merge_files([corrupt], tmp_path / "o.json")
    assert "corrupt.json is corrupt" in caplog.text  # merge never writes its inputs
    assert "rebuilt" not in caplog.text
    assert not (tmp_path / "o.json").exists()
    assert os.listdir(tmp_path / "a")  # inputs untouched
    for text in ("some notes, not a cache\n", b"\xff\xfe"):  # an --out slip: not written over
        notes = tmp_path / "notes.txt"
        notes.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(NotACacheError, match="notes.txt exists and is not a laudtriton "
                                                 "cache file .*; nothing written"):
            merge_files([a.path], notes)
        assert notes.read_bytes() == (text if isinstance(text, bytes) else text.encode())


def test_shipped_cache_matches_the_source():
    """The timings shipped in autotune_cache/ (which BENCHMARKS.md and the default dispatch
    come from) were taken with the variants' current source: an edit to a variant's module
    or the ops it uses hides them (``source_hash``), so it must come with a re-sweep (the
    commands are in BENCHMARKS.md, "Autotune sweep")."""
    import json
    from pathlib import Path

    from laudtriton.tune.keys import source_hash

    files = [p for p in (Path(__file__).parents[1] / "autotune_cache").glob("*.v*.json")
             if not p.name.startswith("calibration")]
    assert files, "no shipped autotune cache"
    current: dict[str, str] = {}  # per variant: hashing its sources takes ~0.1 s
    for path in files:
        entries = json.loads(path.read_text())["entries"].values()
        for v in {e["variant"] for e in entries} - set(current):
            current[v] = source_hash(v)
        stale = sorted({e["variant"] for e in entries
                        if e["source_hash"] != current[e["variant"]]})
        assert not stale, f"{path.name}: timings of {stale} predate their current source"


def test_a_variant_whose_code_changed_after_it_was_read_is_neither_read_nor_recorded(
        tmp_path, caplog):
    """A process runs the code it read first; its timings were filed under the hash of
    the code on disk when they were recorded, where a later process running the edited
    code read them as its own. Here the first read of layer.py (the ``compact``
    variant's module) is made to differ from the file, as after an edit; a comment or
    docstring differing changes nothing."""
    import inspect
    from pathlib import Path

    from laudtriton.ops.registry import get_variant
    from laudtriton.tune import keys

    path = Path(inspect.getsourcefile(get_variant("compact").run)).resolve()
    timings = {"dense": {"{}": 2e-3}, "compact": {"{}": 1e-3}}
    TuneCache(tmp_path).record(SPEC, 0.5, timings)
    first = keys._FIRST_READ[path]
    try:
        keys._FIRST_READ[path] = first + "\n# a comment\n"
        assert keys.source_hash("compact")  # no code changed
        keys._FIRST_READ[path] = first + "\nX = 1\n"
        with pytest.raises(keys.SourceChanged, match="^compact: the code of layer.py "
                                                     "changed after this process read it"):
            keys.source_hash("compact")
        c = TuneCache(tmp_path)
        assert c.lookup(SPEC, 0.5) == {"dense": {"{}": 2e-3}}
        with caplog.at_level(logging.WARNING, logger="laudtriton"):
            c.record(SPEC, 0.6, timings)
            c.record(SPEC, 0.7, timings)
        assert caplog.text.count("its timings are not cached") == 1
        assert c.lookup(SPEC, 0.6) == {"dense": {"{}": 2e-3}}
        assert {e.variant for e in c.entries(include_stale=True)
                if e.rate_bucket != 0.5} == {"dense"}
    finally:
        keys._FIRST_READ[path] = first
    assert TuneCache(tmp_path).lookup(SPEC, 0.5) == timings


def test_code_text_ignores_comments_and_docstrings(tmp_path):
    """Editing a comment or a docstring keeps a variant's timings; editing code does not."""
    from laudtriton.tune.keys import code_text

    base = 'def f(x):\n    """Doc."""\n    y = x + 1  # one\n    return "#" + y\n'
    same = ('"""Module doc,\ntwo lines."""\n\n# a comment\ndef f(x):   \n    """Other doc\n'
            '    over lines."""\n    y = x + 1  # changed\n\n    return "#" + y\n')
    other = base.replace("x + 1", "x + 2")
    texts = []
    for i, src in enumerate((base, same, other, "def (:\n")):
        (tmp_path / f"m{i}.py").write_text(src)
        texts.append(code_text(tmp_path / f"m{i}.py"))
    assert texts[0] == texts[1] == b'def f(x):\n    y = x + 1\n    return "#" + y'
    assert texts[2] != texts[0]
    assert texts[3] == b"def (:\n"  # does not parse: the raw text


@pytest.mark.parametrize("change", [
    {"meta": [1, 2]}, {"meta": "m"}, {"meta": {"models": ["layer1.0"]}},
    {"meta": {"models": {"m": "layer1.0"}}}, {"meta": {"flops_ratio": "0.5"}},
    {"variant": 3}, {"variant": None}, {"rate_bucket": "0.5"}, {"rate_bucket": True},
    {"rate_bucket": 1.5}, {"timings": {"{}": "fast"}}, {"timings": {"{}": None}},
    {"timings": []}, {"versions": "0.1"}, {"source_hash": 7},
    {"spec": {**SPEC.to_dict(), "in_channels": "48"}},
    {"spec": {**SPEC.to_dict(), "in_hw": [13]}}, {"spec": {**SPEC.to_dict(), "mode": 1}},
    {"spec": {**SPEC.to_dict(), "downsample": 0}}, {"spec": {**SPEC.to_dict(), "batch": 0}},
])
def test_type_wrong_entries_are_reported_and_skipped_everywhere(tmp_path, caplog, change):
    """An entry of the wrong types is warned about and ignored by every reader (lookup,
    entries with and without stale ones) and by merge, like a malformed one."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}}, meta={"models": {"m": ["layer1.0"]}})
    data = json.loads(c.path.read_text())
    good = next(iter(data["entries"].values()))
    data["entries"]["bad"] = {**good, **change}
    c.path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        fresh = TuneCache(tmp_path)
        assert fresh.lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}
        assert [(e.variant, e.seconds) for e in fresh.entries(include_stale=True)] == \
            [("dense", 1e-3)]
        assert merge_files([c.path], tmp_path / "out" / "m.json") == 1
    assert "1 malformed entries ignored" in caplog.text
    assert list(json.loads((tmp_path / "out" / "m.json").read_text())["entries"]) == \
        [k for k in data["entries"] if k != "bad"]


def test_clustered_entries_of_older_sweeps_are_hidden(tmp_path):
    """Sweeps once cached timings on clustered masks (meta clustered true); they are not
    timings of the scattered masks compile and the predictor expect: shown only as stale."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}}, meta={"clustered": True})
    c.record(SPEC, 0.3, {"dense": {"{}": 2e-3}}, meta={"clustered": False})
    fresh = TuneCache(tmp_path)
    assert fresh.lookup(SPEC, 0.5) is None and fresh.rates(SPEC) == [0.3]
    assert [e.rate_bucket for e in fresh.entries()] == [0.3]
    assert sorted((e.rate_bucket, e.meta["stale"]) for e in fresh.entries(include_stale=True)) \
        == [(0.3, False), (0.5, True)]


def test_merge_refuses_a_file_without_device(tmp_path):
    a = TuneCache(tmp_path / "a")
    a.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    data = json.loads(a.path.read_text())
    nodev = tmp_path / "nodevice.json"
    nodev.write_text(json.dumps({k: v for k, v in data.items() if k != "device"}))
    out = tmp_path / "o.json"
    for inputs in ([nodev], [a.path, nodev]):
        with pytest.raises(ValueError, match=f'^{nodev} has no "device"'):
            merge_files(inputs, out)
        assert not out.exists()
    out.write_text(nodev.read_text())  # an --out without a device is not merged into either
    with pytest.raises(ValueError, match=f'^{out} has no "device"'):
        merge_files([a.path], out)
    nodev.write_text(json.dumps({**data, "device": 5}))  # one, not a name: said so
    with pytest.raises(ValueError, match=f'^{nodev} has a "device" that is not a name '
                                         r'\(5\) \(the machine kind'):
        merge_files([nodev], tmp_path / "o2.json")


@pytest.mark.parametrize("cache_dir", ["", "  "])
def test_empty_cache_dir_is_refused(cache_dir):
    """'' would silently mean the current directory (compile refuses it too:
    test_compile_models)."""
    with pytest.raises(ValueError, match="cache_dir .* is empty"):
        TuneCache(cache_dir)


def test_cache_dir_naming_a_file_is_refused(tmp_path):
    """As the flag and the environment variable are: a file let every record fail to
    save after the timing was done."""
    afile = tmp_path / "f"
    afile.write_text("x")
    for value in (afile, str(afile)):
        with pytest.raises(ValueError, match=f"^cache_dir {str(afile)!r} is not a directory"):
            TuneCache(value)
    with pytest.raises(ValueError, match=f"is not a directory .it lies inside the file "
                                         f"{str(afile)!r}"):
        TuneCache(afile / "sub" / "c")  # no directory can be made under a file
    with pytest.raises(ValueError, match="it lies inside the file"):
        TuneCache(f"{afile}/../new")  # nor through it
    assert TuneCache(tmp_path / "new").dir == tmp_path / "new"  # a missing one is made later


def test_clear_waits_for_a_writer_holding_the_lock(tmp_path):
    """``clear`` took no lock: a ``record`` between its locked read and its write (another
    process's sweep) wrote every cleared entry back."""
    import threading

    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    done = threading.Event()
    with cache_file_mod.file_lock(c.path.with_name(c.path.name + ".lock")):  # a writer
        t = threading.Thread(target=lambda: (TuneCache(tmp_path).clear(), done.set()))
        t.start()
        assert not done.wait(0.5) and c.path.exists()  # waits for the writer
    t.join(10)
    assert done.is_set() and not c.path.exists()


def test_clear_of_a_directory_that_does_not_exist_makes_nothing(tmp_path):
    """Taking the lock there made the directory (filelock) or raised (fcntl)."""
    assert TuneCache(tmp_path / "none").clear() == 0
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("rate,timings,says", [
    (1.5, {"dense": {"{}": 1e-3}}, "rate_bucket 1.5"),
    (math.nan, {"dense": {"{}": 1e-3}}, "rate_bucket nan"),
    (True, {"dense": {"{}": 1e-3}}, "rate_bucket True"),
    (0.5, {"dense": {"{}": -1.0}}, "took -1.0"),
    (0.5, {"dense": {"{}": 0.0}}, "took 0.0"),
    (0.5, {"dense": {"{}": "fast"}}, "took 'fast'"),
    (0.5, {"dense": {"not json": 1e-3}}, "config key 'not json'"),
    (0.5, {"dense": {"[1]": 1e-3}}, "config key '\\[1\\]'"),
    (0.5, {3: {"{}": 1e-3}}, "timings\\[3\\]"),
    (0.5, [("dense", 1e-3)], "timings must be"),
])
def test_record_refuses_what_a_reader_would_drop(tmp_path, rate, timings, says):
    """Before, record wrote such an entry, and the next read dropped it whole, with the
    valid timings merged into it."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {'{"a":1}': 1e-3}})
    with pytest.raises(ValueError, match=f"record: .*{says}"):
        c.record(SPEC, rate, timings)
    assert TuneCache(tmp_path).lookup(SPEC, 0.5) == {"dense": {'{"a":1}': 1e-3}}


@pytest.mark.parametrize("meta", [{"asked_rates": [2.0]}, {"input_size": [64]},
                                  {"input_size": "x"}, {"input_size": 64.5},
                                  {"input_size": True}, {"input_size": 0}])
def test_record_refuses_malformed_meta(tmp_path, meta):
    """An input size other than a positive int passed as valid, and then broke `plot
    --from cache` (a traceback) or was cut to an int (64.5 -> 64)."""
    c = TuneCache(tmp_path)
    with pytest.raises(ValueError, match="record: spec .* or meta .* is malformed"):
        c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}}, meta=meta)
    assert c.lookup(SPEC, 0.5) is None and not c.path.exists()


def _unreadable(monkeypatch, path) -> None:
    """Reading ``path`` fails as a file without read permission does (tests run as root
    here, where chmod would not stop the read)."""
    real = type(path).read_bytes

    def read_bytes(self):
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real(self)
    monkeypatch.setattr(type(path), "read_bytes", read_bytes)


def test_record_never_writes_over_a_file_it_cannot_read(tmp_path, monkeypatch, caplog):
    """A cache file that exists but cannot be read (another user's, in a shared
    directory) is kept: the records stay in memory, reported once."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    before = c.path.read_bytes()
    _unreadable(monkeypatch, c.path)
    mine = TuneCache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        mine.record(SPEC2, 0.3, {"dense": {"{}": 2e-3}})
        mine.record(SPEC2, 0.4, {"dense": {"{}": 2e-3}})
    assert caplog.text.count("not writing over it") == 1
    assert not mine.saved and "cannot be read" in mine.unsaved_why
    assert mine.lookup(SPEC2, 0.4) == {"dense": {"{}": 2e-3}}
    monkeypatch.undo()
    assert c.path.read_bytes() == before


def test_merge_refuses_an_output_of_another_schema(tmp_path):
    a = TuneCache(tmp_path / "a")
    a.record(SPEC, 0.5, _timings())
    out = tmp_path / "out.json"
    text = json.dumps({"schema": SCHEMA_VERSION + 1, "device": a.device,
                       "entries": {"k": {"future": True}}})
    out.write_text(text)
    with pytest.raises(NotACacheError, match="schema"):
        merge_files([a.path], out)
    assert out.read_text() == text


def test_clear_refuses_another_devices_file(tmp_path, capsys):
    """record keeps another device's file (two names, one file name); clear does too."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    foreign = json.dumps({**json.loads(c.path.read_text()), "device": "Some Other CPU 64t"})
    c.path.write_text(foreign)
    with pytest.raises(ValueError, match="holds timings of device 'Some Other CPU 64t'"):
        TuneCache(tmp_path).clear()
    assert c.path.read_text() == foreign
    from laudtriton.cli import main

    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 2
    assert "not deleting them" in capsys.readouterr().err and c.path.read_text() == foreign
    c.path.write_text(json.dumps({**json.loads(foreign), "device": c.device}))
    assert TuneCache(tmp_path).clear() == 1 and not c.path.exists()


def test_device_fingerprint_of_a_missing_cuda_device_is_a_value_error(monkeypatch):
    """Was torch's AssertionError (no CUDA) or an index error from torch.cuda."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="'cuda:3': this machine has 1 CUDA device"):
        device_fingerprint("cuda:3")
    with pytest.raises(ValueError, match="'cuda:1': this machine has 1 CUDA device"):
        device_fingerprint("cuda:1")  # one past the last index (cuda:0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda': this machine has 0 CUDA device"):
        device_fingerprint("cuda")


def test_check_device_refuses_a_missing_cuda_index(monkeypatch):
    import torch

    from laudtriton.tune.options import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="--device 'cuda:2': this machine has 2 CUDA"):
        check_device("cuda:2")
    with pytest.raises(ValueError, match="--device 'cpu:1' unknown"):  # ran as 'cpu'
        check_device("cpu:1")


def test_record_takes_numpy_and_tensor_numbers(tmp_path):
    import numpy as np
    import torch

    c = TuneCache(tmp_path)
    c.record(SPEC, np.float32(0.5), {"dense": {"{}": np.float32(1e-3)},
                                     _names()[1]: {"{}": torch.tensor(2e-3)}})
    got = TuneCache(tmp_path).lookup(SPEC, 0.5)
    assert got["dense"]["{}"] == pytest.approx(1e-3) and type(got["dense"]["{}"]) is float
    assert got[_names()[1]]["{}"] == pytest.approx(2e-3)


def test_clear_refuses_a_file_it_cannot_read(tmp_path, monkeypatch):
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    _unreadable(monkeypatch, c.path)
    with pytest.raises(ValueError, match="cannot be read .*not deleting it"):
        TuneCache(tmp_path).clear()
    assert c.path.exists()


def test_lock_without_filelock_times_out(tmp_path, monkeypatch, caplog):
    """Without filelock (not a dependency) the fcntl lock waited forever for a stuck
    holder; it gives up after LOCK_TIMEOUT as filelock does: the records stay in memory."""
    import fcntl
    import sys

    monkeypatch.setitem(sys.modules, "filelock", None)  # import filelock -> ImportError
    monkeypatch.setattr(cache_file_mod, "LOCK_TIMEOUT", 0.3)
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})  # the fcntl path works unheld
    assert c.saved
    with open(c.lock_path, "a") as holder:  # another open file: a conflicting flock
        fcntl.flock(holder, fcntl.LOCK_EX)
        with caplog.at_level(logging.WARNING, logger="laudtriton"):
            c.record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
        assert not c.saved and "held the lock" in c.unsaved_why
        assert caplog.text.count(f"another process holds {c.lock_path}") == 1  # before
        assert "waiting up to 0.3 s" in caplog.text  # the wait, once
        # the timeout in force, not the one imported when the module loaded (120 s)
        assert c.unsaved_why.endswith(" for 0.3 s") and "its lock" in caplog.text
        assert f"held its lock {c.lock_path} for 0.3 s" in caplog.text
        with pytest.raises(ValueError, match=r"another process holds the lock .*waited 0.3 s"):
            c.clear()
    c.record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
    assert c.saved and TuneCache(tmp_path).lookup(SPEC2, 0.5) == {"dense": {"{}": 2e-3}}


def test_a_held_lock_is_said_before_the_wait(tmp_path, monkeypatch, caplog, capsys):
    """A writer waited up to LOCK_TIMEOUT (120 s) for another process's lock without a
    word; `cache merge` then blamed --out for the lock, as it did for a lock path it
    cannot create."""
    import filelock

    from laudtriton.cli import main

    monkeypatch.setattr(cache_file_mod, "LOCK_TIMEOUT", 0.3)
    c = TuneCache(tmp_path / "c")
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    out = tmp_path / "out.json"
    held = filelock.FileLock(str(out.with_name("out.json.lock")))  # another holder
    with held, caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert main(["cache", "merge", str(c.path), "--out", str(out)]) == 2
    assert f"another process holds {out}.lock" in caplog.text
    assert "waiting up to 0.3 s" in caplog.text
    err = capsys.readouterr().err
    assert f"another process held its lock ({out}.lock) for 0.3 s; nothing written" in err
    assert not out.exists()
    (tmp_path / "o2.json.lock").mkdir()
    assert main(["cache", "merge", str(c.path), "--out", str(tmp_path / "o2.json")]) == 2
    assert f"(Is a directory: {tmp_path / 'o2.json.lock'})" in capsys.readouterr().err
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="laudtriton"):  # unheld: nothing said
        assert main(["cache", "merge", str(c.path), "--out", str(out)]) == 0
    assert "another process" not in caplog.text


@pytest.mark.parametrize("with_filelock", [True, False])
def test_a_lock_held_briefly_is_waited_for_in_silence(tmp_path, monkeypatch, caplog,
                                                      with_filelock):
    """Writers sharing a cache meet for milliseconds: no warning for a wait shorter than
    LOCK_QUIET (the warning broke a sweep's progress line at every meeting)."""
    import fcntl
    import sys
    import threading

    if not with_filelock:
        monkeypatch.setitem(sys.modules, "filelock", None)
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    holder = open(c.lock_path, "a")  # another open file: a conflicting flock
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(0.2, lambda: fcntl.flock(holder, fcntl.LOCK_UN)).start()
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        c.record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
    holder.close()
    assert c.saved and TuneCache(tmp_path).lookup(SPEC2, 0.5) == {"dense": {"{}": 2e-3}}
    assert "another process" not in caplog.text


def test_clear_moves_an_unusable_file_aside_and_counts_every_entry(tmp_path, caplog):
    """clear deleted a corrupt file (its bytes maybe readable by hand) reporting 0
    entries, and did not count the entries no reader can use that it deleted."""
    c = TuneCache(tmp_path)
    c.path.write_text("{truncated")
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert TuneCache(tmp_path).clear() == 0
    (aside,) = tmp_path.glob(c.path.name + ".unusable-*")
    assert aside.read_text() == "{truncated" and "not deleted" in caplog.text
    assert not c.path.exists()
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    data = json.loads(c.path.read_text())
    data["entries"]["later-version-key"] = {"spec": "a later layout"}
    c.path.write_text(json.dumps(data))
    assert TuneCache(tmp_path).clear() == 2 and not c.path.exists()


def test_merge_keeps_the_entries_of_its_output_it_cannot_parse(tmp_path):
    """merge rewrote its output from the entries it could parse, dropping the others
    (a later version's); the module's rule is that a rewrite keeps them."""
    a, o = TuneCache(tmp_path / "a"), TuneCache(tmp_path / "o")
    a.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    o.record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
    data = json.loads(o.path.read_text())
    (entry,) = data["entries"].values()
    odd = {**entry, "spec": {**entry["spec"], "a_field_of_a_later_version": 1}}
    data["entries"]["later-version-key"] = odd
    o.path.write_text(json.dumps(data))
    assert merge_files([a.path], o.path) == 3
    after = json.loads(o.path.read_text())["entries"]
    assert after["later-version-key"] == odd
    m = TuneCache(tmp_path / "o")
    assert m.lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}
    assert m.lookup(SPEC2, 0.5) == {"dense": {"{}": 2e-3}}



def test_merge_never_relabels_another_devices_entries_it_cannot_parse(tmp_path):
    """An --out of another device whose entries this version cannot parse (a later
    version's): merge kept them and wrote the file under the inputs' device, so another
    GPU's timings passed for this CPU's and that GPU's file was gone. Refused, as a
    record into such a file is; the file is left as it was."""
    a = TuneCache(tmp_path / "a")
    a.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    out = tmp_path / "o.json"
    for device in ("Another GPU sm90", None):
        theirs = {"schema": SCHEMA_VERSION, "device": device,
                  "entries": {"later-version-key": {"spec": "a later layout"}}}
        out.write_text(json.dumps(theirs))
        with pytest.raises(ValueError, match=f"^{out} holds timings of device "
                                             f"{device!r}, the inputs are for"):
            merge_files([a.path], out)
        assert json.loads(out.read_text()) == theirs
    out.write_text(json.dumps({"schema": SCHEMA_VERSION, "device": "Another GPU sm90",
                               "entries": {}}))  # nothing of that device to keep
    assert merge_files([a.path], out) == 1
    assert TuneCache(tmp_path / "a").device == json.loads(out.read_text())["device"]

@pytest.mark.parametrize("field,value,says", [
    ("in_channels", 0, "in_channels must be an int >= 1, got 0"),
    ("width", 16.0, "width must be an int >= 1, got 16.0"),
    ("stride", True, "stride must be an int >= 1, got True"),
    ("channel_groups", -1, "channel_groups must be an int >= 0, got -1"),
    ("channel_groups", 3, "channel_groups 3 does not divide the width 16"),
    ("in_hw", (8,), "in_hw must be a tuple of two ints >= 1"),
    ("in_hw", [8, 8], "in_hw must be a tuple of two ints >= 1"),
    ("in_hw", (8, 0), "in_hw must be a tuple of two ints >= 1"),
    ("downsample", 0, "downsample must be a bool, got 0"),
    ("mode", "spacial", "mode 'spacial' unknown; accepted: spatial, channel, layer, both"),
    ("dtype", "float8", "dtype 'float8' unknown"),
    ("granularity", 9, "granularity 9 is larger than the output map 8x8"),
])
def test_block_spec_checks_its_fields_and_a_cache_drops_what_it_refuses(field, value, says):
    """BlockSpec took any field (a mode, S larger than the map, a float width) and only
    the callers checked: a spec made elsewhere carried nonsense into the cache keys and
    the cost models. Built now, it raises, naming the field; a cache entry holding such a
    spec is not a valid spec (``is_valid_spec``)."""
    good = BlockSpec(32, 16, 64, 1, True, (8, 8), "both", 2, 4)
    assert cache_file_mod.is_valid_spec(good.to_dict())
    with pytest.raises(ValueError, match=f"BlockSpec.{says}"):
        good.with_(**{field: value})
    if not isinstance(value, list):  # in a cache file in_hw is a list: [8, 8] is valid
        d = good.to_dict()
        d[field] = list(value) if isinstance(value, tuple) else value
        assert not cache_file_mod.is_valid_spec(d)
    # fields a mode does not read are not checked: S without a spatial mask
    assert good.with_(mode="channel", granularity=9).granularity == 9


def test_switches_that_are_not_true_or_false_are_refused(tmp_path):
    """TuneCache(enabled="no") was an enabled cache, entries(include_stale="no") gave the
    stale entries."""
    with pytest.raises(ValueError, match="TuneCache: enabled must be True or False"):
        TuneCache(tmp_path, enabled="no")
    with pytest.raises(ValueError, match="include_stale must be True or False, got 'no'"):
        TuneCache(tmp_path, enabled=False).entries(include_stale="no")


def test_a_source_change_keeps_the_old_timings_hidden_beside_the_new(tmp_path, monkeypatch):
    """Timings are keyed by the variant's source hash too: a record after a source change
    adds the new timing and keeps the old one (hidden, ``stale``), not written over."""
    old = TuneCache(tmp_path)
    monkeypatch.setattr(cache_mod, "source_hash", lambda name: "0123456789abcdef")
    old.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    monkeypatch.undo()
    new = TuneCache(tmp_path)
    new.record(SPEC, 0.5, {"dense": {"{}": 2e-3}})
    assert sorted((e.seconds, e.meta["stale"]) for e in new.entries(include_stale=True)) == [
        (1e-3, True), (2e-3, False)]
    assert new.lookup(SPEC, 0.5) == {"dense": {"{}": 2e-3}}


def test_a_nan_time_records_a_failed_config(tmp_path):
    """NaN, as inf, records a config that failed (its time is read back as inf)."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}, "gather": {"{}": math.nan}})
    assert TuneCache(tmp_path).lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3},
                                                     "gather": {"{}": math.inf}}


def test_an_instance_reads_what_another_wrote_after_its_first_read(tmp_path):
    """Another process (here another instance) recording into the file after this one
    read it: this one reads the file again when it changed."""
    a, b = TuneCache(tmp_path), TuneCache(tmp_path)
    a.record(SPEC, 0.2, {"dense": {"{}": 1e-3}})
    assert b.rates(SPEC) == [0.2]
    a.record(SPEC, 0.8, {"dense": {"{}": 1e-3}})
    assert b.rates(SPEC) == [0.2, 0.8]



def test_an_instance_reads_a_rewrite_of_the_same_size_and_time(tmp_path):
    """A file rewritten by another process within the clock tick of the last write (file
    times are coarse: a few ms) with as many bytes, a timing re-measured: this instance
    kept the timings it had read, as it told files apart by time and size only."""
    a, b = TuneCache(tmp_path), TuneCache(tmp_path)
    a.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    assert b.lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}
    before = os.stat(a.path)
    a.record(SPEC, 0.5, {"dense": {"{}": 2e-3}})
    os.utime(a.path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same tick
    assert os.stat(a.path).st_size == before.st_size
    assert b.lookup(SPEC, 0.5) == {"dense": {"{}": 2e-3}}

def test_clear_counts_the_entries_kept_in_memory_too(tmp_path, monkeypatch):
    """An entry recorded while another process held the lock is kept in memory, not in
    the file; clear deletes it too and counts it."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    hold_lock(monkeypatch, c)
    c.record(SPEC2, 0.5, {"dense": {"{}": 2e-3}})
    assert not c.saved
    monkeypatch.undo()
    assert c.clear() == 2
    assert c.lookup(SPEC, 0.5) is None and c.lookup(SPEC2, 0.5) is None


def test_a_file_without_schema_or_device_is_not_read(tmp_path, caplog):
    """A cache file that names no schema, or no device, is not taken for this
    version's file of this device: its entries stay hidden, with a warning naming
    what it lacks (a missing field is not the current value)."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    data = json.loads(c.path.read_text())
    for drop, word in (("schema", "schema None"), ("device", "for device None")):
        c.path.write_text(json.dumps({k: v for k, v in data.items() if k != drop}))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="laudtriton"):
            assert TuneCache(tmp_path).lookup(SPEC, 0.5) is None
        assert word in caplog.text


def test_a_later_record_replaces_the_meta_fields_it_gives(tmp_path):
    """A record of a key already cached keeps the newer meta (its "flops_ratio",
    "input_size"), while "models" and "asked_rates" are unions (were the older meta to
    win the plain fields, a re-timed item would keep the first sweep's numbers)."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}},
             meta={"flops_ratio": 0.3, "input_size": 224, "asked_rates": [0.5],
                   "models": {"m": ["a"]}})
    c.record(SPEC, 0.5, {"dense": {"{}": 2e-3}},
             meta={"flops_ratio": 0.4, "input_size": 64, "asked_rates": [0.45],
                   "models": {"m": ["b"]}})
    meta = TuneCache(tmp_path).entry_meta(SPEC, 0.5)
    assert meta["flops_ratio"] == 0.4 and meta["input_size"] == 64
    assert meta["asked_rates"] == [0.45, 0.5] and meta["models"] == {"m": ["a", "b"]}


def test_block_spec_derived_values_by_hand():
    """out_hw, grid, uniform_patches, the multiply-adds, the weight count and the short
    name of a strided both-mode spec on an odd map, in bfloat16, worked out by hand."""
    spec = BlockSpec(64, 16, 256, 2, True, (13, 11), "both", 3, 4, batch=2, dtype="bfloat16")
    assert spec.out_hw == (7, 6) and spec.grid == (2, 2)
    assert not spec.uniform_patches  # S = 3 divides Wo = 6, not Ho = 7
    assert spec.with_(in_hw=(11, 11)).uniform_patches  # 6x6
    assert spec.conv_macs() == (64 * 16 * 13 * 11, 16 * 16 * 9 * 7 * 6, 16 * 256 * 7 * 6,
                                64 * 256 * 7 * 6)
    assert spec.dense_flops() == spec.batch * sum(spec.conv_macs())  # multiply-adds
    assert spec.weight_count() == 64 * 16 + 9 * 16 * 16 + 16 * 256 + 64 * 256
    assert spec.with_(downsample=False).weight_count() == 64 * 16 + 9 * 16 * 16 + 16 * 256
    assert spec.short() == "64->16->256 13x11/s2 both S=3 G=4 b2 bfloat16"
    assert spec.with_(dtype="float32").short() == "64->16->256 13x11/s2 both S=3 G=4 b2"


def test_block_spec_from_block_reads_the_block_the_shape_and_the_dtype():
    """A torch dtype is named as a string; a block without a channel masker has 0
    channel groups, one with a masker its masker's groups."""
    import torch

    from laudtriton.testing import make_block

    both = make_block(64, 16, 2, mode="both", granularity=2, channel_granularity=4)
    assert BlockSpec.from_block(both, (2, 64, 9, 9), torch.float16) == BlockSpec(
        64, 16, 64, 2, True, (9, 9), "both", 2, 4, batch=2, dtype="float16")
    spatial = make_block(64, 16, 1, mode="spatial", granularity=2)
    assert BlockSpec.from_block(spatial, (1, 64, 8, 8)) == BlockSpec(
        64, 16, 64, 1, False, (8, 8), "spatial", 2, 0)
