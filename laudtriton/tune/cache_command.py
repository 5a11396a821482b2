"""``laudtriton cache ls|clear|merge``: the persistent autotune cache of this device
listed or cleared, cache files (machines, shards) merged into one."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from ..schedule import format_rate
from . import cache_file
from .cache import TuneCache
from .cache_merge import NotACacheError, merge_files
from .keys import disabled_by
from .options import check_device, fail
from .paths import check_cache_dir, check_nonempty, check_output_path


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
        if name == "ls":
            q.add_argument("--all", action="store_true",
                           help="also list entries hidden as stale (other versions or "
                                "sources, or clustered masks)")
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
            print(f"{args.out}: {n} entries ({len(args.files)} input file(s) given; any input "
                  "skipped as unusable is named in a warning above)")
            return 0
        check_cache_dir(args.cache_dir)
        cache = TuneCache(args.cache_dir, device=check_device(args.device))
    except ValueError as e:
        return fail("cache", str(e))
    if not cache.enabled:
        return fail("cache", f"the cache is disabled ({disabled_by()})")
    if args.cache_cmd == "clear":
        existed = Path(cache.path).is_file()  # a mistyped --cache-dir: said, as ls says it
        try:
            n = cache.clear()
        except ValueError as e:  # the file holds another device's timings
            return fail("cache", str(e))
        print(f"removed {n} entries ({cache.path}{'' if existed else ': no file'})")
        return 0
    _print_ls(cache, args.all)
    return 0


def _file_note(path: Path) -> str:
    """What ``cache ls`` adds after the path: nothing for a file, " (no file yet)", or,
    for something there that is not a file (a directory), that it was not read (a
    warning above says why)."""
    if path.is_file():
        return ""
    return " (not read: not a file)" if path.exists() else " (no file yet)"


def _print_ls(cache: TuneCache, include_stale: bool) -> None:
    entries = cache.entries(include_stale=include_stale)
    groups: dict[tuple, list] = {}
    for e in entries:  # a stale timing per version and source: one row each (those of
        # two torch versions in one row counted as two configs, the slower one unseen)
        old = (json.dumps(e.meta["versions"], sort_keys=True), str(e.meta["source_hash"])
               ) if e.meta["stale"] else ("", "")
        groups.setdefault((e.spec.short(), e.rate_bucket, e.variant, e.meta["stale"], *old),
                          []).append(e)
    hidden = 0 if include_stale else sum(
        1 for e in cache.entries(include_stale=True) if e.meta["stale"])
    print(f"{cache.path} ({cache.device}): {len(groups)} entries, {len(entries)} timings"
          + _file_note(Path(cache.path))
          + (f"; {hidden} stale timings hidden (--all lists them)" if hidden else ""))
    if not groups:
        return
    w = max(len(k[0]) for k in groups)
    print(f"{'block spec':<{w}}  {'rate':>5}  {'variant':<14} {'configs':>7} {'best ms':>9}")
    for (spec, rate, variant, stale, versions, src), es in sorted(groups.items()):
        fin = [e.seconds for e in es if math.isfinite(e.seconds)]
        b = f"{min(fin) * 1e3:9.3f}" if fin else f"{'failed':>9}"
        which = ", ".join(f"{k} {v}" for k, v in (json.loads(versions) or {}).items()
                          ) if stale else ""
        print(f"{spec:<{w}}  {format_rate(rate):>5}  {variant:<14} {len(es):>7} {b}"
              + (f"  (stale: {which}, source {src})" if stale else ""))
