"""The autotune cache's file on disk (its layout: the ``cache`` module's docstring):
the schema, reading a file and leaving out what no reader can use, what a valid entry is,
merging entries, and the inter-process file lock its writes go under (the atomic writes
themselves, and moving an unusable file aside: ``atomic``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ..ops.spec import BlockSpec
from .atomic import remove_orphan_temps, write_json_atomic

log = logging.getLogger("laudtriton")

SCHEMA_VERSION = 1
LOCK_TIMEOUT = 120  # seconds a writer waits for another process's lock
LOCK_QUIET = 1.0  # seconds of that wait before a warning says so


def lock_path_of(path: Path) -> Path:
    """The lock file of the cache file ``path``: ``<file>.lock`` beside the file it is, a
    symbolic link followed (two processes reaching one file by two paths take one lock)."""
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + ".lock")


class LockTimeout(TimeoutError):
    """Another process held a cache file's lock for ``LOCK_TIMEOUT`` seconds
    (``file_lock``)."""


def _say_waiting(lock_path: Path) -> None:
    log.warning("another process holds %s (a sweep, merge or compile writing that cache); "
                "waiting up to %g s in all for it", lock_path, LOCK_TIMEOUT)


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive inter-process lock: ``filelock`` if importable, else ``fcntl.flock``.
    When another process still holds it after ``LOCK_QUIET`` seconds (writers that share
    a cache meet for milliseconds), a warning says so before the rest of the wait.

    Raises:
        LockTimeout: (a TimeoutError) if another process holds it for ``LOCK_TIMEOUT``
            seconds.
    """
    quiet = min(LOCK_QUIET, LOCK_TIMEOUT)
    try:
        import filelock
    except ImportError:
        filelock = None
    if filelock is not None:
        lock = filelock.FileLock(str(lock_path))
        try:
            lock.acquire(timeout=quiet)
        except filelock.Timeout:
            _say_waiting(lock_path)
            try:
                lock.acquire(timeout=LOCK_TIMEOUT - quiet)
            except filelock.Timeout:
                raise LockTimeout(f"lock {lock_path} held for {LOCK_TIMEOUT} s") from None
        try:
            yield
        finally:
            lock.release()
        return
    import fcntl

    with open(lock_path, "a") as fh:
        # non-blocking tries until LOCK_TIMEOUT, as filelock: a stuck holder must not hang
        # a writer
        start, said = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= quiet and not said:
                    _say_waiting(lock_path)
                    said = True
                if waited >= LOCK_TIMEOUT:
                    raise LockTimeout(f"lock {lock_path} held for {LOCK_TIMEOUT} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def decode_cache_json(raw: bytes, repeated: list[str] | None = None) -> dict:
    """The JSON object of a cache file's bytes. repeated: if given, each name given
    twice or more in one JSON object of them is appended to it (json keeps the last of
    each: an entry's key twice, in two files merged by hand, read one entry silently).

    Raises:
        ValueError: if they are not UTF-8 JSON (a byte order mark allowed) holding an
            object with an "entries" object
            (UnicodeDecodeError and json's errors are ValueErrors).
    """
    hook = None
    if repeated is not None:
        def hook(pairs: list[tuple[str, object]]) -> dict:
            """One JSON object, its repeated names appended to ``repeated``."""
            obj = dict(pairs)
            if len(obj) < len(pairs):
                seen: set[str] = set()
                for k, _ in pairs:
                    if k in seen:
                        repeated.append(k)
                    seen.add(k)
            return obj
    # a BOM an editor wrote is no error
    data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=hook)
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise ValueError("no 'entries' object")
    return data


class UnusableCacheFile(ValueError):
    """A cache file's bytes that this version cannot use: not UTF-8 JSON of a cache, or
    a cache of another schema."""


def parse_cache(raw: bytes, repeated: list[str] | None = None) -> dict:
    """The JSON object of a cache file of this schema; repeated: as
    ``decode_cache_json`` takes it.

    Raises:
        UnusableCacheFile: saying why it is not one.
    """
    try:
        data = decode_cache_json(raw, repeated)
    except (ValueError, RecursionError) as e:  # json nested too deep: RecursionError
        raise UnusableCacheFile(f"is corrupt ({e})") from None
    if data.get("schema") != SCHEMA_VERSION or isinstance(data["schema"], bool):  # true == 1
        raise UnusableCacheFile(f"has schema {data.get('schema')!r}, this laudtriton uses "
                                f"{SCHEMA_VERSION}")
    return data


def load_cache_file(path: Path, rewritten: bool = True) -> tuple[str | None, dict[str, dict]]:
    """(device, entries) of the cache file ``path`` (entries no reader can use left out,
    with a warning); (None, {}) with a warning if it is corrupt (not UTF-8 JSON of a
    cache), of another schema or unreadable, (None, {}) silently if it does not exist.
    A name given twice in one JSON object (an entry's key, in two files merged by hand)
    is said: json reads the last of each, and a write keeps that one only.
    rewritten: the caller writes to ``path`` later (a TuneCache; not ``merge_files``'
    inputs), which moves an unusable file aside first; the warning then says so."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, {}
    except OSError as e:
        log.warning("cannot read autotune cache %s (%s); ignoring it", path, e)
        return None, {}
    repeated: list[str] = []
    try:
        data = parse_cache(raw, repeated)
    except UnusableCacheFile as e:
        log.warning("autotune cache %s %s; ignoring it%s", path, e,
                    " (the next write moves it aside)" if rewritten else "")
        return None, {}
    if repeated:
        log.warning("autotune cache %s: %d name(s) given twice in one JSON object, the "
                    "last of each read, the others dropped (the first: %r; two files "
                    "merged by hand? `laudtriton cache merge` merges them)", path,
                    len(repeated), repeated[0][:200])
    entries = {k: e for k, e in data["entries"].items() if is_valid_entry(e)}
    if len(entries) < len(data["entries"]):
        first = next(k for k in data["entries"] if k not in entries)
        log.warning("autotune cache %s: %d malformed entries ignored (the first: %r; "
                    "an entry's fields are listed in the cache module's docstring)", path,
                    len(data["entries"]) - len(entries), first[:200])
    return data.get("device"), entries


def read_entries(path: Path, device: str) -> dict[str, dict]:
    """Entries of ``path`` if it is a valid cache file of ``device``, else {}."""
    found, entries = load_cache_file(path)
    if entries and found != device:
        log.warning("autotune cache %s is for device %r, not %r; ignoring it",
                    path, found, device)
        return {}
    return entries


def _number(x) -> bool:
    """A JSON number a reader can take as a float (an int of 400 digits cannot)."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        float(x)
    except OverflowError:
        return False
    return True


def is_valid_spec(d: object) -> bool:
    """``d`` is a BlockSpec dict: ``BlockSpec.from_dict`` builds it (BlockSpec checks
    every field's type and range when built)."""
    try:
        BlockSpec.from_dict(d)
    except (TypeError, ValueError, KeyError):
        return False
    return True


def _is_config_key(c) -> bool:
    """A config key as ``measure.config_key`` writes it: a JSON object."""
    if not isinstance(c, str):
        return False
    try:
        return isinstance(json.loads(c), dict)
    except (ValueError, RecursionError):  # not JSON; nested past the parser's depth
        return False


def is_valid_entry(e: object) -> bool:
    """``e`` is an entry every reader can use: spec a BlockSpec dict, rate_bucket a number
    in [0, 1], variant a string, timings {str: number > 0}, meta (if any) a dict whose
    "models" is {str: [str]}, "asked_rates" a list of numbers in [0, 1], "input_size" a
    positive int, "flops_ratio" a finite number >= 0 (``plot --from cache`` refused the
    whole cache for one NaN) and "channel_rate" a number in [0, 1] (a sweep crashed on a
    list there), config keys JSON objects, versions a dict, source_hash a string or
    null."""
    if not (isinstance(e, dict) and is_valid_spec(e.get("spec"))
            and _number(e.get("rate_bucket")) and 0.0 <= e["rate_bucket"] <= 1.0
            and isinstance(e.get("variant"), str)
            and isinstance(e.get("timings"), dict)
            and all(_is_config_key(c) and _number(t) and t > 0  # inf: a failed config
                    for c, t in e["timings"].items())
            and isinstance(e.get("versions", {}), dict)
            and isinstance(e.get("source_hash"), (str, type(None)))):
        return False
    meta = e.get("meta")
    if meta is None:
        return True
    if not isinstance(meta, dict):
        return False
    models = meta.get("models")
    if models is not None and not (isinstance(models, dict) and all(
            isinstance(m, str) and isinstance(b, list) and all(isinstance(n, str) for n in b)
            for m, b in models.items())):
        return False
    asked = meta.get("asked_rates", [])
    if not (isinstance(asked, list) and all(_number(a) and 0.0 <= a <= 1.0 for a in asked)):
        return False
    size = meta.get("input_size")
    if size is not None and not (isinstance(size, int) and not isinstance(size, bool)
                                 and size > 0):
        return False
    fr = meta.get("flops_ratio", 0.0)
    if not (_number(fr) and math.isfinite(fr) and fr >= 0.0):
        return False
    chan = meta.get("channel_rate", 0.0)  # a mode-both item's (``sweep._items``)
    return _number(chan) and 0.0 <= chan <= 1.0


def _real(x) -> float | None:
    """x as a float if it is a real number (a Python or numpy number, a 0-d tensor; not
    a bool or a string), else None."""
    if isinstance(x, (bool, str, bytes)):
        return None
    try:
        return float(x)
    except (TypeError, ValueError, RuntimeError, OverflowError):  # a tensor of many
        return None  # elements (RuntimeError); an int too large for a float


def check_rate_bucket(rate_bucket: object, who: str) -> float:
    """``rate_bucket`` as a float if it is a real number in [0, 1] (a Python or numpy
    number, a 0-d tensor; not a bool, a string or NaN), as a reader keeps it
    (``is_valid_entry``).

    Raises:
        ValueError: naming ``who`` and the value, otherwise.
    """
    r = _real(rate_bucket)
    if r is None or not 0.0 <= r <= 1.0:
        raise ValueError(f"{who}: rate_bucket {rate_bucket!r} must be a number in [0, 1]")
    return r


def check_record(rate_bucket: object, timings: object) -> None:
    """Check the ``rate_bucket`` and ``timings`` of a ``TuneCache.record`` call (as the
    caller gave them: any object) against what a reader keeps (``is_valid_entry``).

    Raises:
        ValueError: naming the first field a reader would drop the entry for.
    """
    check_rate_bucket(rate_bucket, "record")
    if not isinstance(timings, dict):
        raise ValueError(f"record: timings must be {{variant: {{config_key: seconds}}}}, got "
                         f"{type(timings).__name__}")
    for variant, cfgs in timings.items():
        if not isinstance(variant, str) or not isinstance(cfgs, dict):
            raise ValueError(f"record: timings[{variant!r}] must be a variant name mapped to "
                             "{config_key: seconds}")
        for c, t in cfgs.items():
            if not _is_config_key(c):
                raise ValueError(f"record: config key {c!r} of {variant} is not a JSON "
                                 "object (measure.config_key)")
            s = _real(t)
            if s is None or (math.isfinite(s) and s <= 0):
                raise ValueError(f"record: {variant} {c} took {t!r}; a time is a number of "
                                 "seconds > 0 (inf or NaN: a failed config)")


def merge_meta(old: dict, new: dict) -> dict:
    """New meta wins, except "models" ({model: [block names]}) and "asked_rates" (the
    rates asked of the sweeps that realised this rate), which are unions."""
    out = {**old, **new}
    asked = sorted(set(old.get("asked_rates") or ()) | set(new.get("asked_rates") or ()))
    if asked:
        out["asked_rates"] = asked
    models = {m: list(b) for m, b in (old.get("models") or {}).items()}
    for m, names in (new.get("models") or {}).items():
        models[m] = sorted(set(models.get(m, [])) | set(names))
    if models:
        out["models"] = models
    return out


def merge_entries_into(dst: dict[str, dict], src: dict[str, dict]) -> None:
    """Merge the entries ``src`` ({key: entry}) into ``dst`` in place: a key only in
    ``src`` is added; a key in both gets ``src``'s fields, the union of the timings
    (``src``'s time wins per config) and the two metas merged (``merge_meta``)."""
    for k, e in src.items():
        if k in dst:
            old = dst[k]
            dst[k] = {**e, "timings": {**old["timings"], **e["timings"]},
                      "meta": merge_meta(old.get("meta") or {}, e.get("meta") or {})}
        else:
            dst[k] = e


def annotate_entries_into(dst: dict[str, dict], notes: dict[str, dict]) -> None:
    """Merge annotation meta ({key: meta}, ``TuneCache.annotate``) into the entries of
    ``dst`` they name (an entry no longer there, or one no reader can use, is not
    annotated)."""
    for k, names in notes.items():
        if k in dst and is_valid_entry(dst[k]):
            dst[k] = {**dst[k], "meta": merge_meta(dst[k].get("meta") or {}, names)}


def write_cache_file(path: Path, device: str, entries: dict[str, dict]) -> None:
    """Write a cache file of this schema holding ``entries`` of ``device`` to ``path``
    (``write_json_atomic``; its callers, a TuneCache's record and ``cache merge``, write
    under the cache's ``file_lock``), first removing the temp files that writes of it
    killed mid-write left (``atomic.remove_orphan_temps``: a merge's too, which only a
    record removed).

    Raises:
        OSError: if the file cannot be written (the old one is then left as it was).
    """
    remove_orphan_temps(path)
    write_json_atomic(path, {"schema": SCHEMA_VERSION, "device": device, "entries": entries})
