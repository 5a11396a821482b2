"""Sweep rows grouped into figures and curves, for :mod:`laudtriton.plot`.

Rows come from a sweep CSV or the autotune cache (``rows_from_cache``); ``group_rows``
sorts them into figure groups (per model, mode, batch, dtype, input size, device and mask
kind), ``spec_curves`` makes one block spec's lines of a group (each variant's fastest
config, "best", "dense": the dense block, from ``dense_blocks``, with the ``dense``
variant's line then "masked dense", "ideal" and "predicted"), and ``missing_blocks``
says which blocks of a LAUD-ResNet the rows lack. No matplotlib here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .nn.resnet import DEPTHS
from .ops.spec import BlockSpec
from .ops.synthetic import synthetic_masks
from .tune.sweep_blocks import ideal_flops_ratio
from .tune.sweep_csv import (
    FLAGS,
    NAMES,
    NEEDED,
    cell_problem,
    positive_int,
    spec_key_problem,
    whole_block,
)

if TYPE_CHECKING:
    from .tune.cache import TuneCache

Rows = Sequence[Mapping]
Predicted = Mapping[str, Mapping[float, float]]  # spec (short or key) -> {rate: seconds}

UNNAMED = "cache"  # the model of cache entries no sweep named (e.g. compile's timings)


def rows_from_cache(cache: TuneCache) -> list[dict]:
    """Sweep-like rows (model, block, spec, spec_key, rate, variant, config, seconds,
    flops_ratio, asked_rate, input_size) from a TuneCache's current entries; models and
    block names come from the entries' meta (entries without them go under model
    ``UNNAMED``, one "block" per spec, of no network: ``plot_latency_vs_rate`` draws no
    whole-model figure of them)."""
    rows = []
    for e in cache.entries():
        models = e.meta.get("models") or {UNNAMED: [e.spec.short()]}
        for model, blocks in models.items():
            for b in blocks:
                for asked in e.meta.get("asked_rates") or [""]:  # one row per asked rate
                    rows.append({"model": model, "block": b, "spec": e.spec.short(),
                                 "spec_key": e.spec.key(), "rate": e.rate_bucket,
                                 "variant": e.variant, "config": e.config,
                                 "seconds": e.seconds,
                                 "flops_ratio": e.meta.get("flops_ratio", ""),
                                 "asked_rate": asked,
                                 "input_size": e.meta.get("input_size", "")})
    return rows


def spec_of_row(row: Mapping) -> BlockSpec | None:
    """The BlockSpec of a sweep CSV row (its ``spec_key`` column, a BlockSpec dict as
    JSON); None when the row has none, or one BlockSpec.from_dict refuses (ValueError,
    TypeError, KeyError: a field missing)."""
    key = row.get("spec_key")
    if not key:
        return None
    try:
        return BlockSpec.from_dict(json.loads(key))
    except (ValueError, TypeError, KeyError):
        return None


def _flag(row: Mapping, column: str, default: bool) -> bool:
    """A 0/1 column of a sweep row: a bool or a number 0 or 1, or text as a CSV holds
    it ("0", "1", "false", "true", any case); ``default`` when absent or empty.

    Raises:
        ValueError: naming the column and the value, for any other value (a '1.0' of a
            CSV rewritten by pandas, 'yes', 2, nan): read as one or the other, it put rows
            in the wrong figure, or left in rows the cache does not keep.
    """
    v = row.get(column)
    text = v.strip().lower() if isinstance(v, str) else None
    if v is None or text == "":
        return default
    if text in FLAGS:  # (read_csv's texts)
        return FLAGS[text]
    if text is None and v in (0, 1):  # a bool or a number, numpy's too (nan is neither)
        return bool(v)
    raise ValueError(f"column {column!r}: {row.get(column)!r} is not 0 or 1 (nor true, "
                     "false or empty)")


def clustered_row(row: Mapping) -> bool:
    """Whether a sweep row was timed on clustered masks (column ``clustered`` 1 or true;
    0, false, empty or absent: scattered). Raises ValueError for another value
    (``_flag``)."""
    return _flag(row, "clustered", False)


def _dispatched(row: Mapping) -> bool:
    """Whether the cache keeps the row: column ``dispatched`` absent or empty, or 1 or
    true (a bool, a number, or text as a CSV holds it); 0 or false: not kept. Raises
    ValueError for another value (``_flag``)."""
    return _flag(row, "dispatched", True)


def _input_size(row: Mapping) -> int | None:
    """The row's ``input_size`` as an int (224 or "224": rows given as csv.DictReader
    reads them hold text); None when absent, empty or blank (read_csv refuses a blank
    cell).

    Raises:
        ValueError: naming the column and the value, when it is not an int >= 1.
    """
    v = row.get("input_size")
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    size = positive_int(v)  # (read_csv's rule: not 64.5, '64.0' or 0)
    if size is None:
        raise ValueError(f"column 'input_size': {v!r} is not a positive int")
    return size


def _number(row: Mapping, column: str) -> float:
    """The row's ``column`` as a float; a ValueError naming it when it is not a number."""
    try:
        return float(row[column])
    except (TypeError, ValueError):
        raise ValueError(f"column {column!r}: {row[column]!r} is not a number") from None


def _check_row(row: Mapping) -> None:
    """A ValueError naming the column of a row the figures would misread or fail on, as
    ``read_csv`` refuses a CSV's, by the same rules (``sweep_csv.cell_problem``): a column
    of NEEDED missing; an empty model, block or variant; a rate or asked_rate not in
    [0, 1]; seconds not > 0 (inf or nan: a failed config, left out; read_csv refuses nan);
    a flops_ratio not finite and >= 0; a spec_key (where not empty) that is not the JSON
    text of a BlockSpec with map sides a sweep can time (of any batch: ``plot --from
    cache`` checks the cache's rows, which hold compile's timings too, by this rule; a
    batch over a sweep's refused them until review s66l); flags and input size as
    ``_flag`` and ``_input_size`` read them (a blank cell: empty; read_csv refuses it).
    (Rows given to ``plot_latency_vs_rate`` were drawn unchecked: a rate 5 or seconds
    -1 made a silently wrong figure, a missing column a KeyError; a spec_key that was no
    BlockSpec's JSON a figure named without mode, batch or dtype, and one given as a dict
    a TypeError.)"""
    missing = [k for k in NEEDED if k not in row]
    if missing:
        raise ValueError(f"no column {', '.join(map(repr, missing))} (a row needs "
                         f"{', '.join(NEEDED)})")
    for k in NAMES:
        if why := cell_problem(k, row[k], ""):
            raise ValueError(why)
    for k in ("seconds", "rate", "asked_rate", "flops_ratio"):
        if k in ("seconds", "rate") or row.get(k) not in (None, ""):
            if why := cell_problem(k, _number(row, k), repr(row[k]), nan_seconds=True):
                raise ValueError(why)
    key = row.get("spec_key")
    if key not in (None, ""):  # (read_csv's rule, but for the batch: the cache's rows hold
        # what compile timed, at any batch; a batch over --batch's bound refused the cache)
        why = (spec_key_problem(key, max_batch=None) if isinstance(key, str)
               else "is not a block spec")
        if why:
            raise ValueError(f"column 'spec_key': {str(key)[:80]!r} {why} (JSON text)")
    _dispatched(row)  # (each raises for a cell it cannot read)
    clustered_row(row)
    _input_size(row)


def _context(r: Mapping, spec: BlockSpec) -> tuple:
    """What keeps one sweep's rows apart from another's, but the mode: model, batch,
    dtype, input size, device, mask kind."""
    return (str(r["model"]), spec.batch, spec.dtype, _input_size(r),
            str(r.get("device") or ""), clustered_row(r))


def _modes(parsed: list[tuple[Mapping, BlockSpec | None]]) -> dict[tuple, str]:
    """{(context, block): the figure's mode} for the models swept with a mode per stage:
    in a context (``_context``) where every block has rows of one mode and the blocks
    have several, each block's mode becomes the stages' modes in order ('spatial-channel-
    layer-spatial', from the blocks' names layerN.j).
    Elsewhere a block keeps its own mode and is not listed: one mode; a block with rows
    of several, a stage with blocks of several, a block not named layerN.j, or a LAUD
    model (``nn.resnet.DEPTHS``) with a stage missing (separate sweeps, whose blocks
    summed under one label would pass for a configuration no sweep ran); the cache's
    unnamed entries, of no network. parsed: (row, ``spec_of_row(row)``) pairs."""
    seen: dict[tuple, dict[str, set[str]]] = {}
    for r, spec in parsed:
        if spec is not None and r["model"] != UNNAMED:  # (no network: a figure per mode)
            seen.setdefault(_context(r, spec), {}).setdefault(str(r["block"]), set()).add(spec.mode)
    out = {}
    for ctx, blocks in seen.items():
        if any(len(m) > 1 for m in blocks.values()) or len(set().union(*blocks.values())) < 2:
            continue
        stage = {}
        for b, (m,) in blocks.items():
            hit = re.fullmatch(r"layer(\d+)\.\d+", b)
            stage.setdefault(int(hit.group(1)) if hit else None, set()).add(m)
        depths = model_depths(ctx[0])
        if None in stage or any(len(m) > 1 for m in stage.values()) or (
                depths is not None and set(stage) != set(range(1, len(depths) + 1))):
            continue
        label = "-".join(next(iter(stage[i])) for i in sorted(stage))
        out.update({(ctx, b): label for b in blocks})
    return out


def group_rows(rows: Rows) -> dict[str, dict]:
    """{figure key: {"blocks": {block: {spec ids}}, "specs": {spec id: (label,
    spec|None)}, "t": {spec id: {variant: {rate: best seconds}}}, "fr": {spec id: {rate:
    ratio}}, "asked": {spec id: {rate: {the rates the sweeps asked for}}}, "clustered":
    whether its rows are on clustered masks}, block and variant names as text (a number
    given, as a CSV would hold it) (rates are the
    ones the masks realise, round(r·N)/N: they differ from block to block, and one may
    stand for several asked rates). A block has several spec ids when the rows hold
    sweeps of the same model at several granularities (a cache that kept them all).
    Rows of a clustered sweep (column ``clustered``) get figures of their own
    ("_clustered"), so do the rows of each input size other than 224 (column
    ``input_size``: "_i64"), and so does each device (column ``device``) when the rows hold
    several: a figure's best time per rate never mixes machines or mask kinds. Rows of
    mode both that the cache does not keep (column ``dispatched`` 0: another channel rate
    at the same grid rate) are left out, as the cache leaves them out: one rate, one
    point. A model swept with a mode per stage gets one figure (its key names the modes
    stage by stage, ``_modes``), not one per mode, each of which would sum part of it."""
    figs: dict[str, dict] = {}
    devices = {str(r.get("device") or "") for r in rows}
    parsed = [(r, spec_of_row(r)) for r in rows if _dispatched(r)]  # (each parsed once)
    modes = _modes(parsed)
    for r, spec in parsed:
        t = float(r["seconds"])
        sid = r.get("spec_key") or r["spec"]
        key = str(r["model"])
        if spec is not None:
            mode = modes.get((_context(r, spec), str(r["block"])), spec.mode)
            key += f"_{mode}_b{spec.batch}_{spec.dtype}"
        size = _input_size(r)  # (224 or "224": rows given may hold text)
        if size not in (None, 224):  # 224 (or not recorded): no suffix
            key += f"_i{size}"
        if len(devices) > 1:
            key += f"_{r.get('device') or 'unknown device'}"
        if clustered_row(r):
            key += "_clustered"
        g = figs.setdefault(key, {"model": str(r["model"]), "blocks": {}, "specs": {},
                                  "t": {}, "fr": {}, "asked": {},
                                  "clustered": clustered_row(r)})
        g["blocks"].setdefault(str(r["block"]), {})[sid] = None  # an ordered set
        g["specs"].setdefault(sid, (str(r["spec"]), spec))
        rate = round(float(r["rate"]), 6)
        if math.isfinite(t):
            cur = g["t"].setdefault(sid, {}).setdefault(str(r["variant"]), {})
            cur[rate] = min(t, cur.get(rate, math.inf))
        if r.get("flops_ratio") not in (None, ""):
            g["fr"].setdefault(sid, {})[rate] = float(r["flops_ratio"])
        if r.get("asked_rate") not in (None, ""):
            g["asked"].setdefault(sid, {}).setdefault(rate, set()).add(
                round(float(r["asked_rate"]), 6))
    return figs


def _flops_ratio(g: dict, sid: str, rate: float) -> float | None:
    fr = g["fr"].get(sid, {}).get(rate)
    if fr is None and g["specs"][sid][1] is not None:
        spec = g["specs"][sid][1]
        fr = ideal_flops_ratio(spec, synthetic_masks(spec, rate))
        g["fr"].setdefault(sid, {})[rate] = fr
    return fr


def dense_blocks(g: dict) -> dict[str, float] | None:
    """{spec id: the dense block's time} for every spec of the group ``g``: its fastest
    finite timing at rate 1 where the item's FLOPs ratio is 1 (``sweep_csv.whole_block``:
    the rows', else the one ``_flops_ratio`` computes); None where some spec has none
    (``spec_curves``)."""
    out = {}
    for sid in g["specs"]:
        ts = [t for by_rate in g["t"].get(sid, {}).values() for r, t in by_rate.items()
              if r == 1.0]
        if not ts or not whole_block(_flops_ratio(g, sid, 1.0)):
            return None
        out[sid] = min(ts)
    return out


def spec_curves(g: dict, sid: str, predicted: Predicted | None
                ) -> dict[str, dict[float, float]]:
    """{line name: {rate: seconds}}: variants, "best", "dense", "ideal", "predicted" (not
    in a figure of clustered masks: the latency model predicts scattered ones, the masks
    of the cached timings it is fitted on).

    "dense" is the dense block's time, the same at every rate (``dense_blocks``: the
    fastest timing at rate 1 of an item whose FLOPs ratio is 1, where every variant
    computes the whole block; channel mode's ``slice`` there runs the packed dense
    weights), and the ``dense`` variant's line is then "masked dense". That variant
    applies the masks in the official order, and with channel masks it runs unpacked
    convolutions: 1.1-2.8x the dense block per block at rate 1 in the shipped CPU
    caches, which as the reference line overstated every speedup in those figures.
    Where some spec of the group has no such timing (no rate 1 swept, every config
    failed there, or mode both's grid rate 1 at a lower channel rate), "dense" is the
    dense variant's line for every spec of the group, as before, so that the
    whole-model figure never sums the two kinds. "ideal" is "dense" x the FLOPs ratio."""
    out = {v: dict(sorted(ts.items())) for v, ts in g["t"].get(sid, {}).items()}
    rates = sorted({r for ts in out.values() for r in ts})
    out["best"] = {r: min(ts[r] for ts in out.values() if r in ts) for r in rates}
    full = dense_blocks(g)
    if full is not None:
        if "dense" in out:
            out["masked dense"] = out.pop("dense")
        out["dense"] = {r: full[sid] for r in rates}
    if "dense" in out:
        ideal = {}
        for r, t in out["dense"].items():
            fr = _flops_ratio(g, sid, r)
            if fr is not None:
                ideal[r] = t * fr
        out["ideal"] = ideal
    if predicted and not g.get("clustered"):
        label = g["specs"][sid][0]
        p = predicted.get(sid) or predicted.get(label)
        if p:
            out["predicted"] = {round(float(r), 6): float(t) for r, t in sorted(p.items())}
    return out


def check_measured(rows: Rows, src: str) -> None:
    """A ValueError naming ``src`` (where the rows come from) when no row the figures
    draw has a finite time: every config failed (sweep scores a failure inf seconds), or
    every row is one the cache does not keep (column ``dispatched`` 0, which
    ``group_rows`` leaves out: no figure was drawn, and the command exited 0 silently);
    or naming the row (counted from 1) and the column of a bad cell (``_check_row``)."""
    for i, r in enumerate(rows, 1):  # said here, before any folder is made for figures
        try:
            _check_row(r)
        except ValueError as e:
            raise ValueError(f"{src}: row {i}, {e}") from None
    kept = [r for r in rows if _dispatched(r)]
    if rows and not kept:
        raise ValueError(f"{src}: all {len(rows)} rows have dispatched 0 (mode both items "
                         "at another channel rate than the one the cache keeps for their "
                         "grid rate), which the figures leave out: nothing to plot")
    if not any(math.isfinite(float(r["seconds"])) for r in kept):
        failed = "" if len(kept) == len(rows) else " drawn (dispatched 1)"
        raise ValueError(f"{src}: nothing finite was measured: all {len(kept)} timings"
                         f"{failed} are inf or nan (every config failed)")


# a "custom_d<depths>" name with more blocks than this is no network a sweep timed (a CSV
# naming custom_d100000000 had plot list 100 million missing blocks for 42 s)
MAX_CUSTOM_BLOCKS = 10000


def model_depths(model: str) -> tuple[int, ...] | None:
    """The depths of the network a sweep named ``model`` (``tune.sweep_blocks.network_name``:
    a factory of ``nn.resnet.DEPTHS`` or "custom_d<depths>", with "_w<width>" for
    another width); None for another name, or a custom one of more than
    MAX_CUSTOM_BLOCKS blocks."""
    hit = re.fullmatch(r"(.+?)(_w[0-9.e+-]+)?", model)
    base = hit.group(1) if hit else model
    custom = re.fullmatch(r"custom_d([0-9]{1,5}(?:-[0-9]{1,5})*)", base)
    if custom:
        depths = tuple(int(d) for d in custom.group(1).split("-"))
        return depths if sum(depths) <= MAX_CUSTOM_BLOCKS else None
    return DEPTHS.get(base)


def missing_blocks(model: str, blocks: Mapping[str, object]) -> list[str]:
    """The blocks of ``model`` (a LAUD-ResNet of ``nn.resnet.DEPTHS``, any width) that
    ``blocks`` lacks, in order; [] for another model (its blocks are not known here)."""
    depths = model_depths(model)
    if depths is None:
        return []
    return [n for n in (f"layer{i + 1}.{j}" for i, d in enumerate(depths) for j in range(d))
            if n not in blocks]
