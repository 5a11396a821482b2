"""Latency-vs-rate figures from sweep results (a sweep CSV or the autotune cache).

Per model: one panel per distinct block spec (small multiples) with one line per variant
(fastest config), the dense line, the ideal line (dense x FLOPs ratio) and, when given, the
predicted line; and the whole-model curve (sum over every block). matplotlib (Agg, no
pyplot state). The command, ``laudtriton plot --from CSV|cache --out DIR``, is
:mod:`laudtriton.plot_command`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .nn.resnet import DEPTHS
from .ops.spec import BlockSpec
from .ops.synthetic import synthetic_masks
from .tune.sweep_blocks import ideal_flops_ratio
from .tune.sweep_csv import read_csv

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .tune.cache import TuneCache

log = logging.getLogger("laudtriton")

Rows = Sequence[Mapping]
Predicted = Mapping[str, Mapping[float, float]]  # spec (short or key) -> {rate: seconds}
_STYLE = {"dense": dict(color="black", lw=2.0, marker="s", ms=3),
          "ideal": dict(color="0.45", lw=1.5, ls="--", marker="+", ms=5),
          "predicted": dict(color="tab:purple", lw=1.5, ls=":", marker="x", ms=4),
          "best": dict(color="tab:red", lw=2.0, marker="*", ms=5)}
_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:cyan", "tab:olive", "tab:brown",
           "tab:pink", "tab:gray"]


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


def _clustered(row: Mapping) -> bool:
    return str(row.get("clustered") or "").strip().lower() in ("1", "true")


def _dispatched(row: Mapping) -> bool:
    """Whether the cache keeps the row: column ``dispatched`` absent or empty, or not 0
    or false (a bool, a number, or text as a CSV holds it: "0", "false")."""
    v = row.get("dispatched")
    if isinstance(v, str):
        return v.strip().lower() not in ("0", "false")
    return v is None or bool(v)


def _context(r: Mapping, spec: BlockSpec) -> tuple:
    """What keeps one sweep's rows apart from another's, but the mode: model, batch,
    dtype, input size, device, mask kind."""
    return (str(r["model"]), spec.batch, spec.dtype, str(r.get("input_size") or ""),
            str(r.get("device") or ""), _clustered(r))


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
            seen.setdefault(_context(r, spec), {}).setdefault(r["block"], set()).add(spec.mode)
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


def _group(rows: Rows):
    """{figure key: {"blocks": {block: {spec ids}}, "specs": {spec id: (label,
    spec|None)}, "t": {spec id: {variant: {rate: best seconds}}}, "fr": {spec id: {rate:
    ratio}}, "asked": {spec id: {rate: {the rates the sweeps asked for}}}} (rates are the
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
            mode = modes.get((_context(r, spec), r["block"]), spec.mode)
            key += f"_{mode}_b{spec.batch}_{spec.dtype}"
        if r.get("input_size") not in (None, "", 224):  # 224 (or not recorded): no suffix
            key += f"_i{int(r['input_size'])}"
        if len(devices) > 1:
            key += f"_{r.get('device') or 'unknown device'}"
        if _clustered(r):
            key += "_clustered"
        g = figs.setdefault(key, {"model": str(r["model"]), "blocks": {}, "specs": {},
                                  "t": {}, "fr": {}, "asked": {}})
        g["blocks"].setdefault(r["block"], {})[sid] = None  # an ordered set
        g["specs"].setdefault(sid, (str(r["spec"]), spec))
        rate = round(float(r["rate"]), 6)
        if math.isfinite(t):
            cur = g["t"].setdefault(sid, {}).setdefault(r["variant"], {})
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


def _curves(g: dict, sid: str, predicted: Predicted | None) -> dict[str, dict[float, float]]:
    """{line name: {rate: seconds}}: variants, "best", "ideal", "predicted"."""
    out = {v: dict(sorted(ts.items())) for v, ts in g["t"].get(sid, {}).items()}
    rates = sorted({r for ts in out.values() for r in ts})
    out["best"] = {r: min(ts[r] for ts in out.values() if r in ts) for r in rates}
    if "dense" in out:
        ideal = {}
        for r, t in out["dense"].items():
            fr = _flops_ratio(g, sid, r)
            if fr is not None:
                ideal[r] = t * fr
        out["ideal"] = ideal
    if predicted:
        label = g["specs"][sid][0]
        p = predicted.get(sid) or predicted.get(label)
        if p:
            out["predicted"] = {round(float(r), 6): float(t) for r, t in sorted(p.items())}
    return out


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


def _legend(fig: Figure, axes) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if not labels:  # no line drawn (matplotlib refuses a legend of 0 columns)
        return
    fig.legend([handles[lab] for lab in labels], labels, loc="lower center",
               ncol=min(len(labels), 6), frameon=False, fontsize=9)


def check_measured(rows: Rows, src: str) -> None:
    """A ValueError naming ``src`` (where the rows come from) when no row has a finite
    time: every config failed (sweep scores a failure inf seconds), nothing to plot."""
    if not any(math.isfinite(float(r["seconds"])) for r in rows):
        raise ValueError(f"{src}: nothing finite was measured: all {len(rows)} timings are "
                         "inf or nan (every config failed)")


def plot_latency_vs_rate(csv_or_rows: str | Path | Rows, out_dir: str | Path,
                         predicted: Predicted | None = None) -> list[Path]:
    """Write latency-vs-rate PNGs; returns their paths.

    csv_or_rows: a sweep CSV path or rows (dicts with model, block, spec, rate, variant,
    seconds; spec_key and flops_ratio for the ideal line). predicted: {spec short or
    spec_key: {rate: seconds}}. Per model and group (``_group``: mode, or the modes stage
    by stage of a model swept with a mode per stage, batch and dtype, the input size
    where not 224, then the device where the rows hold several, then "clustered" masks):
    ``<model>_<mode>_b<batch>_<dtype>[_i<size>][_<device>][_clustered]_blocks.png`` (one panel per
    distinct block spec) and the same name ending ``_model.png`` (sum over all blocks:
    dense, each variant where it covers every block, best per block, ideal, predicted);
    characters other than letters, digits and ``._-`` become ``_``, and a name longer
    than ``MAX_STEM`` or shared by two groups ends in a hash of its group (``_file_stems``).
    A model whose every timing is inf or nan (every config failed) is skipped with a
    warning; so is the whole-model
    figure of a model whose blocks have timings for several specs (sweeps at several
    granularities, e.g. from the cache: which spec belongs to which sweep is not
    recorded, and the sum would mix them), and of the cache's unnamed entries (model
    ``UNNAMED``: shapes no sweep named, of no one network). Figures are split by
    device and by mask kind (``_group``). A LAUD-ResNet whose rows lack some of its
    blocks (a sweep with ``--blocks``) gets its whole-model figure titled "partial
    sweep, sum over k of the model's N blocks", with a warning naming what is missing.

    Raises:
        ValueError: if there is nothing to plot: no rows, or no finite timing; or
            matplotlib cannot be imported.
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
    groups = _group(rows)
    stems = _file_stems(list(groups))
    for key, g in groups.items():
        if not g["t"]:  # only failed configs: no line to draw
            log.warning("plot: %s: nothing finite was measured (every config failed); "
                        "skipping it", key)
            continue
        g["blocks"] = dict(sorted(g["blocks"].items(), key=lambda kv: _natural(kv[0])))
        sids = list(dict.fromkeys(s for ss in g["blocks"].values() for s in ss))
        curves = {sid: _curves(g, sid, predicted) for sid in sids}
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


def model_depths(model: str) -> tuple[int, ...] | None:
    """The depths of the network a sweep named ``model`` (``tune.sweep_blocks.network_name``:
    a factory of ``nn.resnet.DEPTHS`` or "custom_d<depths>", with "_w<width>" for
    another width); None for another name."""
    hit = re.fullmatch(r"(.+?)(_w[0-9.e+-]+)?", model)
    base = hit.group(1) if hit else model
    custom = re.fullmatch(r"custom_d(\d+(?:-\d+)*)", base)
    if custom:
        return tuple(int(d) for d in custom.group(1).split("-"))
    return DEPTHS.get(base)


def missing_blocks(model: str, blocks: Mapping[str, object]) -> list[str]:
    """The blocks of ``model`` (a LAUD-ResNet of ``nn.resnet.DEPTHS``, any width) that
    ``blocks`` lacks, in order; [] for another model (its blocks are not known here)."""
    depths = model_depths(model)
    if depths is None:
        return []
    return [n for n in (f"layer{i + 1}.{j}" for i, d in enumerate(depths) for j in range(d))
            if n not in blocks]


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
    _legend(fig, axes)
    fig.tight_layout(rect=(0, 0.9 / (2.9 * nrow + 0.9) + 0.02, 1, 0.97))
    path = stem.with_name(f"{stem.name}_blocks.png")
    fig.savefig(path)
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
    _legend(fig, [ax])
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = stem.with_name(f"{stem.name}_model.png")
    fig.savefig(path)
    return path

