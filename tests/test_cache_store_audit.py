"""Audit of the autotune cache's file handling: entry fields its readers refuse, and a
merge into something that is not a regular file."""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import threading

import pytest

from laudtriton.ops import BlockSpec
from laudtriton.plot_rows import rows_from_cache
from laudtriton.tune.cache import TuneCache
from laudtriton.tune.cache_merge import NotACacheError, merge_files

SPEC = BlockSpec(48, 12, 48, 1, False, (13, 13), "spatial", 3)
BOTH = BlockSpec(48, 12, 48, 1, False, (13, 13), "both", 3, channel_groups=4)
META = {"models": {"laud_resnet50": ["layer1.0"]}, "asked_rates": [0.5], "input_size": 13}


def _with_bad_entry(tmp_path, spec: BlockSpec, field: str, value: object) -> TuneCache:
    """A cache file holding two entries of ``spec``, the one at rate 0.5 with meta
    ``field`` set to ``value`` by hand (as an editor or another tool could write it)."""
    c = TuneCache(tmp_path, enabled=True)
    c.record(spec, 0.25, {"dense": {"{}": 2e-3}}, meta={**META, field: 0.25})
    c.record(spec, 0.5, {"dense": {"{}": 1e-3}}, meta={**META, field: 0.5})
    data = json.loads(c.path.read_text())
    for e in data["entries"].values():
        if e["rate_bucket"] == 0.5:
            e["meta"][field] = value
    c.path.write_text(json.dumps(data))
    return c


@pytest.mark.parametrize("value", [[0.5], {"r": 0.5}, "0.5", True, 1.5, -0.5, math.nan])
def test_a_channel_rate_that_is_not_a_rate_drops_the_entry(tmp_path, caplog, value):
    """A sweep keys its items by the cache entry's "channel_rate" (``sweep._items``): a
    list there (a hand-edited file) made every later sweep of the block die with
    "TypeError: unhashable type"; the entry is malformed, as one with a rate out of
    range, and record refuses to write one."""
    c = _with_bad_entry(tmp_path, BOTH, "channel_rate", value)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        fresh = TuneCache(tmp_path, enabled=True)
        assert fresh.lookup(BOTH, 0.5) is None and fresh.entry_meta(BOTH, 0.5) == {}
        assert fresh.entry_meta(BOTH, 0.25)["channel_rate"] == 0.25
    assert "1 malformed entries ignored" in caplog.text
    with pytest.raises(ValueError, match="malformed"):
        c.record(BOTH, 0.75, {"dense": {"{}": 1e-3}}, meta={"channel_rate": value})
    assert TuneCache(tmp_path, enabled=True).rates(BOTH) == [0.25]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5])
def test_a_flops_ratio_plot_refuses_drops_the_entry_not_the_plot(tmp_path, caplog, value):
    """``plot --from cache`` checks every row's flops_ratio (finite, >= 0, as a sweep
    CSV's): one entry with NaN there, which the cache kept and record wrote, failed the
    whole plot ("row 2, column 'flops_ratio': nan is not a finite ratio >= 0")."""
    c = _with_bad_entry(tmp_path, SPEC, "flops_ratio", value)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        rows = rows_from_cache(TuneCache(tmp_path, enabled=True))
    assert "1 malformed entries ignored" in caplog.text
    assert [(r["rate"], r["flops_ratio"]) for r in rows] == [(0.25, 0.25)]
    with pytest.raises(ValueError, match="malformed"):
        c.record(SPEC, 0.75, {"dense": {"{}": 1e-3}}, meta={"flops_ratio": value})


def test_merge_into_a_pipe_or_a_directory_is_refused_without_reading_it(tmp_path):
    """merge_files read an existing --out to check it is a cache file: a pipe there hung
    the merge (the CLI refuses one first; the function did not)."""
    c = TuneCache(tmp_path / "c", enabled=True)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    got: dict[str, BaseException] = {}

    def merge() -> None:
        try:
            merge_files([c.path], fifo)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            got["error"] = e

    t = threading.Thread(target=merge, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # blocked reading the pipe: a writer that closes at once ends it
        with open(fifo, "wb"):
            pass
        t.join(10)
        pytest.fail("merge_files waited for a writer of the pipe --out names")
    assert isinstance(got.get("error"), NotACacheError)
    assert "out.json exists and is not a regular file" in str(got["error"])
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(NotACacheError, match="folder.json exists and is not a regular file"):
        merge_files([c.path], folder)
    assert folder.is_dir() and not any(folder.iterdir())


@pytest.mark.parametrize("with_filelock", [True, False])
def test_merge_through_a_link_into_a_missing_folder_with_or_without_filelock(
        tmp_path, monkeypatch, with_filelock):
    """``cache merge --out LINK`` where LINK points into a folder not made yet: filelock
    made that folder when it took the lock there, and the merge went through; without
    filelock (not a dependency) the fcntl lock could not be opened and the merge failed
    ("No such file or directory: .../f.json.lock"). The folder the file is written in
    is made either way; the link stays and points at the merged file."""
    import sys

    if not with_filelock:
        monkeypatch.setitem(sys.modules, "filelock", None)  # import filelock -> ImportError
    c = TuneCache(tmp_path / "c", enabled=True)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    target = tmp_path / "shared" / "sub" / "f.json"
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert merge_files([c.path], link) == 1
    assert link.is_symlink() and target.is_file()
    assert json.loads(target.read_text())["entries"] == json.loads(c.path.read_text())["entries"]


def test_a_full_disk_is_said_as_such_not_as_an_unwritable_directory(tmp_path, monkeypatch):
    """Any OSError of a write (a full disk, an I/O error) left ``unsaved_why`` saying
    "directory not writable: DIR", which ``laudtriton sweep`` prints ("cache NOT saved
    (directory not writable: ...)") of a writable directory; it names the error now.
    The file keeps what it held (the write is atomic), the record stays in memory."""
    import errno

    from laudtriton.tune import cache_store

    c = TuneCache(tmp_path, enabled=True)
    c.record(SPEC, 0.25, {"dense": {"{}": 2e-3}})
    before = c.path.read_bytes()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_store, "write_cache_file", full)
    c.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
    assert not c.saved and "No space left on device" in c.unsaved_why
    assert str(tmp_path) in c.unsaved_why and "not writable" not in c.unsaved_why
    assert c.path.read_bytes() == before and c.lookup(SPEC, 0.5) == {"dense": {"{}": 1e-3}}
