"""The autotune sweep (DESIGN.md section 5): every BlockSpec x rate bucket x variant x
kernel config of a LAUD model, timed on synthetic masks, kept in the cache and a CSV.

Blocks with equal BlockSpec are tuned once; what the cache already holds (for the current
versions and kernel sources) is skipped unless ``force``; a config added to a variant's
space is the only thing timed on the next run.

Parsing the sweep's option values is ``options``'; the models and blocks it times,
``sweep_blocks``'; its CSV, ``sweep_csv``'s.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..nn.block import BlockMasks, LaudBottleneck
from ..nn.resnet import LaudResNet
from ..ops import fold_block
from ..ops.registry import Variant, variants_for
from ..ops.spec import BlockSpec
from ..ops.synthetic import synthetic_masks
from ..progress import Progress
from ..schedule import rate_key, run_rate
from .cache import TuneCache
from .keys import device_fingerprint
from .measure import config_key, time_variants
from .options import (
    check_device_name,
    check_rates,
    check_shard,
    check_sweep_counts,
    parse_variants,
)
from .paths import check_not_cache_file, check_output_path
from .sweep_blocks import ideal_flops_ratio, model_blocks, select_blocks, sweep_model
from .sweep_csv import item_rows, write_csv
from .timing import median_time

DTYPES = ("float32", "float16", "bfloat16")

# CPU timing budget per (variant, config, rate): reps = target / one call, clamped. A whole
# LAUD-ResNet-50 spatial sweep at 10 rates then stays well under 10 min on 2 cores.
TARGET_S = 0.5  # seconds of timed runs per variant x config (CPU)
MIN_REPS, MAX_REPS, WARMUP = 10, 40, 3

Prune = Callable[[BlockSpec, float, Variant, list[dict]], list[dict]]


def _reps(t_call: float) -> int:
    if not math.isfinite(t_call) or t_call <= 0:
        return MIN_REPS
    return max(MIN_REPS, min(MAX_REPS, int(TARGET_S / t_call)))


class SweepInterrupted(KeyboardInterrupt):
    """A sweep stopped by Ctrl-C while timing, whose line on stderr (how far it got,
    where its results are) ``sweep`` has printed: ``laudtriton sweep`` prints no other."""


@dataclass
class SweepResult:
    """rows: CSV rows (dicts with CSV_FIELDS), every selected block x rate x variant x
    config. timed / cached: (spec, rate) items measured now / found in the cache; merged:
    asked rates that realise the rate of another asked rate (timed once, ``sweep``);
    pruned: configs the ``prune`` hook left out, over every item.
    saved: whether the cache file holds the results (False: unwritable or disabled, or a
    clustered sweep)."""

    rows: list[dict] = field(default_factory=list)
    timed: int = 0
    cached: int = 0
    merged: int = 0
    pruned: int = 0
    seconds: float = 0.0
    csv_path: Path | None = None
    cache_path: Path | None = None
    saved: bool = True


def sweep(model: str | LaudResNet = "laud_resnet50", mode: str = "spatial",
          granularity: str | int | Sequence[int] = "4-4-2-1",
          rates: Sequence[float] | str = "0.1:1.0:0.1", batch: int = 1,
          device: str = "cpu", blocks: Iterable[str | int] | str | None = None,
          shard: tuple[int, int] = (1, 1), force: bool = False, clustered: bool = False,
          cache: TuneCache | None = None, csv_path: str | Path | None = None,
          progress: bool = True, prune: Prune | None = None, *,
          input_size: int | None = None, dtype: str = "float32", model_name: str | None = None,
          seed: int = 0, warmup: int = WARMUP, reps: int | None = None,
          variants: Sequence[str] | str | None = None,
          channel_granularity: int | str = 1) -> SweepResult:
    """Time every variant x config of every distinct block of ``model`` at ``rates``.

    model: "laud_resnet50" | "laud_resnet101" (built with ``mode``, ``granularity``,
    ``channel_granularity``) or a LaudResNet instance (they then come from it). Blocks are
    measured on random inputs [batch, Cin, H, W] (channels_last, ``dtype``, on ``device``) with
    synthetic masks of exactly round(rate*N) active cells, and recorded (cache and CSV) at
    the rate those masks realise, round(rate*N)/N (``schedule.run_rate``: 0.102 for
    0.1 on a 7x7 grid; 0 for 0.3 with a layer gate at batch 1); asked rates that realise
    the same one are one (spec, rate) item, timed once, with CSV rows for each asked rate
    (column ``asked_rate``) and all of them in the cache entry's meta (``asked_rates``,
    beside the model's block names, "models"; added to an item found cached as well).
    Mode both dispatches on the grid's rate alone: asked rates that realise one grid rate
    but different channel rates are items of their own, and of those only the one whose
    channel rate is nearest the grid's goes to the cache (the others to the CSV), unless
    the cache holds one of them already (a resumed sweep): that one stays its entry.
    shard (i, n): this run takes every n-th (spec, rate) item starting at the i-th
    (1-based). prune(spec, rate, variant,
    configs) -> configs narrows a config space (predictor hook). Results go to ``cache``
    (default TuneCache(device=device)) and, if given, the CSV at ``csv_path``; with
    ``clustered`` (masks of one blob per sample) they go to the CSV only (column
    ``clustered`` 1): the cache, which ``compile`` and the predictor read, holds timings
    on scattered masks, and a clustered sweep neither reads nor writes it. CPU timing:
    ``warmup`` calls, then ``reps`` timed ones (None: TARGET_S / one dense call, clamped to
    [MIN_REPS, MAX_REPS]); on CUDA ``do_bench`` decides. variants: names to time (default
    every registered one that supports the block); dense is always timed (the baseline).
    Mode both: a cache entry records its channel rate; an item at another channel rate
    than the entry of its grid rate (another sweep's) is timed for the CSV, the entry
    kept. Interrupted while timing (KeyboardInterrupt: Ctrl-C, or SIGTERM in the
    ``laudtriton`` command), it writes the rows so far to ``csv_path``, says so on stderr,
    and raises ``SweepInterrupted`` (a KeyboardInterrupt); the items timed are in the
    cache (unless clustered or disabled), and a re-run times the rest.

    Raises:
        ValueError: unknown model, variant, dtype, device name or block, malformed
            rates/shard, bad batch, reps or warmup, an input_size that is not a positive
            int, a ``csv_path`` that is not a path, cannot be written or is the cache's
            own file, or a ``cache`` of another device fingerprint
            (another device or thread count) than the one timed on.
    """
    t_start = time.perf_counter()
    if csv_path is not None:  # before the timing, not after it
        if not isinstance(csv_path, (str, os.PathLike)):
            raise ValueError(f"csv_path must be a path (str or os.PathLike), got "
                             f"{type(csv_path).__name__}")
        check_output_path(os.fspath(csv_path), "csv_path")
    dev = check_device_name(device)
    rates = check_rates(rates)
    i_shard, n_shard = check_shard(shard)
    input_size = check_sweep_counts(input_size, batch, reps, warmup)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} unknown; accepted: {', '.join(DTYPES)}")
    model, model_name, input_size = sweep_model(model, model_name, input_size, mode,
                                                granularity, channel_granularity)
    wanted = parse_variants(variants)
    backend = "cuda" if dev.type == "cuda" else "cpu"
    cache = _sweep_cache(cache, clustered, dev, csv_path)

    if progress:  # building the blocks and drawing every item's masks may take a while
        print(f"sweep: planning: the model's blocks, then the masks of each block at "  # (a
              f"{len(rates)} rate(s)", file=sys.stderr, flush=True)  # large input: minutes)
    named = select_blocks(model_blocks(model, input_size, batch, dtype), blocks)
    if wanted is not None:
        usable = {v.name for _, _, spec in named for v in variants_for(spec, backend)}
        idle = sorted(wanted - usable)
        if idle:
            raise ValueError(f"--variants {', '.join(idle)}: no selected block of this "
                             f"model and mode runs it on {backend}")
    by_spec: dict[BlockSpec, list[tuple[str, LaudBottleneck]]] = {}
    for name, block, spec in named:
        by_spec.setdefault(spec, []).append((name, block))
    def masks_at(spec: BlockSpec, asked: float) -> BlockMasks:
        return synthetic_masks(spec, asked, seed=seed + int(round(asked * 1000)),
                               clustered=clustered, device=dev)

    # each item is timed and recorded at the rate its masks realise, round(asked·N)/N (a
    # layer gate at batch 1 is off at 0.3): asked rates that realise one rate are one item
    # (timed once, in one shard), with a CSV row set per asked rate. Only the rates are
    # kept here (masks of every item of every shard could take GBs at 1001 rates); an
    # item's masks are drawn again, from the same seed, when it is timed.
    # Mode both: the dispatch rate is the grid's alone, and asked rates that realise one
    # grid rate may realise different channel rates (a 2x2 grid: 0.7 and 0.8 both give
    # 0.75), so an item is a (grid rate, channel rate) pair. Of the items at one grid
    # rate, the one whose channel rate is nearest it is the cache's entry (a rate, to
    # dispatch and the predictor, is both masks' rate), unless the cache holds one of
    # them already (a resumed sweep with more rates): that one stays the cache's. The
    # others go to the CSV only.
    groups, cached_chan = _items(by_spec, rates, masks_at, cache)
    items = list(groups.items())[i_shard - 1::n_shard]
    if not items and progress:
        print(f"sweep: shard {i_shard}/{n_shard} holds none of the {len(groups)} (spec, rate) "
              "item(s) of these blocks and rates: nothing to time", file=sys.stderr)

    result = SweepResult(cache_path=cache.path if cache.enabled else None)
    timer = _ItemTimer(cache, cached_chan, result, model_name, input_size, backend, wanted,
                       prune, force, dev, batch, getattr(torch, dtype), reps, warmup,
                       clustered)
    bar = Progress(len(items), progress, desc="sweep", unit="item")
    done = 0  # items finished (timed or found cached)
    try:
        for (spec, rate, chan), asked in items:
            timed = timer.run(spec, rate, chan, asked, by_spec[spec],
                              masks_at(spec, asked[0]))
            done += 1
            bar.update(f"r={rate:g} {spec.short()}", timed=timed)  # the rate first: (a
    except KeyboardInterrupt as e:  # cut note keeps it) Ctrl-C, or SIGTERM in the CLI
        bar.close()
        if csv_path is not None:  # what was measured so far, said to be partial
            result.csv_path = write_csv(result.rows, csv_path)
        print(_interrupted(done, len(items), len(result.rows), csv_path, cache, clustered),
              file=sys.stderr, flush=True)
        raise SweepInterrupted(f"interrupted after {done} of {len(items)} item(s)") from e
    finally:
        bar.close()
    result.saved = cache.saved
    if csv_path is not None:
        result.csv_path = write_csv(result.rows, csv_path)
    result.seconds = time.perf_counter() - t_start
    return result


@dataclass
class _ItemTimer:
    """What ``sweep`` times one (spec, rate) item with, besides the item: where its
    timings go (``cache``, unless another item at its grid rate is the cache's entry,
    ``cached_chan``; ``result``'s rows and counts), which variants and configs it times
    (``wanted``, ``prune``, ``force``) and how (``dev``, ``batch``, ``dtype``, ``reps``,
    ``warmup``; reps estimated once per spec in ``reps_of`` when None)."""

    cache: TuneCache
    cached_chan: dict[tuple[BlockSpec, float], float]
    result: SweepResult
    model_name: str
    input_size: int
    backend: str
    wanted: set[str] | None
    prune: Prune | None
    force: bool
    dev: torch.device
    batch: int
    dtype: torch.dtype
    reps: int | None
    warmup: int
    clustered: bool
    reps_of: dict[BlockSpec, int] = field(default_factory=dict)

    def run(self, spec: BlockSpec, rate: float, chan: float | None, asked: list[float],
            members: list[tuple[str, LaudBottleneck]], masks: BlockMasks) -> bool:
        """Time the item's untimed variant configs on ``masks`` (drawn for ``asked[0]``),
        record them, and add its CSV rows for every asked rate, ``members`` being the
        model's blocks of ``spec``; whether anything was timed (else it was cached)."""
        cache, result = self.cache, self.result
        result.merged += len(asked) - 1
        fr = ideal_flops_ratio(spec, masks)
        to_cache = chan is None or self.cached_chan[(spec, rate)] == chan
        names = {"models": {self.model_name: [n for n, _ in members]}, "asked_rates": asked,
                 "input_size": self.input_size}
        known = (cache.lookup(spec, rate) or {}) if to_cache else {}
        if known and chan is not None and not _same_item(
                cache.entry_meta(spec, rate), chan, fr):  # mode both: another run's
            to_cache, known = False, {}  # item at this grid rate stays the cache's;
            # this one, at another channel rate, is timed for the CSV (its timings were
            # that item's, under this one's FLOPs ratio and asked rate)
        cands = {v.name: v for v in variants_for(spec, self.backend)
                 if self.wanted is None or v.name in self.wanted}
        todo = _untimed_configs(cands, spec, rate, known, self.prune, self.force, result)
        if todo:
            fb = fold_block(members[0][1], dtype=self.dtype, device=self.dev)
            x = torch.rand(self.batch, spec.in_channels, *spec.in_hw)
            x = x.to(device=self.dev, dtype=self.dtype).contiguous(
                memory_format=torch.channels_last)
            if spec not in self.reps_of:
                self.reps_of[spec] = self.reps or _estimate_reps(cands, fb, x, masks,
                                                                 self.dev)
            timings = time_variants(fb, spec, x, masks, [cands[n] for n in todo],
                                    warmup=self.warmup, reps=self.reps_of[spec],
                                    configs=todo, verify=True)
            meta = {**names, "flops_ratio": fr, "clustered": self.clustered,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            if chan is not None:
                meta["channel_rate"] = chan
            if to_cache:
                cache.record(spec, rate, timings, meta)
            for vn, cfgs in timings.items():
                known.setdefault(vn, {}).update(cfgs)
            result.timed += 1
        else:
            result.cached += 1
        if to_cache:  # the variants found cached: this model's blocks and rates too
            cache.annotate(spec, rate, names)
        for a in asked:
            result.rows.extend(item_rows(self.model_name, members, spec, rate, known, fr,
                                         cache.device, self.clustered, a, to_cache,
                                         self.input_size))
        return bool(todo)


def _sweep_cache(cache: TuneCache | None, clustered: bool, dev: torch.device,
                 csv_path: str | os.PathLike | None) -> TuneCache:
    """The cache ``sweep`` records into: ``cache`` (default: the device's), in memory only
    for clustered masks (the cache is for scattered ones: compile and the predictor read
    it).

    Raises:
        ValueError: a cache of another device, or a CSV path that is a file of the
            cache's folder (``paths.check_not_cache_file``).
    """
    cache = cache if cache is not None else TuneCache(device=dev)
    if clustered:
        cache = TuneCache(cache.dir, device=dev, enabled=False)
    if cache.device != (here := device_fingerprint(dev)):  # timings filed as another's
        raise ValueError(f"cache: a TuneCache of {cache.device!r}, but this sweep times on "
                         f"{here!r} (device {str(dev)!r}, {torch.get_num_threads()} "
                         "thread(s) now); make the cache with that device, after setting "
                         "the threads")
    check_not_cache_file(csv_path, "--csv", cache.dir)
    return cache


def _untimed_configs(cands: dict[str, Variant], spec: BlockSpec, rate: float,
                     known: dict[str, dict[str, float]], prune: Prune | None, force: bool,
                     result: SweepResult) -> dict[str, list[dict]]:
    """{variant: configs} of the candidates that one item still has to time: each
    variant's configs (pruned by ``prune`` when given, counted in ``result.pruned``) that
    ``known`` lacks, or all of them with ``force``."""
    todo: dict[str, list[dict]] = {}
    for v in cands.values():
        space = v.configs(spec)
        if prune is not None:
            kept = list(prune(spec, rate, v, space))
            result.pruned += len(space) - len(kept)
            space = kept
        have = known.get(v.name, {})
        missing = [c for c in space if force or config_key(c) not in have]
        if missing:
            todo[v.name] = missing
    return todo


Items = dict[tuple[BlockSpec, float, float | None], list[float]]


def _items(by_spec: dict[BlockSpec, list], rates: list[float],
           masks_at: Callable[[BlockSpec, float], BlockMasks],
           cache: TuneCache) -> tuple[Items, dict[tuple[BlockSpec, float], float]]:
    """The sweep's items: {(spec, realised rate, channel rate or None): the asked rates
    that realise them}, and, for mode both, {(spec, grid rate): the channel rate of the
    item that is the cache's entry} (see the comment where ``sweep`` calls this)."""
    groups: Items = {}
    for s in by_spec:
        for asked in rates:
            m = masks_at(s, asked)
            chan = rate_key(float(m.channel.float().mean())) if s.mode == "both" else None
            groups.setdefault((s, rate_key(run_rate(s, m)), chan), []).append(asked)
    cached_chan: dict[tuple[BlockSpec, float], float] = {}
    for s, r, chan in groups:
        if chan is not None and abs(chan - r) < abs(cached_chan.get((s, r), math.inf) - r):
            cached_chan[(s, r)] = chan
    for s, r in cached_chan:
        held = cache.entry_meta(s, r).get("channel_rate") if cache.enabled else None
        if (s, r, held) in groups:
            cached_chan[(s, r)] = held
    return groups, cached_chan


def _interrupted(done: int, total: int, n_rows: int, csv_path: str | os.PathLike | None,
                 cache: TuneCache, clustered: bool) -> str:
    """The line an interrupted sweep prints: how far it got and where its results are."""
    where = (f"its {n_rows} rows so far are in the CSV {csv_path}" if csv_path
             is not None else "no CSV was asked for")
    kept = ("nowhere else (" + ("clustered masks are never cached" if clustered
                                else "the cache is off") + ")" if not cache.enabled
            else f"not in the cache file ({cache.unsaved_why or 'not written'})"
            if not cache.saved else
            "in the cache, which a re-run reads (it times the rest)")
    return (f"sweep: interrupted after {done} of {total} item(s): {where}; the "
            f"items timed are {kept}")


def _same_item(meta: dict, chan: float, flops_ratio: float) -> bool:
    """Whether the cache entry of ``meta`` was timed on a mode-both item at channel rate
    ``chan``: its "channel_rate", or, in an entry recorded before that was kept, its
    FLOPs ratio (the same asked rate draws the same masks)."""
    if "channel_rate" in meta:
        return meta["channel_rate"] == chan
    return abs(float(meta.get("flops_ratio", math.nan)) - flops_ratio) < 1e-12


def _estimate_reps(variants: dict[str, Variant], fb, x, masks, dev) -> int:
    """Reps for one spec from one warm dense call (the sparse ones are rarely slower).
    On CUDA do_bench picks its own repetitions."""
    if dev.type == "cuda":
        return MIN_REPS
    dense = variants.get("dense") or next(iter(variants.values()), None)
    if dense is None:
        return MIN_REPS
    try:
        with torch.no_grad():
            t = median_time(lambda: dense.run(fb, x, masks, {}), dev, warmup=1, reps=1)
    except Exception:  # the timing itself reports failures; only the estimate is lost
        return MIN_REPS
    return _reps(t)
