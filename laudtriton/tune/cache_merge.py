"""Merging autotune cache files (several machines of one kind, or sweep shards) into
one: ``laudtriton cache merge``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

from .cache import file_slug
from .cache_file import (
    SCHEMA_VERSION,
    decode_cache_json,
    file_lock,
    is_valid_entry,
    load_cache_file,
    lock_path_of,
    merge_entries_into,
    parse_cache,
    write_cache_file,
)

log = logging.getLogger("laudtriton")


class NotACacheError(ValueError):
    """A file that should be a cache file (``merge_files``' output) is not one."""


class ForeignFileName(ValueError):
    """``merge_files``' output is named as the cache file of another device (or schema)
    than the inputs' (``check_out_name``)."""


# a cache file's name: "<device slug>.v<schema>.json" (``cache.TuneCache``)
CACHE_NAME = re.compile(r".+\.v\d+\.json")


def check_out_name(out: Path, device: str) -> None:
    """Raise ForeignFileName unless the name of ``out`` (and of the file a symbolic link
    ``out`` points to) is either the cache file name of ``device`` at this schema, or no
    cache file's name at all (``CACHE_NAME``: a shard's "merged.json"). A file of
    ``device``'s timings under another device's name is read by that device's cache,
    which ignores it as another device's, and never by ``device``'s."""
    expected = f"{file_slug(device)}.v{SCHEMA_VERSION}.json"
    for name in dict.fromkeys((out.name, Path(os.path.realpath(out)).name)):
        if CACHE_NAME.fullmatch(name) and name != expected:
            raise ForeignFileName(
                f"{name!r} is the cache file name of another device (or schema): the "
                f"cache file of device {device!r} is named {expected!r} (readers ignore "
                "timings filed under another device's name); give that name, or one "
                "not of a cache file's form (<name>.v<N>.json); nothing written")


def merge_files(paths: Iterable[str | Path], out_path: str | Path) -> int:
    """Merge cache files (several machines of one kind, or sweep shards) into
    ``out_path`` (its own entries kept; later files win per config, and an entry timed at
    another channel rate than the item's before, ``_merge_items``: its item whole). Corrupt or
    foreign-schema inputs are reported and skipped. The missing folders of the file
    written are made (where a symbolic link ``out_path`` points: the link is kept).
    Returns the entries in ``out_path``.

    Raises:
        ValueError: if no input is given, an input is missing, a directory or not a
            regular file, a file holds entries but no device, no input holds a valid
            entry, or the inputs (and an existing ``out_path``) are for different devices.
        ForeignFileName: (a ValueError) if ``out_path`` is named as the cache file of
            another device or schema (``check_out_name``); nothing is written.
        NotACacheError: (a ValueError) if ``out_path`` exists and is not a cache file,
            or not a regular file (a pipe is not read, a device not replaced; nothing
            is written over it).
        cache_file.LockTimeout: (a TimeoutError) if another process holds the lock of
            ``out_path`` for ``LOCK_TIMEOUT`` seconds.
        OSError: if ``out_path``, its lock or its folder cannot be written.
    """
    paths = [Path(p) for p in paths]
    out = Path(out_path)
    if not paths:
        raise ValueError("merge needs at least one input cache file")
    folders = [str(p) for p in paths if p.is_dir()]
    if folders:  # the cache file inside it is what merge reads
        raise ValueError(f"{', '.join(folders)}: a directory, not a cache file; give the "
                         "JSON file in it (`laudtriton cache ls` prints its path)")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"cache files not found: {', '.join(missing)}")
    odd = [str(p) for p in paths if not p.is_file()]  # a device, a pipe
    if odd:
        raise ValueError(f"{', '.join(odd)}: not a regular file; give a cache file")
    _check_is_cache(out)
    devices: dict[str, str] = {}
    merged: dict[str, dict] = {}
    for p in paths:
        _merge_file(p, merged, devices)
    if not merged:
        raise ValueError(f"no valid cache entry in {', '.join(map(str, paths))}; "
                         f"{out} left as it was")
    check_out_name(out, next(iter(devices)))  # before any folder is made
    # the folder of the file written (a link's target's: the fcntl lock, without
    # filelock, made none, and the merge through such a link failed)
    Path(os.path.realpath(out)).parent.mkdir(parents=True, exist_ok=True)
    # out is read again under the lock: a sweep may have recorded into it meanwhile
    with file_lock(lock_path_of(out)):
        _check_is_cache(out)
        if out.is_file():
            inputs, merged = merged, {}
            _merge_file(out, merged, devices)
            # its entries this version cannot parse stay as they are (``CacheStore._save``'s
            # rule), unless an input replaces one of them; not those of another device,
            # which would be relabelled the inputs' device
            data = parse_cache(out.read_bytes())
            own, device = data["entries"], next(iter(devices))
            if own and data.get("device") != device:
                raise ValueError(f"{out} holds timings of device {data.get('device')!r}, "
                                 f"the inputs are for {device!r}; merge files of one device "
                                 "kind only, nothing written")
            merged.update({k: e for k, e in own.items() if k not in merged and k not in inputs})
            # the inputs win per config (an item at another channel rate: whole)
            _merge_items(merged, inputs, f"the inputs, merged into {out}")
        write_cache_file(out, next(iter(devices)), merged)
    return len(merged)


def _check_is_cache(out: Path) -> None:
    """Raise NotACacheError unless ``out`` is missing or a cache file (a regular file: a
    read of a pipe waits for a writer that may never come)."""
    if out.exists():
        if not out.is_file():
            raise NotACacheError(f"{out} exists and is not a regular file (a directory, a "
                                 "pipe or a device); give a cache file name, nothing "
                                 "written")
        try:
            data = decode_cache_json(out.read_bytes())
        except (OSError, ValueError, RecursionError) as e:
            raise NotACacheError(f"{out} exists and is not a laudtriton cache file ({e}); "
                                 "nothing written") from None
        if data.get("schema") != SCHEMA_VERSION or isinstance(data["schema"], bool):
            raise NotACacheError(f"{out} is a cache file of schema {data.get('schema')!r}, "
                                 f"this laudtriton writes schema {SCHEMA_VERSION}; nothing "
                                 "written")


def _merge_file(p: Path, merged: dict[str, dict], devices: dict[str, str]) -> None:
    """Merge the entries of cache file ``p`` into ``merged`` and its device into
    ``devices`` ({device: first file}).

    Raises:
        ValueError: if ``p`` holds entries but no device, or its device is not the one
            of the files merged before.
    """
    device, entries = load_cache_file(p, rewritten=False)
    if not entries:
        return
    if not isinstance(device, str):
        what = "no \"device\"" if device is None else (
            f"a \"device\" that is not a name ({device!r})")
        raise ValueError(f"{p} has {what} (the machine kind its timings are for); not a "
                         "cache file laudtriton wrote, nothing merged")
    devices.setdefault(device, str(p))
    if len(devices) > 1:
        listing = "; ".join(f"{d!r} ({f})" for d, f in devices.items())
        raise ValueError(f"cache files are for different devices: {listing}; merge files of "
                         "one device kind only")
    _merge_items(merged, entries, str(p))


def _item(e: dict) -> tuple[str, float, str]:
    """The (spec, rate, versions) item a valid entry is one variant's timings of."""
    return (json.dumps(e["spec"], sort_keys=True), round(float(e["rate_bucket"]), 6),
            json.dumps(e.get("versions"), sort_keys=True))


def _channel_rate(e: dict) -> float | None:
    """A mode-both entry's channel rate (``sweep._items``), None where it records none."""
    return (e.get("meta") or {}).get("channel_rate")


def _merge_items(dst: dict[str, dict], src: dict[str, dict], where: str) -> None:
    """``merge_entries_into``, except that the entries of ``dst`` of an item (``_item``:
    every variant's at one spec and rate) that ``src`` holds at another channel rate are
    dropped first, with a warning naming ``where`` (the file merged): mode both's asked
    rates that realise one grid rate at other channel rates are other masks, and the
    union of their timings under one label served one item's configs (or variants) as
    the other's. ``src``'s item wins whole, as a later file wins per config."""
    chans: dict[tuple, set] = {}
    for e in src.values():
        if (c := _channel_rate(e)) is not None:
            chans.setdefault(_item(e), set()).add(c)
    other = [k for k, e in dst.items() if is_valid_entry(e)  # (--out's own are kept as
             and (c := _channel_rate(e)) is not None  # they are, those no reader can use)
             and _item(e) in chans and c not in chans[_item(e)]]
    for k in other:
        del dst[k]
    if other:
        log.warning("cache merge: %s: items at another channel rate than the same items "
                    "merged before (mode both, other --rates) replace their %d entries "
                    "whole, the timings not united (the first replaced: %r)", where,
                    len(other), other[0][:200])
    merge_entries_into(dst, src)
