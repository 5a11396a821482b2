"""The sweep's CSV: its columns, writing rows to it and reading them back checked, by the
rules a cell keeps (``cell_problem``, ``positive_int``, ``FLAGS``) that the plots' check of
rows given to them (``plot_rows.check_measured``) shares."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import atomic_text
from .cache_file import is_valid_spec
from .options import MAX_BATCH, MAX_INPUT_SIZE

if TYPE_CHECKING:
    from ..ops.spec import BlockSpec

# rate: the rate the masks realise, what the timing is recorded at; asked_rate: the rate
# asked for (``sweep``), by which the whole-model plot sums its blocks; input_size: the
# model's image side (the plots keep sizes apart; empty in CSVs before session 31);
# dispatched: 1 for the item the cache keeps for its (spec, rate), 0 for the CSV-only
# items of mode both at another channel rate (``sweep``; absent before session 42: 1)
CSV_FIELDS = ("model", "block", "spec", "S", "rate", "variant", "config", "seconds",
              "dense_seconds", "ratio", "flops_ratio", "spec_key", "device", "clustered",
              "asked_rate", "input_size", "dispatched")
NEEDED = ("model", "block", "spec", "rate", "variant", "seconds")  # the plots' columns
NAMES = ("model", "block", "variant")  # a figure's name, a panel's, a line's
FLAGS = {"0": False, "false": False, "1": True, "true": True}  # a 0/1 cell (any case)


def cell_problem(column: str, value: object, shown: str, nan_seconds: bool = False
                 ) -> str | None:
    """What is wrong with a cell of a sweep row, or None: the rule ``read_csv`` and the
    plots' rows given (``plot_rows.check_measured``) both keep. model, block, variant
    (``value`` text or None): not empty; rate, asked_rate, flops_ratio, seconds (``value``
    the cell as a float): a rate in [0, 1], a FLOPs ratio finite and >= 0, seconds > 0
    (inf: a failed config; nan too with ``nan_seconds``, as rows given may hold).
    ``shown``: the cell as the message writes it ("column 'rate': 1.5 is outside [0, 1]").

    Raises:
        ValueError: for a column of no rule here (a caller's slip).
    """
    if column in NAMES:
        empty = value is None or not str(value).strip()
        return f"column {column!r} is empty" if empty else None
    if column in ("rate", "asked_rate"):
        ok, why = 0.0 <= value <= 1.0, "is outside [0, 1]"
    elif column == "flops_ratio":
        ok, why = value >= 0.0 and math.isfinite(value), "is not a finite ratio >= 0"
    elif column == "seconds":
        ok = value > 0.0 or (nan_seconds and math.isnan(value))
        failed = "inf or nan" if nan_seconds else "inf"
        why = f"is not a positive time (or {failed}, a failed config)"
    else:
        raise ValueError(f"cell_problem: column {column!r} has no rule here")
    return None if ok else f"column {column!r}: {shown} {why}"


def whole_block(flops_ratio: float | None) -> bool:
    """Whether an item at rate 1 computes the whole block (its dense time, the plots' and
    the sweep summary's "dense"): its FLOPs ratio 1 (within float rounding) or unknown;
    mode both's grid rate 1 may be at a lower channel rate."""
    return flops_ratio is None or flops_ratio >= 1.0 - 1e-6


def positive_int(value: object) -> int | None:
    """A cell (text, as a CSV holds it, or a number) as an int >= 1; None when it is not
    one ('64.0', 64.5, '0', 'x', inf)."""
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):  # (OverflowError: inf)
        return None
    return n if n >= 1 and (isinstance(value, str) or n == value) else None


def _shown(x: float) -> str:
    """A number as an error names it: short (0 for 0.0), and the number read (1.0000001,
    which ``{:g}`` wrote 1, a rate inside [0, 1] named as outside it)."""
    return f"{x:g}" if float(f"{x:g}") == x else repr(x)


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write sweep rows (CSV_FIELDS columns) to ``path``; returns it. Written beside it
    and moved over it: a write cut short (Ctrl-C) leaves the file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_text(path) as fh:  # (UTF-8, no newline translation: as read_csv reads it)
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows({**r, "dispatched": int(r["dispatched"])}  # (1/0, not True/False)
                    if isinstance(r.get("dispatched"), bool) else r for r in rows)
    return path


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a sweep CSV with numeric columns parsed.

    Raises:
        ValueError: naming ``path`` (and the row and column): not a readable CSV, a
            column the plots need missing (a bench CSV, ``laudtriton bench --csv``'s, is
            named as one), a row with more cells than the header has columns, an empty
            model, block or variant, a rate or seconds cell that is not a number, a rate
            outside [0, 1], a FLOPs ratio that is negative or not finite, an S that is
            not an int >= 1, a dispatched cell that is not 0 or 1 (empty or absent: 1), a
            spec_key that is not a block spec, seconds that are not positive (inf, a
            failed config, is accepted, and so is nan dense seconds: sweep writes both).
    """
    try:  # (utf-8-sig: a CSV saved by a spreadsheet may start with a byte-order mark)
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (csv.Error, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from None
    need = set(NEEDED)
    bench = ("dense_ms", "sparse_ms", "ratio")  # a bench CSV's timing columns
    if rows and not need <= set(rows[0]) and set(bench) <= set(rows[0]):
        raise ValueError(f"{path}: a `laudtriton bench --csv` file (columns "
                         f"{', '.join(bench)}), not a sweep CSV: the plots take a sweep CSV "
                         "(`laudtriton sweep --csv`) or the autotune cache (`--from cache`)")
    if rows and not need <= set(rows[0]):
        raise ValueError(f"{path}: not a sweep CSV; missing columns "
                         f"{sorted(need - set(rows[0]))}")
    for i, r in enumerate(rows, 1):
        at = f"{path}: row {i} (line {i + 1})"
        where = f"{at}, column"
        if None in r:  # DictReader's key for the cells past the header's columns
            raise ValueError(f"{at} has {len(r) - 1 + len(r[None])} "
                             f"cells, more than the {len(r) - 1} columns of its header")
        for k in NAMES:
            if why := cell_problem(k, r[k], ""):
                raise ValueError(f"{at}, {why}")
        for k in ("rate", "seconds", "dense_seconds", "ratio", "flops_ratio", "asked_rate"):
            if k in ("rate", "seconds") or r.get(k) not in (None, ""):
                try:
                    r[k] = float(r[k])
                except (TypeError, ValueError):
                    raise ValueError(f"{where} {k!r}: {r[k]!r} is not a number") from None
        # a failed config scores inf seconds, and the row of a block whose dense variant
        # failed has dense_seconds nan (``item_rows``): sweep writes them, the plots skip them
        for k in ("rate", "asked_rate", "flops_ratio", "seconds"):
            if isinstance(r.get(k), float) and (why := cell_problem(k, r[k], _shown(r[k]))):
                raise ValueError(f"{at}, {why}")
        _read_positive_int(r, "input_size", where, "a positive int")
        d = r.get("dense_seconds")
        if isinstance(d, float) and not (d > 0.0 or math.isnan(d)):
            raise ValueError(f"{where} 'dense_seconds': {d:g} is not a positive time "
                             "(or nan, a failed dense variant)")
        _read_positive_int(r, "S", where, "a patch size >= 1")
        flag = (r.get("dispatched") or "1").strip().lower()  # (a blank cell: refused)
        if flag not in FLAGS:
            raise ValueError(f"{where} 'dispatched': {r['dispatched']!r} is not 0 or 1")
        r["dispatched"] = FLAGS[flag]
        key = r.get("spec_key")
        why = None if key in (None, "") else spec_key_problem(key)
        if why:
            raise ValueError(f"{where} 'spec_key': {key[:80]!r} {why}")
    return rows


def spec_key_problem(key: str, max_batch: int | None = MAX_BATCH) -> str | None:
    """What is wrong with ``key``, or None when it is the JSON of a valid BlockSpec
    (``BlockSpec.key``) of a size a sweep can time: map sides up to MAX_INPUT_SIZE and a
    batch up to ``max_batch`` (default MAX_BATCH), the bounds of ``--input-size`` and
    ``--batch`` (a map of 100000 x 100000 passed, and ``plot``'s predicted curve tried to
    allocate 80 GB). max_batch None: no batch bound, for rows that need not come from a
    sweep (the plots' rows: the cache's hold what compile timed, at any batch)."""
    try:
        d = json.loads(key)
    except ValueError:  # not JSON
        return "is not a block spec"
    if not is_valid_spec(d):
        return "is not a block spec"
    if max(d["in_hw"]) > MAX_INPUT_SIZE or (max_batch is not None
                                             and d.get("batch", 1) > max_batch):
        return (f"is a block larger than a sweep times (map sides up to {MAX_INPUT_SIZE}"
                + (f", batch up to {max_batch})" if max_batch is not None else ")"))
    return None


def _read_positive_int(r: dict, k: str, where: str, what: str) -> None:
    """Parse row r's optional column k as an int >= 1 in place; a ValueError naming
    ``where`` and the cell as written otherwise."""
    if r.get(k) in (None, ""):  # (a blank cell: refused)
        return
    v = positive_int(r[k])
    if v is None:
        raise ValueError(f"{where} {k!r}: {r[k]!r} is not {what}")
    r[k] = v


def item_rows(model_name: str, members: Sequence[tuple[str, object]], spec: BlockSpec,
              rate: float, timings: dict[str, dict[str, float]], fr: float, device: str,
              clustered: bool, asked: float, dispatched: bool, input_size: int
              ) -> list[dict]:
    """The CSV rows of one item of ``sweep.sweep``: a row per block in ``members`` (name,
    block), variant and config of ``timings``, at ``rate`` (``asked``: the rate asked for);
    "dispatched": the item is the one that stands for its
    (spec, rate) in the cache (mode both: of the items at one grid rate, the one whose
    channel rate is nearest it), which compile reads and the plots draw. "dense_seconds"
    is the ``dense`` variant's fastest time at this rate and "ratio" seconds over it: that
    variant applies the masks (with channel masks in unpacked convolutions, 1.1-2.8x the
    dense block on CPU), so the plots and the sweep's summary measure against the fastest
    timing at rate 1 instead, where the sweep has one (``plot_rows.spec_curves``)."""
    dense = [t for t in (timings.get("dense") or {}).values() if math.isfinite(t)]
    d = min(dense) if dense else math.nan
    out = []
    for name, _ in members:
        for vn in sorted(timings, key=lambda n: (n != "dense", n)):
            for cfg, t in sorted(timings[vn].items()):
                out.append({
                    "model": model_name, "block": name, "spec": spec.short(),
                    "S": spec.granularity, "rate": rate, "variant": vn, "config": cfg,
                    "seconds": t, "dense_seconds": d, "ratio": t / d if d > 0 else math.nan,
                    "flops_ratio": fr, "spec_key": spec.key(), "device": device,
                    "clustered": int(clustered), "asked_rate": asked,
                    "input_size": input_size, "dispatched": dispatched,
                })
    return out
