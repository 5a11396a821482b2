"""``laudtriton cache ls|clear|merge`` audited: the file of another torch thread count
(``--threads``), the temp files a write killed mid-way leaves beside a cache file, and
folders or files that cannot be read, each said in one line naming it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from laudtriton.bench_command import torch_threads
from laudtriton.cli import main
from laudtriton.ops import BlockSpec
from laudtriton.tune import atomic, cache_command
from laudtriton.tune.cache import TuneCache

SPEC = BlockSpec(24, 6, 24, 1, False, (10, 10), "spatial", 2)


@pytest.fixture(autouse=True)
def _own_cache_folder(tmp_path_factory, monkeypatch):
    """No test reads or writes the checkout's autotune_cache/ (nor a shell's folder)."""
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path_factory.mktemp("default")))
    monkeypatch.delenv("LAUDTRITON_CACHE", raising=False)


def _file_of(folder: Path, threads: int, seconds: float) -> Path:
    """A cache file in ``folder`` of ``threads`` torch threads holding one timing."""
    with torch_threads(threads):
        cache = TuneCache(folder, device="cpu")
        cache.record(SPEC, 0.5, {"dense": {"{}": seconds}})
    return cache.path


def _aged(path: Path) -> Path:
    """``path`` made older than ``atomic.ORPHAN_AGE``."""
    past = path.stat().st_mtime - atomic.ORPHAN_AGE - 5
    os.utime(path, (past, past))
    return path


def test_ls_and_clear_reach_the_file_of_another_thread_count(tmp_path, capsys, monkeypatch):
    """The file's name holds torch's thread count (``bench --threads`` writes one per
    count): ls and clear reached only this process's count's file. ``--threads N``
    names the other, torch's count is this process's again afterwards."""
    # (3 threads: more than this 2-CPU machine's CPUs, allowed: nothing is timed)
    before = torch.get_num_threads()
    one, three = _file_of(tmp_path, 1, 1e-3), _file_of(tmp_path, 3, 3e-3)
    assert one.name.endswith("_1t.v1.json") and three.name.endswith("_3t.v1.json")
    assert main(["cache", "ls", "--cache-dir", str(tmp_path), "--threads", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{three} (") and out[2].split()[-2:] == ["1", "3.000"]
    assert out[-1] == "other thread counts' files here: 1t (`--threads N` lists one)"
    assert torch.get_num_threads() == before
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0  # 0: this count's
    assert f"_{before}t.v1.json" in capsys.readouterr().out.splitlines()[0]
    assert main(["cache", "clear", "--cache-dir", str(tmp_path), "--threads", "1"]) == 0
    assert capsys.readouterr().out == f"removed 1 entry ({one})\n"
    assert not one.exists() and three.exists() and torch.get_num_threads() == before


@pytest.mark.parametrize("cmd", ["ls", "clear"])
@pytest.mark.parametrize("value,says", [
    ("-1", "--threads must be in [0, "),
    ("999999", "must be in [0, 1024]"),
    ("x", "argument --threads: invalid int value: 'x'"),
])
def test_threads_out_of_range_is_one_line(tmp_path, capsys, cmd, value, says):
    """0 to MAX_THREADS (not bench's CPU bound: a 1-CPU machine lists the shipped 2t files)."""
    before = torch.get_num_threads()
    try:
        code = main(["cache", cmd, "--cache-dir", str(tmp_path), "--threads", value])
    except SystemExit as e:  # argparse's refusal of a non-integer
        code = e.code
    assert code == 2 and torch.get_num_threads() == before
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_threads_with_a_cuda_device_is_refused():
    """A GPU's cache file names no thread count: --threads with it would be ignored."""
    with pytest.raises(ValueError, match="--threads 1: only a cpu cache file's name"):
        cache_command._check_threads(1, "cuda")
    cache_command._check_threads(0, "cuda")


def test_a_merge_killed_mid_write_leaves_a_temp_file_the_next_merge_removes(tmp_path):
    """A merge killed mid-write left ``<out>.<random>.tmp`` (a whole copy of the cache)
    that only a later record removed; a merge (any write of the file) now removes those
    older than ORPHAN_AGE, under the file's lock, and leaves a fresh one."""
    src = _file_of(tmp_path / "in", 1, 1e-3)
    out = tmp_path / "merged.json"
    script = textwrap.dedent(f"""
        import os, signal
        from laudtriton.tune import atomic
        from laudtriton.tune.cache_merge import merge_files
        atomic.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        merge_files([{str(src)!r}], {str(out)!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    left = sorted(tmp_path.glob(f"{out.name}.*.tmp"))  # <name>.laudtriton-<8 random>.tmp
    assert len(left) == 1 and left[0].read_text().startswith("{") and not out.exists()
    fresh = tmp_path / f"{out.name}.laudtriton-abcd1234.tmp"
    fresh.write_text("{")
    _aged(left[0])
    assert main(["cache", "merge", str(src), "--out", str(out)]) == 0
    assert sorted(tmp_path.glob(f"{out.name}.*.tmp")) == [fresh] and out.is_file()
    assert atomic.temp_files(out) == [fresh]


def test_temp_files_are_only_names_a_write_gives(tmp_path):
    """A user's '<out>.backup.old.tmp' beside a merge's --out is not a temp file of it."""
    out = tmp_path / "merged.json"
    mine = tmp_path / f"{out.name}.laudtriton-k3_x9z0q.tmp"
    theirs = [tmp_path / f"{out.name}.{tag}.tmp" for tag in
              ("backup.old", "Backup", "a-b", "toolongname", "original", "k3_x9z0q",
               "laudtriton-short")]
    for p in [mine, *theirs]:
        p.write_text("x")
        _aged(p)
    removed = atomic.remove_orphan_temps(out)
    assert not mine.exists() and all(p.exists() for p in theirs)
    assert removed == 1 and atomic.temp_files(out) == []


def test_ls_names_temp_files_and_clear_removes_the_old_ones(tmp_path, capsys):
    """ls said nothing of them and clear left them (even with the file gone); ls now
    names them, clear removes those older than ORPHAN_AGE and keeps a fresh one (a write
    of another process may be under way), with or without the cache file."""
    path = _file_of(tmp_path, torch.get_num_threads(), 1e-3)
    old, fresh = (tmp_path / f"{path.name}.laudtriton-{tag}.tmp"
                  for tag in ("old00000", "new00000"))
    old.write_text("{")
    fresh.write_text("{")
    _aged(old)
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(f"2 temp file(s) of writes of it (a write killed mid-way, or one "
                           f"under way): {fresh.name}, {old.name}; those over")
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == (
        f"removed 1 entry ({path}; removed 1 temp file(s) of killed writes, kept 1 under "
        f"{atomic.ORPHAN_AGE} s old (a write may be under way))\n")
    assert not old.exists() and fresh.exists() and not path.exists()
    _aged(fresh)
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == (
        f"removed 0 entries ({path}: no file; removed 1 temp file(s) of killed writes)\n")
    assert not fresh.exists()


def _unreadable_below(monkeypatch, folder: Path) -> None:
    """Every path inside ``folder`` fails to stat with EACCES (a folder without search
    permission; tests run as root, whom chmod does not stop)."""
    real = Path.stat

    def stat(self, *args, **kwargs):
        if os.path.dirname(os.path.abspath(self)) == str(folder):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)


@pytest.mark.parametrize("cmd", ["ls", "clear"])
@pytest.mark.parametrize("by_env", [False, True])
def test_a_cache_folder_that_cannot_be_read_is_named(tmp_path, capsys, monkeypatch, cmd,
                                                     by_env):
    """It was "error: [Errno 13] Permission denied: '<file>'", naming no option."""
    folder = tmp_path / "locked"
    folder.mkdir()
    _unreadable_below(monkeypatch, folder)
    if by_env:
        monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(folder))
    assert main(["cache", cmd] + ([] if by_env else ["--cache-dir", str(folder)])) == 2
    what = "LAUDTRITON_CACHE_DIR" if by_env else "--cache-dir"
    assert capsys.readouterr().err == (f"laudtriton cache: error: {what} {str(folder)!r} "
                                       "cannot be read (Permission denied)\n")


def test_ls_says_a_file_it_cannot_read_was_not_read(tmp_path, capsys, monkeypatch):
    """An unreadable cache file was listed as "0 entries, 0 timings" with nothing after
    the path (a warning above named the error)."""
    path = _file_of(tmp_path, torch.get_num_threads(), 1e-3)

    real = Path.read_bytes

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache_command, "open", refuse, raising=False)
    monkeypatch.setattr(Path, "read_bytes",
                        lambda self: refuse() if self == path else real(self))
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(
        "0 entries, 0 timings (not read: Permission denied)")


def test_ls_says_the_folder_is_missing(tmp_path, capsys):
    """A mistyped --cache-dir was listed as "(no file yet)", as an empty folder is."""
    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "typo")]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(
        "0 timings (no file yet: the folder does not exist)")


@pytest.mark.parametrize("argv,says", [
    (["clear"], "cannot be read (not a regular file); not deleting it"),
    (["merge", "{file}", "--out", "{tmp}/o.json"], "a directory, not a cache file"),
    (["merge", "{tmp}/in.json", "--out", "{file}"], "is a directory; give a file name"),
    (["ls", "--device", "mps"], "--device 'mps' unknown"),
    (["merge", "{tmp}/missing.json", "--out", "{tmp}/o.json"], "cache files not found"),
])
def test_a_cache_file_that_is_a_directory_or_a_bad_option_is_one_line(tmp_path, capsys,
                                                                        argv, says):
    """No traceback: one line naming what is wrong."""
    path = TuneCache(tmp_path, device="cpu").path
    path.mkdir()
    _file_of(tmp_path / "src", 1, 1e-3).rename(tmp_path / "in.json")
    words = [w.format(file=path, tmp=tmp_path) for w in argv]
    assert main(["cache", words[0], "--cache-dir", str(tmp_path), *words[1:]]
                if words[0] in ("ls", "clear") else ["cache", *words]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("laudtriton cache: error:") and says in err[-1]
    assert not any("Traceback" in line for line in err) and path.is_dir()


def test_plot_says_a_missing_cache_variable_folder_by_name(tmp_path, capsys, monkeypatch):
    """$LAUDTRITON_CACHE_DIR naming a missing folder: plot (from the cache, or a CSV with
    its predicted line) refuses it in one line naming the variable, before making --out
    (test_plot's failures under such a variable were the tests', which now set it)."""
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path / "missing"))
    assert main(["plot", "--from", "cache", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (
        f"laudtriton plot: error: LAUDTRITON_CACHE_DIR {str(tmp_path / 'missing')!r} does "
        "not exist; give the directory that holds the autotune cache and calibration "
        "(`laudtriton sweep` and `laudtriton calibrate` write them), or unset it for the "
        "default\n")
    assert not (tmp_path / "o").exists()
