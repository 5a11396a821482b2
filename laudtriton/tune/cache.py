"""The persistent autotune cache (DESIGN.md section 5).

One JSON file per device fingerprint and schema version under ``autotune_cache/`` (or
``$LAUDTRITON_CACHE_DIR``). Every timing is kept (every variant x config), not only the
winner: the predictor trains on them, and adding one config re-times only that config.

File layout::

    {"schema": 1, "device": "<fingerprint>",
     "entries": {"<key>": {"spec": {...BlockSpec...}, "rate_bucket": 0.5,
                           "variant": "gather", "versions": {...}, "source_hash": "...",
                           "timings": {"<config_key>": seconds, ...}, "meta": {...}}}}

An entry's key holds the laudtriton/torch/triton versions, the hash of the variant's
source (see :func:`keys.source_hash`), the BlockSpec (with S, dtype, batch),
the rate and the variant. The field named ``rate_bucket`` holds the rate the timed masks
realise (``schedule.run_rate``: round(r·N)/N, e.g. 0.102 or a layer gate's 0.375),
not necessarily a 0.1 bucket. Entries of other versions stay in the file but are
hidden from :meth:`TuneCache.lookup`; so do entries this version cannot parse (kept as they
are when the file is rewritten). Writes: temp file + ``os.replace`` under a file lock. A
file that is not a cache of this schema (corrupt, or another schema) is moved aside to
``<name>.unusable-<time>`` by the next write, never written over.

The file itself (reading, validating, writing, the lock) is ``cache_file``'s; keeping the
records in it, or in memory when it cannot take them, and clearing it, ``cache_store``'s
(``CacheStore``, TuneCache's base); merging files, ``cache_merge``'s.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..nn.maskers import check_flag
from ..ops.spec import BlockSpec
from .cache_file import (
    SCHEMA_VERSION,
    annotate_entries_into,
    check_rate_bucket,
    check_record,
    is_valid_entry,
    merge_entries_into,
    merge_meta,
)
from .cache_store import CacheStore
from .keys import (
    SourceChanged,
    cache_enabled_from_env,
    cpu_or_cuda,
    current_versions,
    default_cache_dir,
    device_fingerprint,
    refuse_bad_dir,
    source_hash,
)

log = logging.getLogger("laudtriton")


SLUG_MAX = 80  # characters of a device's name in a file name


def file_slug(text: str) -> str:
    """A device fingerprint as a file name's stem: runs of characters other than letters,
    digits and "." become "_"; past ``SLUG_MAX`` characters the head cut short, a hash of
    the whole but its last part, and that last part ("<n>t", a CPU's thread count: cut
    short alone, a long CPU model's thread counts were one file, another count's timings
    read as this one's; the files of one CPU keep one stem before it, which ``cache ls``
    reads)."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "device"
    if len(slug) <= SLUG_MAX:
        return slug
    head, _, tail = slug.rpartition("_")
    if not head or len(tail) > 16:
        head, tail = slug, ""
    digest = hashlib.sha256(head.encode()).hexdigest()[:8]
    end = f"_{digest}" + (f"_{tail}" if tail else "")
    return head[:SLUG_MAX - len(end)].rstrip("_") + end


@dataclass(frozen=True)
class CacheEntry:
    """One timing: ``seconds`` of ``variant`` with ``config`` (a config_key string) on
    ``spec`` at ``rate_bucket``. meta: versions, source_hash, stale (from another version
    or source), and what the writer recorded (model and block names, flops ratio, ...)."""

    spec: BlockSpec
    rate_bucket: float
    variant: str
    config: str
    seconds: float
    meta: dict = field(default_factory=dict, compare=False)


def stored_spec_key(d: dict) -> str:
    """``BlockSpec.from_dict(d).key()`` of an entry's stored spec ``d``, remembered by its
    JSON text (a compile compares every entry's spec with each block's, thousands of
    times; building the key takes ~35 us). A ``d`` that is no JSON (a numpy int, a
    torch dtype) is not remembered: ``BlockSpec.from_dict`` says what is wrong in it.

    Raises:
        TypeError, ValueError, KeyError: as ``BlockSpec.from_dict`` for a dict that is no
            BlockSpec's (an unknown or missing field; a field of a wrong type or value).
    """
    try:
        text = json.dumps(d, sort_keys=True)
    except (TypeError, ValueError):  # not JSON: json's "not JSON serializable" said less
        return BlockSpec.from_dict(d).key()
    return _spec_key_of(text)


@functools.lru_cache(maxsize=4096)
def _spec_key_of(text: str) -> str:
    """``stored_spec_key`` of the spec whose JSON is ``text``."""
    return BlockSpec.from_dict(json.loads(text)).key()


def check_spec(spec: object, who: str) -> None:
    """A ValueError naming ``who`` unless spec is a BlockSpec."""
    if not isinstance(spec, BlockSpec):
        raise ValueError(f"{who}: spec must be a BlockSpec, got {type(spec).__name__}")


class TuneCache(CacheStore):
    """Persistent {BlockSpec x rate bucket x variant x config: seconds} for one device.

    cache_dir: directory (default :func:`default_cache_dir`). device: the device the
    timings are taken on (its fingerprint, taken when the cache is made, names the file:
    on a CPU it holds torch's thread count, so set the threads first). enabled: None reads
    ``$LAUDTRITON_CACHE`` (:func:`cache_enabled_from_env`); a disabled cache neither
    reads the file nor writes it: its records stay in memory. versions: override of
    :func:`current_versions` (tests).

    Never fatal: a corrupt file or one of another schema is reported and ignored (and
    moved aside, not written over, by the next write), a foreign or unreadable file is
    reported and left alone; records that cannot be written (an unwritable directory,
    such a file, another process holding the lock for ``LOCK_TIMEOUT`` seconds) stay in
    memory, and a later record tries again.

    Raises:
        ValueError: if cache_dir is blank, which would otherwise mean the current
            directory, or names a file or lies inside one; with cache_dir None, if
            $LAUDTRITON_CACHE_DIR does (``keys.check_dir``); with enabled None, if
            $LAUDTRITON_CACHE holds another value than those accepted; if enabled is
            not True, False or None ("no" was truthy). ``record``, ``annotate`` and
            ``lookup`` raise one naming both fingerprints when the device's fingerprint
            is no longer the cache's (``torch.set_num_threads`` or
            ``torch.cuda.set_device`` after it was made): timings taken now would be
            filed, or served, as another machine kind's.
    """

    def __init__(self, cache_dir: str | Path | None = None, device: str | torch.device = "cpu",
                 enabled: bool | None = None, *, versions: dict[str, str] | None = None
                 ) -> None:
        if enabled is None:
            enabled = cache_enabled_from_env()
        check_flag(enabled, "TuneCache: enabled")
        refuse_bad_dir(cache_dir)
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        fingerprint = device_fingerprint(device)
        self._dev = cpu_or_cuda(device)
        self._made_in = self._fingerprint_state()
        super().__init__(folder, folder / f"{file_slug(fingerprint)}.v{SCHEMA_VERSION}.json",
                         fingerprint, bool(enabled))
        self.versions = dict(versions) if versions is not None else current_versions()
        self._hashes: dict[str, str | None] = {}
        # variants whose timings are neither read nor recorded, and why, until said once
        # (``_hash``: source changed after import, or not registered)
        self._changed: dict[str, str] = {}

    # -- the device ---------------------------------------------------------------------
    def _fingerprint_state(self) -> tuple[int, ...]:
        """What the device's fingerprint can change with in a process: torch's thread
        count on a CPU, the current CUDA device for "cuda" without an index."""
        if self._dev.type == "cpu":
            return (torch.get_num_threads(),)
        return (self._dev.index if self._dev.index is not None
                else torch.cuda.current_device(),)

    def _check_fingerprint(self, who: str) -> None:
        """A ValueError naming ``who`` and both fingerprints when the device's is no
        longer ``self.device`` (computed again only when its state changed: reading
        ``/proc/cpuinfo`` at every lookup is not free on a large machine)."""
        if self._fingerprint_state() == self._made_in:
            return
        now = device_fingerprint(self._dev)
        if now != self.device:
            raise ValueError(
                f"{who}: this TuneCache is for the device fingerprint {self.device!r} (its "
                f"file {self.path.name}), but the device's is now {now!r}; timings taken "
                "now are not that device's. Make the TuneCache after torch.set_num_threads "
                "(or torch.cuda.set_device), or set them back")

    # -- keys -------------------------------------------------------------------------
    def _hash(self, variant: str) -> str | None:
        if variant not in self._hashes:
            try:
                self._hashes[variant] = source_hash(variant)
            except SourceChanged as e:  # no entry is this process's code's: none read,
                self._hashes[variant] = None  # none written (``record``)
                self._changed[variant] = str(e)
            except ValueError:  # not registered here: its entries cannot be validated,
                self._hashes[variant] = None  # and none written would ever be read
                self._changed[variant] = f"variant {variant!r} is not registered here"
        return self._hashes[variant]

    def _key(self, spec: BlockSpec, bucket: float, variant: str, src: str | None) -> str:
        v = self.versions
        return (f"{spec.key()}|S={spec.granularity}|r={bucket:.6g}|{variant}|"
                f"laudtriton={v['laudtriton']}|torch={v['torch']}|triton={v['triton']}|"
                f"src={src}")

    def _is_current(self, e: dict) -> bool:
        """Taken with these versions and kernel sources, on scattered masks (a sweep
        before --clustered stopped writing the cache recorded clustered ones too)."""
        return (e.get("versions") == self.versions
                and not (e.get("meta") or {}).get("clustered")
                and e.get("source_hash") is not None
                and e.get("source_hash") == self._hash(e["variant"]))

    # -- reading ----------------------------------------------------------------------
    def _all(self) -> dict[str, dict]:
        out = dict(self._disk())
        annotate_entries_into(out, self._notes)
        merge_entries_into(out, self._memory)
        return out

    def rates(self, spec: BlockSpec) -> list[float]:
        """The rates at which ``spec`` has current timings (of any variant), sorted.

        Raises:
            ValueError: if spec is not a BlockSpec.
        """
        check_spec(spec, "rates")
        want = spec.key()
        return sorted({round(float(e["rate_bucket"]), 6) for e in self._all().values()
                       if stored_spec_key(e["spec"]) == want
                       and self._is_current(e)})

    def lookup(self, spec: BlockSpec, rate_bucket: float) -> dict[str, dict[str, float]] | None:
        """{variant: {config_key: seconds}} recorded for ``spec`` at ``rate_bucket`` with
        the current versions and kernel sources; None when there is none.

        Raises:
            ValueError: if spec is not a BlockSpec, rate_bucket not a number in [0, 1],
                or the device's fingerprint changed since the cache was made (the class
                docstring).
        """
        check_spec(spec, "lookup")
        check_rate_bucket(rate_bucket, "lookup")
        self._check_fingerprint("lookup")
        out: dict[str, dict[str, float]] = {}
        for e in self._current(spec, rate_bucket).values():
            out.setdefault(e["variant"], {}).update(
                {c: float(t) for c, t in e["timings"].items()})
        return out or None

    def entry_meta(self, spec: BlockSpec, rate_bucket: float) -> dict:
        """The meta of the current entries of ``spec`` at ``rate_bucket``, merged (``{}``
        when there is none): what the sweeps that timed them recorded (``record``), e.g.
        a mode-both item's "channel_rate".

        Raises:
            ValueError: if spec is not a BlockSpec, or rate_bucket not a number in [0, 1].
        """
        check_spec(spec, "entry_meta")
        check_rate_bucket(rate_bucket, "entry_meta")
        out: dict = {}
        for e in self._current(spec, rate_bucket).values():
            out = merge_meta(out, e.get("meta") or {})
        return out

    def _current(self, spec: BlockSpec, rate_bucket: float) -> dict[str, dict]:
        """{key: entry} of the current entries of ``spec`` at ``rate_bucket``."""
        want, bucket = spec.key(), round(float(rate_bucket), 6)
        return {k: e for k, e in self._all().items()
                if round(float(e["rate_bucket"]), 6) == bucket
                and stored_spec_key(e["spec"]) == want and self._is_current(e)}

    def entries(self, include_stale: bool = False) -> list[CacheEntry]:
        """Every timing valid for the current versions (and, with ``include_stale``, the
        hidden ones of other versions, marked ``meta["stale"] = True``)."""
        check_flag(include_stale, "TuneCache.entries: include_stale")
        out = []
        for e in self._all().values():
            stale = not self._is_current(e)
            if stale and not include_stale:
                continue
            spec = BlockSpec.from_dict(e["spec"])
            meta = {**(e.get("meta") or {}), "versions": e.get("versions"),
                    "source_hash": e.get("source_hash"), "stale": stale}
            for c, t in e["timings"].items():
                out.append(CacheEntry(spec, float(e["rate_bucket"]), e["variant"], c,
                                      float(t), meta))
        return out

    # -- writing ----------------------------------------------------------------------
    def record(self, spec: BlockSpec, rate_bucket: float,
               timings: dict[str, dict[str, float]], meta: dict | None = None) -> None:
        """Merge ``timings`` ({variant: {config_key: seconds}}) for ``spec`` at
        ``rate_bucket`` into the cache file (atomic, under the lock). An unwritable
        directory, a file that cannot be read, or a file holding another device's timings
        (two device names with one file name), is reported once; the records then stay
        in memory. The timings of a variant whose code changed on disk after this process
        read it (``keys.SourceChanged``) are not recorded, and that is said once: they
        were taken with the code read first, and would be filed under the new code's hash.

        Raises:
            ValueError: naming what is malformed: a rate outside [0, 1], a variant name
                that is not a string, a config key that is not a JSON object
                (``measure.config_key``), a time that is not a number > 0 (inf or NaN
                records a failed config), or a spec or meta no reader could use, or a
                meta JSON cannot hold. Nothing is recorded then: the file's readers would
                drop the whole entry, or it could not be written at all. (The timings of
                a variant that is not registered are left out and that is said once:
                without a source hash no reader could take them.) Also if the device's
                fingerprint changed since the cache was made (the class docstring):
                the timings are filed nowhere then.
        """
        check_spec(spec, "record")
        check_record(rate_bucket, timings)
        self._check_fingerprint("record")
        try:
            json.dumps(meta or {}, allow_nan=True, sort_keys=True)  # as the file is
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"record: meta {meta!r} cannot be written as JSON ({e})") from None
        bucket = round(float(rate_bucket), 6)
        new: dict[str, dict] = {}
        for variant, cfgs in timings.items():
            src = self._hash(variant)
            if variant in self._changed:  # said once per cache, kept nowhere
                if self._changed[variant]:
                    log.warning("%s; its timings are not cached", self._changed[variant])
                    self._changed[variant] = ""
                continue
            new[self._key(spec, bucket, variant, src)] = {
                "spec": spec.to_dict(), "rate_bucket": bucket, "variant": variant,
                "versions": dict(self.versions), "source_hash": src,
                "timings": {c: (s if math.isfinite(s) else math.inf)
                            for c, s in ((c, float(t)) for c, t in cfgs.items())},
                "meta": dict(meta or {}),
            }
        bad = next((e for e in new.values() if not is_valid_entry(e)), None)
        if bad is not None:
            raise ValueError(f"record: spec {spec!r} or meta {meta!r} is malformed (meta: "
                             "'models' {model: [block names]}, 'asked_rates' rates in "
                             "[0, 1], 'input_size' a positive int, 'flops_ratio' a finite "
                             "number >= 0, 'channel_rate' a rate in [0, 1])")
        if not new:
            return
        merge_entries_into(self._memory, new)
        self._save()

    def annotate(self, spec: BlockSpec, rate_bucket: float, meta: dict) -> bool:
        """Add ``meta``'s "models" and "asked_rates" (unions, ``record``'s rule) and
        "input_size" (the model's image side, only to an entry that has none: one written
        before sweeps recorded it) to the current entries of ``spec`` at ``rate_bucket``,
        their timings and other meta as they are: a sweep that finds an item cached names
        its model's blocks, its asked rates and its input size there as a sweep that times
        it does (``laudtriton plot --from cache`` draws a model from them, one per input
        size). An entry holds one input size: a block shape that models swept at two sizes
        share is drawn at the first size only.
        Returns whether an entry changed (only then is the file written).

        Raises:
            ValueError: if spec is not a BlockSpec, rate_bucket not a number in [0, 1],
                or those fields are malformed (``record``'s rule; an input size must be
                a positive int), or the device's fingerprint changed since the cache was
                made (the class docstring).
        """
        check_spec(spec, "annotate")
        check_rate_bucket(rate_bucket, "annotate")
        if not isinstance(meta, dict):
            raise ValueError(f"annotate: meta must be a dict, got {type(meta).__name__}")
        size = meta.get("input_size")
        if size is not None and not (isinstance(size, int) and not isinstance(size, bool)
                                     and size > 0):
            raise ValueError(f"annotate: meta's input_size {size!r} is not a positive int")
        names = {k: meta[k] for k in ("models", "asked_rates", "input_size") if k in meta}
        if not is_valid_entry({"spec": spec.to_dict(), "rate_bucket": round(float(rate_bucket), 6),
                             "variant": "", "timings": {}, "meta": names}):
            raise ValueError(f"annotate: spec {spec!r} or meta {meta!r} is malformed "
                             "('models' {model: [block names]}, 'asked_rates' rates in "
                             "[0, 1])")
        self._check_fingerprint("annotate")
        changed = False
        for k, e in self._current(spec, rate_bucket).items():
            old = e.get("meta") or {}
            # an input size already recorded stays: the entry may serve blocks of models
            # swept at other sizes, and the last sweep's would relabel the first's
            add = {n: v for n, v in names.items() if n != "input_size" or n not in old}
            if merge_meta(old, add) == old:
                continue
            changed = True
            if k in self._memory:  # a record of ours not written yet: it carries them
                mine = self._memory[k]
                self._memory[k] = {**mine, "meta": merge_meta(mine.get("meta") or {}, add)}
            else:
                self._notes[k] = merge_meta(self._notes.get(k, {}), add)
        if changed:
            self._save()
        return changed
