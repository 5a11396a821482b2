"""The dispatch table of each distinct block ``laudtriton.compile`` plans: the variants
that can run it, and their timings read from the autotune cache, taken now, or predicted,
per ``tune`` mode (the rule is in ``laudtriton.compile``'s module docstring)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from .ops import BlockSpec, variants_for
from .ops.synthetic import synthetic_masks
from .predict.hardware import DTYPES as PREDICTED_DTYPES
from .schedule import Choice, DispatchTable, near, rate_key, run_rate
from .tune.keys import rate_bucket
from .tune.measure import config_key, time_variants

if TYPE_CHECKING:
    import torch

    from .nn.block import BlockMasks
    from .ops.fold import FoldedBlock
    from .ops.registry import Variant
    from .predict.hardware import HardwareSpec
    from .predict.model import Factors
    from .tune.cache import TuneCache

log = logging.getLogger("laudtriton")

QUICK_RATES = (0.2, 0.5, 0.8)
TUNE_MODES = ("cached", "quick", "full", "off")  # compile's ``tune`` (compile_checks)
_TOLD: set[tuple[str, BlockSpec, str]] = set()  # (cache file, block, variants) warned of


def candidate_variants(spec: BlockSpec, backend: str, only: Collection[str] | None = None
                       ) -> list[Variant]:
    """Variants that run ``spec`` exactly on ``backend`` ("cpu" or "cuda"; not the Triton
    ones where triton cannot be imported); restricted to the names in ``only`` when given
    (falling back to ``dense`` where none of them supports the block).

    Raises:
        ValueError: on an unknown backend (``ops.variants_for``).
    """
    cands = variants_for(spec, backend)
    if backend == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            cands = [v for v in cands if not v.needs_triton]
    if only is not None:
        cands = [v for v in cands if v.name in only] or [v for v in cands if v.name == "dense"]
    return cands


ALL_BUCKETS = tuple(i / 10 for i in range(11))


def _known_configs(hit, spaces: dict[str, set[str]], cache, spec, rate):
    """The cached timings ``hit`` ({variant: {config: s}}) of the candidate variants
    (``spaces``: their config keys on ``spec``), those of a config outside its variant's
    space dropped with a warning naming the cache file: a hand-edited file, or one written
    by another version of a variant's config list, must not reach a kernel launch."""
    if not hit:
        return hit
    out, bad = {}, []
    for v, cfgs in hit.items():
        if v not in spaces:
            continue
        known = {c: t for c, t in cfgs.items()  # a JSON object (the cache checks)
                 if config_key(json.loads(c)) in spaces[v]}
        bad += [f"{v} {c}" for c in cfgs if c not in known]
        if known:
            out[v] = known
    if bad:
        log.warning("autotune cache %s: %s at rate %s has config(s) outside the "
                    "variant's space, ignored: %s", cache.path, spec.short(), rate,
                    ", ".join(bad[:4]) + (" ..." if len(bad) > 4 else ""))
    return out


def plan_block(spec: BlockSpec, fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks,
               cands: list[Variant], tune: str, cache: TuneCache | None,
               predictor: tuple[HardwareSpec, dict[str, Factors]] | None,
               say: Callable[[str], None] = lambda text: None) -> DispatchTable:
    """The dispatch table of one distinct block (``compile``'s tune rule).

    fb: the folded block; x: its example input [B, Cin, H, W] (channels_last) and masks
    the masks its maskers give for x; cands: the variants to choose from
    (``candidate_variants``); tune: one of ``TUNE_MODES``; cache: the
    autotune cache (None with tune "off"); predictor: ``predict.calibration.
    fitted_predictor``'s (hardware, factors), or None. say: called with one line before
    ``tune`` "quick"/"full" times the block's rates (minutes in all on a CPU with nothing
    cached: the caller shows progress), one more before they time the example's own
    masks (its bucket uncovered), and before "off", or "cached" falling back to it, times
    the variants on the example input. A cached rate whose timings lack a candidate variant
    is not used, with a warning naming the variants and the cache file.

    Raises:
        ValueError: on a ``tune`` not in ``TUNE_MODES``.
        RuntimeError: when every candidate variant fails on the example input.
    """
    if tune not in TUNE_MODES:  # as ``compile`` checks it: it was planned as "off"
        raise ValueError(f"tune {tune!r} unknown; accepted: {', '.join(TUNE_MODES)}")
    table = DispatchTable()
    actual = float(run_rate(spec, masks))
    failed: list[float] = []  # rates timed before where every candidate failed
    seen: dict[str, dict[str, float]] = {}  # per variant, per config: the best cached time
    lacking: list[set[str]] = []  # per cached rate not used: the candidates it lacks
    if tune in ("cached", "quick", "full") and cache is not None:
        failed, seen, lacking = _cached_entries(table, spec, cands, cache)
    if tune in ("quick", "full"):
        _timed_entries(table, spec, fb, x, masks, actual, cands, tune, cache, failed, say)
    if tune == "cached" and predictor is not None:
        _predicted_entries(table, spec, cands, predictor, seen)
    if not table.entries and len(cands) == 1:  # nothing to choose from
        table.entries[rate_key(actual)] = Choice(cands[0].name, (), math.nan, "rule")
    if not table.entries:  # "off", or "cached" with nothing cached: time on the example
        if tune == "cached":
            say(f"no {'usable ' if lacking else ''}cached timings for {spec.short()}; "
                f"timing {len(cands)} variant(s) on the example input")
        else:
            say(f"timing {spec.short()}, {len(cands)} variant(s) on the example input")
        table.add(actual, time_variants(fb, spec, x, masks, cands, verify=True), "measured")
    if not table.entries:
        raise RuntimeError(
            f"compile: every candidate variant ({', '.join(c.name for c in cands)}) failed "
            f"on the example input of a block {spec.short()}; the warnings logged above "
            "say why")
    return table


def _cached_entries(table: DispatchTable, spec: BlockSpec, cands: list[Variant],
                    cache: TuneCache
                    ) -> tuple[list[float], dict[str, dict[str, float]], list[set[str]]]:
    """``plan_block``'s cached rates: into ``table``, each at the rate it was timed at,
    where every candidate has a current timing. Returns (failed: the cached rates where
    every candidate failed; seen: each variant's best time per config over all cached
    rates; lacking: the candidates missing at each rate not used, warned once)."""
    failed: list[float] = []
    seen: dict[str, dict[str, float]] = {}
    lacking: list[set[str]] = []
    names = {c.name for c in cands}
    spaces = {c.name: {config_key(k) for k in c.configs(spec)} for c in cands}
    for r in cache.rates(spec):  # each at the rate it was timed at
        hit = _known_configs(cache.lookup(spec, r), spaces, cache, spec, r)
        for v, cfgs in (hit or {}).items():
            best = seen.setdefault(v, {})
            for c, t in cfgs.items():
                best[c] = min(t, best.get(c, math.inf))
        # a rate counts only when every candidate has a current timing: after a
        # source edit hides one variant's timings, the others' alone would decide
        if hit and names <= set(hit):
            table.add(r, {v: t for v, t in hit.items() if v in names}, "cached")
            if rate_key(r) not in table.entries:
                failed.append(rate_key(r))
        elif hit:
            lacking.append(names - set(hit))
    missing = ", ".join(sorted(set().union(*lacking)))
    if lacking and (str(cache.path), spec, missing) not in _TOLD:
        _TOLD.add((str(cache.path), spec, missing))  # once per process
        log.warning(
            "autotune cache %s: %s has timings at %d rate(s) without %s (not timed: "
            "`laudtriton sweep --variants`, or compile with variants= and tune "
            "'quick'/'full', times only those named; or its code changed since); a "
            "rate is planned from the cache only where every candidate variant was "
            "timed there", cache.path, spec.short(), len(lacking), missing)
    return failed, seen, lacking


def _record_meta(spec: BlockSpec, asked: float, masks: BlockMasks) -> dict:
    """The meta a quick/full compile records its timings of ``masks`` (drawn for the
    bucket ``asked``) with: scattered masks, the asked rate, and in mode both the channel
    rate the masks realise, as ``tune.sweep`` records it (a sweep takes an entry of this
    grid rate without one for another channel rate's item: it timed it again at every
    run, for its CSV only)."""
    meta: dict = {"asked_rates": [asked], "clustered": False}
    if spec.mode == "both" and masks.channel is not None:
        meta["channel_rate"] = rate_key(float(masks.channel.float().mean()))
    return meta


def _timed_entries(table: DispatchTable, spec: BlockSpec, fb: FoldedBlock, x: torch.Tensor,
                   masks: BlockMasks, actual: float, cands: list[Variant], tune: str,
                   cache: TuneCache | None, failed: list[float],
                   say: Callable[[str], None]) -> None:
    """``plan_block``'s timings for tune "quick"/"full": the grid's buckets (and the
    example's) that ``table`` does not cover, timed on synthetic masks, into ``table`` and
    the cache; then, if the example's bucket is still uncovered, the example's own masks
    (``actual``: the rate they realise; into ``table`` only)."""
    grid = QUICK_RATES if tune == "quick" else ALL_BUCKETS
    todo = [b for b in sorted({rate_bucket(r) for r in grid} | {rate_bucket(actual)})
            if not (table.covers(b) or near(failed, b))]  # not timed at every compile
    said = False
    for b in todo:
        m = synthetic_masks(spec, b, seed=int(b * 1000), device=x.device)
        # kept at the rate the masks realise (round(b·N)/N: a layer gate at batch 1
        # is off at b = 0.2), once
        r = rate_key(run_rate(spec, m))
        if r in table.entries or r in failed:
            continue
        if not said:
            say(f"timing {spec.short()}, {len(cands)} variant(s), up to {len(todo)} "
                "rate(s)")
            said = True
        timings = time_variants(fb, spec, x, m, cands, verify=True)
        if cache is not None:
            # scattered masks: an entry an old clustered sweep wrote is current again
            cache.record(spec, r, timings, _record_meta(spec, b, m))
        table.add(r, timings, "measured")
        if r not in table.entries:  # every candidate failed: not again (below, or
            failed.append(r)  # at the next compile: it is recorded)
    b = rate_bucket(actual)
    if not (table.covers(b) or near(failed, b)):
        # the masks of the example's bucket realised another rate (one grid cell per
        # sample: round(0.5·1) = 0), and its rate would be read off the timings of
        # another: timed on the example's own masks (not cached: not scattered ones)
        say(f"timing {spec.short()} at the example's rate {actual:.3f}, which no "
            "synthetic masks realise")
        table.add(actual, time_variants(fb, spec, x, masks, cands, verify=True), "measured")


def _predicted_entries(table: DispatchTable, spec: BlockSpec, cands: list[Variant],
                       predictor: tuple[HardwareSpec, dict[str, Factors]],
                       seen: dict[str, dict[str, float]]) -> None:
    """``plan_block``'s predicted rates for tune "cached": the buckets no entry covers,
    estimated by ``predictor`` for the candidates that ran where they were cached
    (``seen``) or were not cached at all, when at least two such remain and the
    predictor models the dtype."""
    # the predictor models float32, float16 and bfloat16, but a CPU calibration measures
    # a float32 peak only: another dtype (float64, or a half one on a calibrated CPU,
    # whose fp32 rate would stand in unsaid) is timed on the example input by
    # ``plan_block`` when nothing is cached
    if not (len(cands) > 1 and spec.dtype in PREDICTED_DTYPES
            and spec.dtype in dict(predictor[0].peak)):
        return
    from .schedule import fill_predictions

    # not a variant that failed wherever it was timed; with a config that ran
    ran = {v: min(cfgs, key=cfgs.get) for v, cfgs in seen.items()
           if any(math.isfinite(t) for t in cfgs.values())}
    usable = [c for c in cands if c.name in ran or c.name not in seen]
    if len(usable) > 1:
        fill_predictions(table, spec, ALL_BUCKETS, usable, predictor[0], predictor[1],
                         configs=ran)
