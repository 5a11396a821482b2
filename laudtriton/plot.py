"""Latency-vs-rate figures from sweep results (a sweep CSV or the autotune cache).

Per model: one panel per distinct block spec (small multiples) with one line per variant
(fastest config), the dense line, the ideal line (dense x FLOPs ratio) and, when given, the
predicted line; and the whole-model curve (sum over every block). matplotlib (Agg, no
pyplot state). The rows' grouping into figures and curves is :mod:`laudtriton.plot_rows`'s;
the command, ``laudtriton plot --from CSV|cache --out DIR``, is
:mod:`laudtriton.plot_command`'s.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .plot_rows import (
    UNNAMED,
    Predicted,
    Rows,
    check_measured,
    group_rows,
    missing_blocks,
    spec_curves,
)
from .tune.atomic import save_figure
from .tune.sweep_csv import read_csv

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("laudtriton")

_STYLE = {"dense": dict(color="black", lw=2.0, marker="s", ms=3),
          "ideal": dict(color="0.45", lw=1.5, ls="--", marker="+", ms=5),
          "predicted": dict(color="tab:purple", lw=1.5, ls=":", marker="x", ms=4),
          "best": dict(color="tab:red", lw=2.0, marker="*", ms=5)}
_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:cyan", "tab:olive", "tab:brown",
           "tab:pink", "tab:gray"]


def _draw(ax, curves: dict[str, dict[float, float]], colors: dict[str, str]) -> None:
    order = [k for k in ("dense", "ideal", "predicted") if k in curves]
    order += sorted(k for k in curves if k not in ("dense", "ideal", "predicted", "best"))
    for name in order:
        pts = curves[name]
        if not pts:
            continue
        style = _STYLE.get(name) or dict(color=colors[name], lw=1.5, marker="o", ms=3)
        ax.plot(list(pts), [t * 1e3 for t in pts.values()], label=name, **style)
    ax.set_ylim(bottom=0)
    ax.set_xlim(0, 1.02)
    ax.grid(True, alpha=0.3)


def figure_class() -> type[Figure]:
    """matplotlib's Figure class (imported here: every other command, and ``plot
    --help``, runs without matplotlib).

    Raises:
        ValueError: if matplotlib cannot be imported.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ValueError(f"plotting needs matplotlib, which cannot be imported here ({e}); "
                         "pip install matplotlib") from None
    return Figure


def _new_figure(**kwargs) -> Figure:
    """A matplotlib Figure (``figure_class``)."""
    return figure_class()(**kwargs)


def _legend(fig: Figure, axes) -> int:
    """One legend below the axes, of every line label once; returns its rows (columns
    as the figure's width holds them: six labels in one row ran past a 6.4-inch
    figure's edges)."""
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if not labels:  # no line drawn (matplotlib refuses a legend of 0 columns)
        return 0
    ncol = min(len(labels), max(3, int(fig.get_figwidth() / 1.5)))
    fig.legend([handles[lab] for lab in labels], labels, loc="lower center",
               ncol=ncol, frameon=False, fontsize=9)
    return math.ceil(len(labels) / ncol)


def plot_latency_vs_rate(csv_or_rows: str | Path | Rows, out_dir: str | Path,
                         predicted: Predicted | None = None) -> list[Path]:
    """Write latency-vs-rate PNGs; returns their paths.

    csv_or_rows: a sweep CSV path or rows (dicts with model, block, spec, rate, variant,
    seconds; spec_key and flops_ratio for the ideal line). predicted: {spec short or
    spec_key: {rate: seconds}}. Per model and group (``group_rows``: mode, or the modes stage
    by stage of a model swept with a mode per stage, batch and dtype, the input size
    where not 224, then the device where the rows hold several, then "clustered" masks):
    ``<model>_<mode>_b<batch>_<dtype>[_i<size>][_<device>][_clustered]_blocks.png`` (one panel per
    distinct block spec) and the same name ending ``_model.png`` (sum over all blocks:
    dense, each variant where it covers every block, best per block, ideal, predicted;
    "dense" is the dense block, the fastest timing at rate 1, and the ``dense``
    variant's masked timings are "masked dense": ``plot_rows.spec_curves``);
    characters other than letters, digits and ``._-`` become ``_``, and a name longer
    than ``MAX_STEM`` or shared by two groups ends in a hash of its group (``_file_stems``).
    A model whose every timing is inf or nan (every config failed) is skipped with a
    warning; so is the whole-model
    figure of a model whose blocks have timings for several specs (sweeps at several
    granularities, e.g. from the cache: which spec belongs to which sweep is not
    recorded, and the sum would mix them), and of the cache's unnamed entries (model
    ``UNNAMED``: shapes no sweep named, of no one network). Figures are split by
    device and by mask kind (``group_rows``). A LAUD-ResNet whose rows lack some of its
    blocks (a sweep with ``--blocks``) gets its whole-model figure titled "partial
    sweep, sum over k of the model's N blocks", with a warning naming what is missing.

    Raises:
        ValueError: if there is nothing to plot: no rows, none the cache keeps (all
            ``dispatched`` 0), or no finite timing among those; naming the row and
            the column, if a row given lacks a column the figures need or holds a cell
            they would misread (a rate outside [0, 1], seconds <= 0, a ``dispatched`` or
            ``clustered`` not 0 or 1, a ``spec_key`` that is no block spec's JSON, or one
            of map sides past a sweep's:
            ``plot_rows.check_measured``); or matplotlib
            cannot be imported.
    """
    figure_class()  # no matplotlib: say so before reading anything
    rows = read_csv(csv_or_rows) if isinstance(csv_or_rows, (str, Path)) else list(csv_or_rows)
    src = str(csv_or_rows) if isinstance(csv_or_rows, (str, Path)) else "the rows given"
    if not rows:
        raise ValueError(f"no timings to plot in {src}")
    check_measured(rows, src)
    out_dir = Path(out_dir).expanduser()  # as check_dir read it ('--out=~/x': no shell)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    groups = group_rows(rows)
    stems = _file_stems(list(groups))
    for key, g in groups.items():
        if not g["t"]:  # only failed configs: no line to draw
            log.warning("plot: %s: nothing finite was measured (every config failed); "
                        "skipping it", key)
            continue
        g["blocks"] = dict(sorted(g["blocks"].items(), key=lambda kv: _natural(kv[0])))
        sids = list(dict.fromkeys(s for ss in g["blocks"].values() for s in ss))
        curves = {sid: spec_curves(g, sid, predicted) for sid in sids}
        variants = sorted({v for c in curves.values() for v in c
                           if v not in ("dense", "ideal", "predicted", "best")})
        colors = {v: _COLORS[i % len(_COLORS)] for i, v in enumerate(variants)}
        paths.append(_blocks_figure(key, g, sids, curves, colors, out_dir / stems[key]))
        if g["model"] == UNNAMED:  # block shapes of no one network: no sum over them
            log.warning("plot: %s: cache entries no sweep named (e.g. compile's timings); "
                        "per-spec panels only, no whole-model figure", key)
            continue
        mixed = [b for b, ss in g["blocks"].items() if len(ss) > 1]
        if mixed:  # which spec of each block belongs to which sweep is not recorded
            log.warning("plot: %s: block(s) %s have timings for several specs (sweeps at "
                        "several granularities); no whole-model figure, which would mix "
                        "them: plot each sweep's CSV instead", key, ", ".join(mixed))
            continue
        missing = missing_blocks(g["model"], g["blocks"])
        if missing:
            log.warning("plot: %s: the rows hold %d of the model's %d blocks (not %s); its "
                        "whole-model figure sums those only, and says so", key,
                        len(g["blocks"]), len(g["blocks"]) + len(missing), _few(missing))
        path = _model_figure(key, g, curves, colors, out_dir / stems[key], len(missing))
        if path is None:  # no rate every block was timed at: the figure would be empty
            failed = [b for b, ss in g["blocks"].items() if not any(s in g["t"] for s in ss)]
            why = (f"block(s) {_few(failed)} have no finite timing (every config failed)"
                   if failed else "the rates the masks realise differ between blocks"
                   + ("" if g["asked"] else ", and the rows do not say which rate the sweep "
                      "asked for: column asked_rate"))
            log.warning("plot: %s: no rate at which every block has a timing (%s); no "
                        "whole-model figure", key, why)
            continue
        paths.append(path)
    return paths


def _few(names: Sequence[str], shown: int = 4) -> str:
    """Up to ``shown`` names joined, '... (n in all)' after them when there are more."""
    head = ", ".join(names[:shown])
    return head if len(names) <= shown else f"{head}, ... ({len(names)} in all)"


def _natural(name: str) -> list:
    """Sort key that puts layer2.10 after layer2.9."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


MAX_STEM = 120  # characters of a figure's file name before its _blocks.png / _model.png


def _file_stems(keys: list[str]) -> dict[str, str]:
    """Each group key's file name stem: its slug, unless the slug is longer than
    MAX_STEM (a model name from a CSV cell; the file system refused the name) or shared
    with another key ('a/b' and 'a_b': the second figure overwrote the first, silently);
    then the slug cut short with the key's own hash, which no order of the rows moves."""
    slugs = {k: _slug(k) for k in keys}
    uses = Counter(slugs.values())
    return {k: s if len(s) <= MAX_STEM and uses[s] == 1
            else f"{s[:MAX_STEM - 9]}_{hashlib.sha1(k.encode()).hexdigest()[:8]}"
            for k, s in slugs.items()}


def _blocks_figure(key, g, sids, curves, colors, stem: Path) -> Path:
    n = len(sids)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    # wide enough for the title (it names the model) however few the panels
    fig = _new_figure(figsize=(max(3.6 * ncol, 6.4), 2.9 * nrow + 0.9), dpi=110)
    axes = [fig.add_subplot(nrow, ncol, i + 1) for i in range(n)]
    for ax, sid in zip(axes, sids):
        _draw(ax, {k: v for k, v in curves[sid].items() if k != "best"}, colors)
        names = [b for b, ss in g["blocks"].items() if sid in ss]
        label = g["specs"][sid][0]
        title = f"{names[0]}" + (f" (+{len(names) - 1})" if len(names) > 1 else "")
        if names[0] != label:  # cache entries without block names are named by their spec
            title += f"\n{label}"
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=8)
    for i, ax in enumerate(axes):
        if i % ncol == 0:
            ax.set_ylabel("latency (ms)", fontsize=9)
        if i >= n - ncol:
            ax.set_xlabel("activation rate", fontsize=9)
    fig.suptitle(f"{key}: block latency vs activation rate", fontsize=11)
    rows = _legend(fig, axes)
    fig.tight_layout(rect=(0, 0.45 * (1 + rows) / (2.9 * nrow + 0.9) + 0.02, 1, 0.97))
    path = stem.with_name(f"{stem.name}_blocks.png")
    save_figure(fig, path)  # (plot_command names the path of one it cannot write)
    return path


def _model_figure(key, g, curves, colors, stem: Path, missing: int = 0) -> Path | None:
    """Whole model: per line, the sum over every block at rates where all blocks have it,
    each block's timing counted at the rate the sweep asked for when it is known (the
    rates the masks realise differ between blocks: 0.5 is 0.5 of a 14x14 grid, 0.49 of
    a 7x7 one). missing: the model's blocks the rows lack (``missing_blocks``), which
    the title then counts. None, and no file, where no line has such a rate."""
    blocks = [(b, next(iter(ss))) for b, ss in g["blocks"].items()]  # one spec each
    names = {k for sid in curves for k in curves[sid]}

    def asked(sid: str, pts: dict[float, float]) -> dict[float, float]:
        m = g["asked"].get(sid, {})
        return {a: t for r, t in pts.items() for a in m.get(r, (r,))}

    by_asked = {sid: {n: asked(sid, pts) for n, pts in curves[sid].items()}
                for _, sid in blocks}
    totals: dict[str, dict[float, float]] = {}
    for name in names:
        rates = set.intersection(*(set(by_asked[sid].get(name, {})) for _, sid in blocks))
        totals[name] = {r: sum(by_asked[sid][name][r] for _, sid in blocks)
                        for r in sorted(rates)}
    if not any(totals.values()):
        return None
    fig = _new_figure(figsize=(6.4, 4.8), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    _draw(ax, {k: v for k, v in totals.items() if k != "best"}, colors)
    if totals.get("best"):
        ax.plot(list(totals["best"]), [t * 1e3 for t in totals["best"].values()],
                label="best per block", **_STYLE["best"])
    ax.set_xlabel("activation rate")
    ax.set_ylabel("latency (ms), sum over blocks")
    part = (f"partial sweep, sum over {len(blocks)} of the model's {len(blocks) + missing} "
            "blocks" if missing else f"sum over {len(blocks)} dynamic blocks")
    ax.set_title(f"{key}: {part}\n(a variant's line only where it runs every block; best = "
                 "fastest variant per block)", fontsize=9)
    rows = _legend(fig, [ax])
    fig.tight_layout(rect=(0, 0.05 + 0.05 * rows, 1, 1))
    path = stem.with_name(f"{stem.name}_model.png")
    save_figure(fig, path)  # (plot_command names the path of one it cannot write)
    return path

