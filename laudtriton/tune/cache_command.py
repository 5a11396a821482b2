"""``laudtriton cache ls|clear|merge``: the persistent autotune cache of this device
listed or cleared (on a CPU, the file of torch's thread count, or of ``--threads N``'s),
with the temp files that writes of it killed mid-write left (listed; removed by clear);
cache files (machines, shards) merged into one."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path

from ..bench_command import torch_threads
from ..ops.registry import get_variant
from ..schedule import format_rate
from . import cache_file
from .atomic import ORPHAN_AGE, remove_orphan_temps, temp_files
from .cache import CacheEntry, TuneCache
from .cache_merge import ForeignFileName, NotACacheError, merge_files
from .keys import disabled_by
from .numbers import ascii_int
from .options import check_device, fail
from .paths import check_cache_dir, check_nonempty, check_output_path

MAX_THREADS = 1024  # ``cache --threads``: torch makes threads only when it uses them


def _count(n: int, one: str, many: str) -> str:
    """``n`` and the noun it takes: "1 entry", "0 entries"."""
    return f"{n} {one if n == 1 else many}"


def add_cache_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``cache ls|clear|merge`` to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser("cache", help="list, clear or merge autotune cache files",
                              description="The persistent autotune cache.")
    sub = p.add_subparsers(dest="cache_cmd", metavar="ls|clear|merge")
    sub.required = True
    for name, help_ in (("ls", "list the cached timings of this device"),
                        ("clear", "delete this device's cache file")):
        q = sub.add_parser(name, help=help_)
        q.add_argument("--cache-dir", default=None,
                       help="the cache directory (default: the one `laudtriton env` shows)")
        q.add_argument("--device", default="cpu",
                       help="whose cache file: cpu (default) or cuda[:N]")
        q.add_argument("--threads", type=ascii_int, default=0,
                       help="the cpu cache file of this torch thread count (its name "
                            "ends in <N>t; bench --threads writes one per count), from 0 "
                            "(default: this process's count, as `laudtriton env` shows) "
                            f"to {MAX_THREADS}, whatever this machine's CPUs")
        if name == "ls":
            q.add_argument("--all", action="store_true",
                           help="also list entries hidden as stale (other versions or "
                                "sources, clustered masks, or a variant not registered "
                                "here)")
    q = sub.add_parser("merge", help="merge cache files (machines, shards) into one")
    q.add_argument("files", nargs="+", help="cache JSON files")
    q.add_argument("--out", required=True, help="output cache file (merged into if present)")
    p.set_defaults(func=run_cache)
    return p


def run_cache(args: argparse.Namespace) -> int:
    """Run ``laudtriton cache ls|clear|merge``. Returns the exit code."""
    try:
        if args.cache_cmd == "merge":
            for f in args.files:
                check_nonempty(f, "an input file")
            out = os.path.expanduser(args.out)  # blank, or a trailing slash: refused by
            # check_output_path; written atomically; missing folders made by merge_files,
            # once it read the inputs
            check_output_path(out, "--out", replaced=True, new_dirs=True)
            try:
                n = merge_files(args.files, out)
            except cache_file.LockTimeout:  # (an OSError too)
                raise ValueError(f"--out {args.out!r}: another process held its lock "
                                 f"({cache_file.lock_path_of(Path(out))}) for "
                                 f"{cache_file.LOCK_TIMEOUT} s; "
                                 "nothing written") from None
            except OSError as e:  # the inputs are only read, and unreadable ones skipped
                # (the file named: the lock beside --out, or a folder merge made)
                what = (f": {e.filename}" if e.filename and Path(e.filename) != Path(out)
                        else "")
                raise ValueError(f"--out {args.out!r} cannot be written "
                                 f"({e.strerror or e}{what})") from None
            except NotACacheError as e:
                raise ValueError(f"--out {e}") from None
            except ForeignFileName as e:
                raise ValueError(f"--out {args.out!r}: {e}") from None
            print(f"{args.out}: {_count(n, 'entry', 'entries')} ({len(args.files)} input "
                  "file(s) given; any input skipped as unusable is named in a warning above)")
            return 0
        check_cache_dir(args.cache_dir)
        dev = check_device(args.device)
        _check_threads(args.threads, dev.type)
        # the file is named when the TuneCache is made, after torch's thread count; the
        # count is this process's again after the command (a caller of ``main``)
        with torch_threads(args.threads):
            cache = TuneCache(args.cache_dir, device=dev)
            if not cache.enabled:
                return fail("cache", f"the cache is disabled ({disabled_by()})")
            _check_folder(cache, args.cache_dir)
            if args.cache_cmd == "clear":
                return _clear(cache)
            _print_ls(cache, args.all)
    except ValueError as e:
        return fail("cache", str(e))
    return 0


def _check_threads(threads: int, device_type: str) -> None:
    """A ValueError naming ``--threads`` unless it is in [0, ``MAX_THREADS``], and 0 for
    a CUDA device (its file's name holds no thread count). Not bench's bound (the CPUs
    this process may run on): listing or clearing a file times nothing, and a machine
    with 1 CPU must reach the shipped 2t files."""
    if not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"--threads must be in [0, {MAX_THREADS}] (0: this process's "
                         f"count), got {threads}")
    if threads and device_type != "cpu":
        raise ValueError(f"--threads {threads}: only a cpu cache file's name holds a thread "
                         f"count; leave it out for --device {device_type}")


def _check_folder(cache: TuneCache, cache_dir: str | None) -> None:
    """A ValueError naming the cache folder (``--cache-dir``, $LAUDTRITON_CACHE_DIR or
    the default) when it cannot be searched: its file could be neither listed nor
    cleared (the bare OSError named only the file)."""
    try:
        cache.path.exists()
    except OSError as e:
        env = os.environ.get("LAUDTRITON_CACHE_DIR")
        where = (f"--cache-dir {cache_dir!r}" if cache_dir is not None else
                 f"LAUDTRITON_CACHE_DIR {env!r}" if env else f"the cache folder {str(cache.dir)!r}")
        raise ValueError(f"{where} cannot be read ({e.strerror or e})") from None


def _clear(cache: TuneCache) -> int:
    """``cache clear``: the file deleted (``TuneCache.clear``; one that is not a usable
    cache file moved aside instead, and said so), and the temp files that writes of it
    killed mid-write left (``atomic.remove_orphan_temps``, under the file's lock; a fresh
    one may be a write under way: kept). Returns the exit code."""
    existed = Path(cache.path).is_file()  # a mistyped --cache-dir: said, as ls says it
    n = cache.clear()  # a ValueError if the file holds another device's timings
    gone, temps = "", len(temp_files(cache.path))
    if temps:  # (no lock file made in a folder where there is none)
        try:
            with cache_file.file_lock(cache_file.lock_path_of(cache.path)):
                k = remove_orphan_temps(cache.path)
            gone = f"; removed {k} temp file(s) of killed writes" + (
                f", kept {temps - k} under {ORPHAN_AGE} s old (a write may be under way)"
                if temps > k else "")
        except OSError as e:  # the file is cleared: said, not failed
            gone = f"; its {temps} temp file(s) left ({e.strerror or e})"
    if cache.cleared_aside is not None:  # not deleted: its bytes may be read by hand
        aside, why = cache.cleared_aside
        print(f"{cache.path} {why}: not a usable cache file, moved it aside to "
              f"{aside.name}, nothing deleted{gone}")
        return 0
    print(f"removed {_count(n, 'entry', 'entries')} "
          f"({cache.path}{'' if existed else ': no file'}{gone})")
    return 0


def _file_note(cache: TuneCache) -> str:
    """What ``cache ls`` adds after the path: nothing for a cache file of this device it
    can read, " (no file yet)" (and whether its folder is missing), or, for something
    there that is not a file (a directory), cannot be read, holds another device's
    timings or is corrupt, that it was not read and why (a warning above says it too;
    the line itself said "0 entries" as of an empty file)."""
    path = Path(cache.path)
    if not path.exists():
        return " (no file yet)" if path.parent.is_dir() else (
            " (no file yet: the folder does not exist)")
    if not path.is_file():  # (a pipe is not opened: that would wait for a writer)
        return " (not read: not a file)"
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        return f" (not read: {e.strerror or e})"
    try:
        data = cache_file.parse_cache(raw)
    except cache_file.UnusableCacheFile as e:
        return f" (not read: the file {e})"
    found = data.get("device")
    if data["entries"] and found != cache.device:  # (as the reader ignores it)
        return f" (not read: the file holds timings of device {found!r})"
    return ""


def _other_files(cache: TuneCache) -> str:
    """The lines ``cache ls`` ends with, if any: the thread counts of this CPU's other
    cache files in the folder (``--threads`` lists one), and the temp files of writes of
    this one (killed mid-write, or under way)."""
    lines = []
    m = re.fullmatch(r"(.+)_(\d+)t(\.v\d+\.json)", cache.path.name)
    if m:  # a CPU's file (a GPU's, "<name>_sm90.v1.json", names no thread count)
        mine = re.compile(re.escape(m[1]) + r"_(\d+)t" + re.escape(m[3]))
        try:
            counts = sorted(int(f[1]) for p in cache.dir.iterdir()
                            if (f := mine.fullmatch(p.name)) and p.name != cache.path.name)
        except OSError:  # a folder that cannot be listed, or is missing
            counts = []
        if counts:
            lines.append("other thread counts' files here: "
                         + ", ".join(f"{c}t" for c in counts) + " (`--threads N` lists one)")
    temps = temp_files(cache.path)
    if temps:
        lines.append(f"{len(temps)} temp file(s) of writes of it (a write killed mid-way, "
                     f"or one under way): {', '.join(t.name for t in temps[:3])}"
                     f"{', ...' if len(temps) > 3 else ''}; those over {ORPHAN_AGE} s old "
                     "are removed by the next write or `cache clear`")
    return "\n".join(lines)


def _hidden_why(e: CacheEntry) -> str:
    """What ``cache ls --all`` adds to the row of a stale entry whose versions and source
    may be the current ones: that its variant is not registered here, or that it was
    timed on clustered masks (a sweep before --clustered stopped writing the cache);
    "" otherwise (its versions or its source then say why)."""
    try:
        get_variant(e.variant)
    except ValueError:
        return f"; variant {e.variant!r} not registered here"
    return "; clustered masks" if e.meta.get("clustered") else ""


def _print_ls(cache: TuneCache, include_stale: bool) -> None:
    entries = cache.entries(include_stale=include_stale)
    groups: dict[tuple, list] = {}
    for e in entries:  # a stale timing per version and source: one row each (those of
        # two torch versions in one row counted as two configs, the slower one unseen)
        old = (json.dumps(e.meta["versions"], sort_keys=True), str(e.meta["source_hash"]),
               _hidden_why(e)) if e.meta["stale"] else ("", "", "")
        groups.setdefault((e.spec.short(), e.rate_bucket, e.variant, e.meta["stale"], *old),
                          []).append(e)
    hidden = 0 if include_stale else sum(
        1 for e in cache.entries(include_stale=True) if e.meta["stale"])
    print(f"{cache.path} ({cache.device}): {_count(len(groups), 'entry', 'entries')}, "
          f"{_count(len(entries), 'timing', 'timings')}"
          + _file_note(cache)
          + (f"; {_count(hidden, 'stale timing', 'stale timings')} hidden (--all lists them)"
             if hidden else ""))
    more = _other_files(cache)
    if not groups:
        if more:
            print(more)
        return
    w = max(len(k[0]) for k in groups)
    print(f"{'block spec':<{w}}  {'rate':>5}  {'variant':<14} {'configs':>7} {'best ms':>9}")
    for (spec, rate, variant, stale, versions, src, why), es in sorted(groups.items()):
        fin = [e.seconds for e in es if math.isfinite(e.seconds)]
        b = f"{min(fin) * 1e3:9.3f}" if fin else f"{'failed':>9}"
        which = (", ".join(f"{k} {v}" for k, v in (json.loads(versions) or {}).items())
                 or "no versions recorded") if stale else ""  # (a hand-edited entry)
        print(f"{spec:<{w}}  {format_rate(rate):>5}  {variant:<14} {len(es):>7} {b}"
              + (f"  (stale: {which}, source {src}{why})" if stale else ""))
    if more:
        print(more)
