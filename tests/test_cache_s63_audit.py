"""Session 63's audit of the autotune cache files and ``laudtriton cache``: a cache file
with a name given twice in one JSON object (two hand-merged files) is said, naming the
file, never read silently as one of the two; the shipped files load as before, in
silence; ``cache ls --all`` says why a stale row with the current versions and source is
hidden (clustered masks, a variant not registered here)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from laudtriton.ops import BlockSpec
from laudtriton.tune.cache import TuneCache
from laudtriton.tune.cache_file import is_valid_entry, load_cache_file
from laudtriton.tune.cache_merge import merge_files

SPEC = BlockSpec(48, 12, 48, 1, False, (13, 13), "spatial", 3)
SHIPPED = Path(__file__).resolve().parent.parent / "autotune_cache"


def _file_with_a_repeated_key(folder: Path) -> tuple[Path, str]:
    """The cache file of ``folder`` holding one entry twice under one key (first 2 ms,
    then 1 ms: the text json reads as the last), as a hand merge of two files leaves it;
    returns (its path, the key)."""
    cache = TuneCache(folder)
    cache.record(SPEC, 0.5, {"dense": {"{}": 2e-3}})
    data = json.loads(cache.path.read_text())
    (key, first), = data["entries"].items()
    last = {**first, "timings": {"{}": 1e-3}}
    text = (f'{{"schema": 1, "device": {json.dumps(data["device"])}, "entries": {{'
            f'{json.dumps(key)}: {json.dumps(first)}, {json.dumps(key)}: {json.dumps(last)}}}}}')
    cache.path.write_text(text)
    return cache.path, key


def test_a_key_given_twice_is_said_naming_the_file(tmp_path, caplog):
    path, key = _file_with_a_repeated_key(tmp_path)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        got = TuneCache(tmp_path).lookup(SPEC, 0.5)
    assert got == {"dense": {"{}": 1e-3}}  # the last of the two, as before
    said = [r.getMessage() for r in caplog.records if "twice" in r.getMessage()]
    assert len(said) == 1 and str(path) in said[0] and key[:40] in said[0], caplog.text


def test_a_record_before_any_read_says_the_repeated_key_it_drops(tmp_path, caplog):
    """A TuneCache that records before it reads (gpucheck's part 3) rewrote such a file
    silently, the first copy of the key gone (review of 40f2473): the write says so."""
    path, key = _file_with_a_repeated_key(tmp_path)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        TuneCache(tmp_path).record(SPEC, 0.25, {"dense": {"{}": 3e-3}})
    said = [r.getMessage() for r in caplog.records if "twice" in r.getMessage()]
    assert len(said) == 1 and str(path) in said[0] and key[:40] in said[0], caplog.text
    assert "keeps the last" in said[0]
    assert path.read_text().count(json.dumps(key)) == 1  # (the key as JSON writes it)


def test_merge_says_a_key_given_twice_in_an_input(tmp_path, caplog):
    path, _ = _file_with_a_repeated_key(tmp_path / "a")
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert merge_files([path], tmp_path / "out.json") == 1
    assert any("twice" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records), caplog.text


@pytest.mark.parametrize("name", sorted(p.name for p in SHIPPED.glob("*.v1.json")
                                        if not p.name.startswith("calibration_")))
def test_the_shipped_files_load_as_they_are_in_silence(name, caplog):
    path = SHIPPED / name
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        device, entries = load_cache_file(path, rewritten=False)
    data = json.loads(path.read_bytes())
    assert caplog.records == []
    assert device == data["device"] and entries == data["entries"]
    assert all(is_valid_entry(e) for e in entries.values())


def _ls_all(folder: Path, capsys) -> list[str]:
    """The lines ``laudtriton cache ls --all --cache-dir folder`` prints."""
    import argparse

    from laudtriton.tune.cache_command import add_cache_parser

    p = argparse.ArgumentParser(prog="laudtriton")
    add_cache_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["cache", "ls", "--all", "--cache-dir", str(folder)])
    capsys.readouterr()
    assert args.func(args) == 0
    return capsys.readouterr().out.splitlines()


def test_ls_all_says_a_clustered_entry_is_hidden_for_its_masks(tmp_path, capsys):
    """A stale row named only the versions and source it was timed with, the current
    ones for an entry of clustered masks: nothing said why it was hidden."""
    TuneCache(tmp_path).record(SPEC, 0.5, {"dense": {"{}": 1e-3}}, {"clustered": True})
    stale = [ln for ln in _ls_all(tmp_path, capsys) if "(stale: " in ln]
    assert len(stale) == 1 and "clustered masks" in stale[0], stale


def test_ls_all_says_a_variant_is_not_registered_here(tmp_path, capsys):
    cache = TuneCache(tmp_path)
    cache.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    data = json.loads(cache.path.read_text())
    (key, entry), = data["entries"].items()
    data["entries"] = {key.replace("|dense|", "|mine|"): {**entry, "variant": "mine"}}
    cache.path.write_text(json.dumps(data))
    stale = [ln for ln in _ls_all(tmp_path, capsys) if "(stale: " in ln]
    assert len(stale) == 1 and "'mine' not registered here" in stale[0], stale
