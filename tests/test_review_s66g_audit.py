"""``laudtriton cache`` and ``laudtriton sweep`` audited (session 66g): what ``cache
clear`` says of a corrupt file it moved aside, ``cache merge --out`` under another
device's file name, and a sweep into a cache file it could never write, refused before
any timing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from laudtriton.ops import BlockSpec
from laudtriton.tune import sweep as sweep_mod
from laudtriton.tune.cache import TuneCache
from laudtriton.tune.cache_command import add_cache_parser
from laudtriton.tune.commands import add_sweep_parser

SPEC = BlockSpec(24, 6, 24, 1, False, (10, 10), "spatial", 2)


@pytest.fixture(autouse=True)
def _own_cache_folder(tmp_path_factory, monkeypatch):
    """No test reads or writes the checkout's autotune_cache/ (nor a shell's folder)."""
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path_factory.mktemp("default")))
    monkeypatch.delenv("LAUDTRITON_CACHE", raising=False)


def _run(argv: list[str]) -> int:
    """Parse ``argv`` as ``laudtriton`` would (its cache and sweep commands) and run it,
    without ``cli.main``'s logging set-up."""
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    add_cache_parser(sub)
    add_sweep_parser(sub)
    args = p.parse_args(argv)
    return args.func(args)


def _foreign(path: Path, device: str = "Some Other CPU 64t") -> None:
    """A cache file at ``path`` holding one timing of ``device``."""
    c = TuneCache(path.parent / "src")
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    data = json.loads(c.path.read_text())
    path.write_text(json.dumps({**data, "device": device}))


def test_clear_of_a_corrupt_file_says_it_moved_it_aside(tmp_path, capsys):
    """``cache clear`` of a corrupt file warned that it moved the file aside, not
    deleted, then printed "removed 0 entries (FILE)", as of a file it had emptied."""
    c = TuneCache(tmp_path)
    c.path.write_text("{truncated")
    assert _run(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    (aside,) = tmp_path.glob(c.path.name + ".unusable-*")
    out = capsys.readouterr().out
    assert "removed 0 entries" not in out
    assert out.startswith(f"{c.path} is corrupt (") and out.endswith(
        f": not a usable cache file, moved it aside to {aside.name}, nothing deleted\n")
    assert aside.read_text() == "{truncated" and not c.path.exists()


def test_merge_refuses_another_devices_file_name(tmp_path, capsys):
    """``cache merge --out`` wrote this device's timings under another device's file
    name (another thread count's): that device's readers ignored the file ("is for
    device ..."), and this one's never opened it."""
    c = TuneCache(tmp_path / "src")
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    other = c.path.name.replace(c.path.name.split(".v")[0], "Other_CPU_avx2_7t")
    out = tmp_path / "dst" / other
    assert _run(["cache", "merge", str(c.path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"laudtriton cache: error: --out {str(out)!r}: ") and (
        f"the cache file of device {c.device!r} is named {c.path.name!r}") in err
    assert not out.exists() and not out.parent.exists()
    # its own name, and a name of no device's cache form (a shard's), are written
    assert _run(["cache", "merge", str(c.path), "--out", str(tmp_path / "dst" / c.path.name)]) == 0
    assert _run(["cache", "merge", str(c.path), "--out", str(tmp_path / "m.json")]) == 0


def test_sweep_into_a_foreign_cache_file_is_refused_before_timing(tmp_path, capsys,
                                                                   monkeypatch):
    """A sweep whose cache file (this device's name) holds another device's timings, or
    is not a regular file, timed every item, then said "cache NOT saved" with exit
    code 0; it is refused now, before any timing, naming the file."""
    def timed(*args: object, **kwargs: object) -> None:
        raise AssertionError("timed")

    monkeypatch.setattr(sweep_mod, "time_variants", timed)
    path = TuneCache(tmp_path).path
    _foreign(path)
    argv = ["sweep", "--rates", "0.5", "--blocks", "layer4.2", "--input-size", "32",
            "--cache-dir", str(tmp_path), "--csv", str(tmp_path / "s.csv"), "--no-progress"]
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"laudtriton sweep: error: the cache file {str(path)!r} holds "
                          "timings of device 'Some Other CPU 64t'") and "--cache-dir" in err
    assert err.count("\n") == 1 and not (tmp_path / "s.csv").exists()
    path.unlink()
    path.mkdir()  # not a file at all
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert f"the cache file {str(path)!r} cannot be read (not a regular file)" in err


@pytest.mark.parametrize("spoil", ["foreign", "corrupt"])
def test_ls_says_on_its_line_that_the_file_was_ignored(tmp_path, capsys, spoil):
    """``cache ls`` of a file under this device's name that holds another device's timings,
    or is corrupt, printed "0 entries, 0 timings" as of an empty file: only a log warning
    above said the file had been ignored."""
    c = TuneCache(tmp_path)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    if spoil == "foreign":
        data = json.loads(c.path.read_text())
        c.path.write_text(json.dumps({**data, "device": "Other CPU 64t"}))
    else:
        c.path.write_text("{corrupt")
    assert _run(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "0 entries, 0 timings" in line
    assert "(not read: " in line and ("Other CPU 64t" in line if spoil == "foreign"
                                      else "corrupt" in line)
