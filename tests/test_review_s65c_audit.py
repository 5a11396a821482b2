"""Session 65's review of the autotune command line (``laudtriton sweep`` and ``cache
ls|clear|merge``): what ``cache merge`` did with two files' entries of one key that were
timed on different items, and the other defects found there."""

from __future__ import annotations

import json
import logging

from laudtriton.ops.spec import BlockSpec
from laudtriton.tune.cache import TuneCache
from laudtriton.tune.cache_merge import merge_files

BOTH = BlockSpec(32, 16, 64, 1, True, (8, 8), "both", 2, 4)


def _both_cache(folder, timings, channel_rate, asked):
    """A cache file in ``folder`` holding one mode-both item at grid rate 0.75 timed at
    ``channel_rate`` (as a sweep of ``asked`` records it); returns its path."""
    cache = TuneCache(folder)
    cache.record(BOTH, 0.75, timings, {"channel_rate": channel_rate, "asked_rates": asked,
                                       "flops_ratio": channel_rate * 0.5})
    return cache.path


def test_merge_does_not_label_one_channel_rates_timings_as_anothers(tmp_path, caplog):
    """Two sweeps (machines of one kind, other --rates) of mode both that realise one grid
    rate at two channel rates (0.7 and 0.8 on a 2x2 grid) record two items under one
    key. ``cache merge`` took the union of their timings and kept the later file's
    "channel_rate", FLOPs ratio and both asked rates: the earlier file's configs, timed on
    other masks, were served as timings of the later item. The later file's entry now
    replaces the earlier one whole (later files win), and a warning says so."""
    a = _both_cache(tmp_path / "a", {"dense": {"{}": 1e-3},
                                     "gather": {'{"bm": 1}': 2e-3}}, 0.5, [0.7])
    b = _both_cache(tmp_path / "b", {"dense": {"{}": 5e-3},
                                     "gather": {'{"bm": 2}': 9e-3}}, 1.0, [0.8])
    out = tmp_path / "out.json"
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert merge_files([a, b], out) == 2
    entries = json.loads(out.read_text())["entries"].values()
    got = {e["variant"]: (e["timings"], e["meta"]["channel_rate"], e["meta"]["asked_rates"])
           for e in entries}
    assert got == {"dense": ({"{}": 5e-3}, 1.0, [0.8]),
                   "gather": ({'{"bm": 2}': 9e-3}, 1.0, [0.8])}
    assert "another channel rate" in caplog.text


def test_merge_into_an_out_file_at_another_channel_rate_replaces_its_entry(tmp_path):
    """The same for --out's own entry: an input's item at another channel rate replaced
    the timings of its configs only, the out file's other configs kept under the input's
    channel rate."""
    out = _both_cache(tmp_path / "o", {"gather": {'{"bm": 1}': 2e-3}}, 0.5, [0.7])
    b = _both_cache(tmp_path / "b", {"gather": {'{"bm": 2}': 9e-3}}, 1.0, [0.8])
    assert merge_files([b], out) == 1
    (e,) = json.loads(out.read_text())["entries"].values()
    assert (e["timings"], e["meta"]["channel_rate"]) == ({'{"bm": 2}': 9e-3}, 1.0)


def test_merge_of_one_items_shards_still_unites_their_configs(tmp_path):
    """Entries of one key at one channel rate (a config added, two machines of one
    kind) are still merged config by config."""
    a = _both_cache(tmp_path / "a", {"gather": {'{"bm": 1}': 2e-3}}, 0.5, [0.7])
    b = _both_cache(tmp_path / "b", {"gather": {'{"bm": 2}': 9e-3}}, 0.5, [0.71])
    out = tmp_path / "out.json"
    assert merge_files([a, b], out) == 1
    (e,) = json.loads(out.read_text())["entries"].values()
    assert e["timings"] == {'{"bm": 1}': 2e-3, '{"bm": 2}': 9e-3}
    assert e["meta"]["asked_rates"] == [0.7, 0.71]


def _sweep_args(*argv: str):
    """``laudtriton sweep``'s parsed args for ``argv``."""
    import argparse

    from laudtriton.tune.commands import add_sweep_parser

    p = argparse.ArgumentParser()
    add_sweep_parser(p.add_subparsers(dest="command", required=True))
    return p.parse_args(["sweep", *argv])


def test_a_cache_dir_that_is_a_dangling_link_is_named_as_one(tmp_path, capsys,
                                                            monkeypatch):
    """--cache-dir a symbolic link to a missing folder (or a folder under one) was
    refused with "cannot be made or written (File exists)", of a path that does not
    exist; the message now names the link and its missing target, as the sweep names a
    cache file that is a link into a missing folder."""
    from laudtriton.tune.paths import make_writable_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(tmp_path / "gone" / "deeper")
    for given in ("link", "link/sub"):
        try:
            make_writable_dir(given, "--cache-dir")
        except ValueError as e:
            msg = str(e)
        else:
            msg = ""
        assert msg.startswith(f"--cache-dir {given!r}: "), msg
        assert "is a symbolic link to the missing" in msg and "File exists" not in msg
    args = _sweep_args("--rates", "0.5", "--blocks", "layer4.2", "--input-size", "64",
                       "--no-progress", "--cache-dir", "link")
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("laudtriton sweep: error: --cache-dir 'link': ")
    assert "symbolic link to the missing" in err and not (tmp_path / "gone").exists()


def test_merge_drops_the_other_variants_of_an_item_at_another_channel_rate(tmp_path):
    """An earlier file's item at another channel rate kept the variants the later file
    lacks: a lookup then compared the later item's dense time with the earlier item's
    gather time, as one item's. The later file's item now replaces the earlier one with
    all its variants (the next sweep times the variants it lacks)."""
    a = _both_cache(tmp_path / "a", {"dense": {"{}": 1e-3},
                                     "gather": {'{"bm": 1}': 2e-3}}, 0.5, [0.7])
    b = _both_cache(tmp_path / "b", {"dense": {"{}": 5e-3}}, 1.0, [0.8])
    out = tmp_path / "out.json"
    assert merge_files([a, b], out) == 1
    merged = TuneCache(tmp_path / "m")
    merged.path.parent.mkdir()
    merged.path.write_bytes(out.read_bytes())
    assert merged.lookup(BOTH, 0.75) == {"dense": {"{}": 5e-3}}


def test_merge_into_an_out_file_keeps_its_unreadable_entries_beside_the_check(tmp_path):
    """--out's own entries that no reader can use stay as they are (``CacheStore``'s
    rule); the channel-rate check of the merge must not read them as entries."""
    out = _both_cache(tmp_path / "o", {"gather": {'{"bm": 1}': 2e-3}}, 0.5, [0.7])
    data = json.loads(out.read_text())
    data["entries"]["odd"] = {"meta": {"channel_rate": 0.5}, "spec": "no spec"}
    out.write_text(json.dumps(data))
    b = _both_cache(tmp_path / "b", {"gather": {'{"bm": 2}': 9e-3}}, 1.0, [0.8])
    assert merge_files([b], out) == 2
    entries = json.loads(out.read_text())["entries"]
    assert entries["odd"] == {"meta": {"channel_rate": 0.5}, "spec": "no spec"}
