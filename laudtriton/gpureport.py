"""What ``laudtriton gpucheck`` writes and prints from its timing rows: timings.csv, the
latency-vs-rate plot per model (block sums) and the summary table."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .gpucheck.record import Run

RATES = (0.25, 0.5, 0.75)
MAX_FAILS = 20  # failed checks listed in the table (all of them are in summary.json)
# rate: the rate asked (the tables and the plot group by it); realised_rate: the rate the
# masks realise, round(rate·N)/N, at which the cache records the timing (a layer gate at
# batch 1 is off at 0.25 and 0.5)
FIELDS = ("mode", "spec", "spec_key", "batch", "rate", "realised_rate", "models", "variant",
          "dtype", "config", "seconds", "ratio")


def write_csv(rows: list[dict], path: Path, fields: Sequence[str] = FIELDS) -> None:
    """Write ``rows`` (dicts; by default gpucheck's timing rows) to the CSV file ``path``
    (replaced if it exists, atomically: a run killed while it writes leaves the last
    whole file), with the columns ``fields`` in that order: other keys are left out, a
    missing one is left empty."""
    from .tune.atomic import atomic_text

    with atomic_text(path) as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _block_times(rows: list[dict], model: str) -> dict:
    """{(mode, batch, rate, spec_key): {"count": blocks of ``model`` it stands for, "t":
    {variant: fastest finite seconds}}} from the timing rows of distinct blocks (the
    whole compiled models' rows left out). A block at a rate without a finite dense
    timing > 0 is left out (untimed there): nothing can be set against it, and an inf
    dense sum read as every variant "0.00x" of dense."""
    per: dict = {}
    for r in rows:
        if r["variant"] == "compiled" or not r["models"]:
            continue
        count = len(json.loads(r["models"]).get(model, []))
        if not count or not math.isfinite(r["seconds"]):
            continue
        key = (r["mode"], r["batch"], r["rate"], r["spec_key"])
        d = per.setdefault(key, {"count": count, "t": {}})
        d["t"][r["variant"]] = min(d["t"].get(r["variant"], math.inf), r["seconds"])
    return {k: d for k, d in per.items() if d["t"].get("dense", 0.0) > 0}


def model_curves(rows: list[dict], model: str) -> dict:
    """{(mode, batch): {line: {rate: seconds}}}: whole-model sums over the blocks of
    ``model`` (each distinct block x its count; a block without a dense timing left
    out: ``_block_times``); a variant that does not run a block counts dense there;
    "best" takes the fastest finite timing per block, dense's included (what dispatch
    can run: never above dense, 1.00x where dense wins)."""
    per = _block_times(rows, model)
    out: dict = {}
    names = {n for d in per.values() for n in d["t"]}
    for (mode, batch, rate, _), d in per.items():
        lines = out.setdefault((mode, batch), {})
        dense = d["t"].get("dense", math.inf)
        for n in names | {"best"}:
            t = min(d["t"].values()) if n == "best" else d["t"].get(n, dense)
            lines.setdefault(n, {}).setdefault(rate, 0.0)
            lines[n][rate] += d["count"] * t
    return out


def coverage(rows: list[dict], model: str) -> dict:
    """{(mode, batch): {rate: blocks of ``model`` with a finite dense timing}} (each
    distinct block x its count), to tell a whole model's sums from those of a run a time
    limit cut short (``partial``)."""
    out: dict = {}
    for (mode, batch, rate, _), d in _block_times(rows, model).items():
        per = out.setdefault((mode, batch), {})
        per[rate] = per.get(rate, 0) + d["count"]
    return out


def partial(rows: list[dict], model: str) -> dict:
    """{(mode, batch): (fewest blocks timed at a rate of ``RATES``, the model's blocks)}
    where that is fewer than all of a LAUD-ResNet's blocks (``nn.resnet.DEPTHS``; a rate
    not timed counts 0): the sums there are of part of the model (a run a time limit
    cut short), not of the whole."""
    from .nn.resnet import DEPTHS

    total = sum(DEPTHS.get(model, ()))
    out = {}
    for key, per in coverage(rows, model).items():
        least = min(per.get(x, 0) for x in RATES)
        if total and least < total:
            out[key] = (least, total)
    return out


def plot(rows: list[dict], model: str, path: Path) -> bool:
    """Plot ``model``'s latency (ms, summed over its blocks: ``model_curves``) against the
    activation rate into the image file ``path`` (format from its suffix; gpucheck writes
    PNGs), replaced atomically (a temp file beside it, then renamed): a panel per (mode,
    batch), a line per variant, dense and "best". Returns False, writing nothing, when
    ``rows`` hold no block of ``model`` with a finite dense timing. Needs matplotlib."""
    from matplotlib.figure import Figure

    from .tune.atomic import save_figure

    curves = model_curves(rows, model)
    if not curves:
        return False
    cut = partial(rows, model)
    keys = sorted(curves)
    fig = Figure(figsize=(4.2 * len(keys), 3.6))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for n, pts in sorted(curves[key].items()):
            rs = sorted(pts)
            style = {"dense": dict(color="black", lw=2), "best": dict(color="tab:red", lw=2,
                                                                      ls="--")}.get(n, {})
            ax.plot(rs, [pts[x] * 1e3 for x in rs], marker="o", ms=3, label=n, **style)
        part = (f" (partial: {cut[key][0]} of {cut[key][1]} blocks at a rate)"
                if key in cut else "")
        ax.set_title(f"{model} {key[0]} b{key[1]}{part}", fontsize=9)
        ax.set_xlabel("activation rate")
        ax.set_ylabel("block sum (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    # a run killed meanwhile (a hard time limit) leaves the last whole image
    save_figure(fig, path, dpi=110)
    return True


def table(r: Run, models: list[str]) -> str:
    """The summary table gpucheck prints, from ``r.rows`` and ``r.checks``: per model and
    (mode, batch), the dense block sum (ms, as timed at the first rate listed), the sum
    over the blocks of each block's fastest of dense and its variants (``model_curves``'
    "best": 1.00x means dense won every block) over dense at each of ``RATES``, and the
    whole compiled model's
    time over dense's (LAUD-ResNet-101 only, at rate 0.5), and, where a time limit left
    some blocks untimed, "partial: k of N blocks" (``partial``); then how many checks passed,
    and the first ``MAX_FAILS`` failures (their errors cut at 200 characters)."""
    lines = [f"{'model':<15} {'mode':<8} {'batch':>5} {'dense ms':>9} "
             + " ".join(f"{'best@' + str(x):>9}" for x in RATES) + f" {'whole@0.5':>10}"]
    for model in models:
        cut = partial(r.rows, model)
        for (mode, batch), c in sorted(model_curves(r.rows, model).items()):
            dense = c.get("dense", {})
            d = next(iter(dense.values()), math.nan)
            best = [c["best"].get(x, math.nan) / dense.get(x, math.nan) for x in RATES]
            whole = [row["ratio"] for row in r.rows if row["variant"] == "compiled"
                     and row["mode"] == mode and row["batch"] == batch]
            w = f"{whole[0]:.2f}x" if whole and model == "laud_resnet101" else "-"
            lines.append(f"{model:<15} {mode:<8} {batch:>5} {d * 1e3:>9.2f} "
                         + " ".join(f"{b:>8.2f}x" for b in best) + f" {w:>10}"
                         + ("  partial: {} of {} blocks timed at a rate".format(
                             *cut[(mode, batch)]) if (mode, batch) in cut else ""))
    ok = sum(c["ok"] for c in r.checks)
    failed = [c for c in r.checks if not c["ok"]]
    lines.append(f"checks: {ok}/{len(r.checks)} passed"
                 + "".join(f"\n  FAIL {c['check']}: {c['error'][:200]}"
                           for c in failed[:MAX_FAILS]))
    if len(failed) > MAX_FAILS:  # a console keeps only its end: the table must fit
        lines.append(f"  ... and {len(failed) - MAX_FAILS} more failed (summary.json)")
    return "\n".join(lines)
