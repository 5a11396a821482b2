"""Per-variant latency model (DESIGN.md section 6).

For a variant with ``Cost(flops, bytes, launches)`` at (spec, rate) on hardware ``hw``:

    t = launches · overhead + max(flops · q / (peak · eff_c), bytes / (bw · eff_m))

peak: ``hw.peak_macs(spec.dtype)`` multiply-adds/s; bw: ``hw.bandwidth`` B/s. q >= 1 is the
GPU tile-and-wave quantisation of the block's GEMMs (conv1, conv2 as im2col, conv3, the
downsample; expected rows at the rate): a GEMM [M, N, K] runs as ⌈M/BM⌉·⌈N/BN⌉ tiles
(BM, BN: the power of two >= the dimension, clamped to [16, 128], as an autotuned kernel
would pick) in W = ⌈tiles/units⌉ waves over ``hw.compute_units`` SMs, and takes the time of
W·units tiles of BM·BN·K; q = Σ W·units·BM·BN·K / Σ M·N·K; q = 1 on CPUs. eff_c, eff_m
(fractions of peak) and overhead (s per launch) are the variant's ``Factors``: fitted on
cached timings by the least mean absolute log error (:func:`fit`), else defaults per hardware
kind.

Predictions are made monotone in rate: the time at r is the largest raw prediction over
the grid r' = i/100 with r' <= ⌈100·r⌉/100 (a rate on the grid is not rounded up; a
rate the masks realise between grid points, such as 0.102 = 20/196 for an asked 0.1, is
predicted at the grid point above it, at most 0.01 more), because a variant's Cost may
drop where its code takes a shortcut (``ops/layer.py: compact_cost`` at rate 1), the tile
quantisation may fall as rows fill a tile, and a scheduler must never believe that more
active cells cost less.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..ops.registry import Cost, Variant, all_variants, get_variant
from ..ops.spec import BlockSpec
from .hardware import DTYPES, HardwareSpec
from .network import mask1_fraction, stem_head_cost

log = logging.getLogger("laudtriton")

MONOTONE_STEPS = 100


@dataclass(frozen=True)
class Factors:
    """eff_c, eff_m: fractions of peak compute / bandwidth reached; overhead: s per launch
    (None: the hardware's). n: timings fitted on (0: a default)."""

    eff_c: float = 0.5
    eff_m: float = 0.7
    overhead: float | None = None
    n: int = 0


DEFAULT_FACTORS = {"gpu": Factors(0.5, 0.7), "edge": Factors(0.4, 0.6),
                   "cpu": Factors(0.5, 0.5)}


def resolve_variant(variant: str | Variant) -> Variant:
    """The registered Variant; ValueError naming the known ones when it has no model."""
    if isinstance(variant, Variant):
        return variant
    try:
        return get_variant(variant)
    except ValueError:
        known = ", ".join(sorted(v.name for v in all_variants()))
        raise ValueError(f"variant {variant!r} has no latency model (it is not registered); "
                         f"known: {known}") from None


def gemm_dims(spec: BlockSpec, rate: float, variant: str) -> list[tuple[float, float, float]]:
    """[M, N, K] of the block's GEMMs (conv1, conv2 as im2col, conv3, downsample) when
    ``variant`` runs at ``rate``; per sample for channel modes (each sample its own lists)."""
    b = spec.batch
    h, w = spec.in_hw
    ho, wo = spec.out_hw
    r1 = r3 = rc = rows = 1.0
    if variant != "dense":
        if spec.mode == "layer":
            rows = rate
        elif spec.mode == "channel":
            rc = rate
        else:
            r3 = rate
            r1 = mask1_fraction(spec, rate)
            rc = rate if spec.mode == "both" else 1.0
    m = spec.width * rc
    per = 1 if spec.mode in ("channel", "both") and variant != "dense" else b
    reps = b // per
    dims = [(per * h * w * r1 * rows, m, spec.in_channels),
            (per * ho * wo * r3 * rows, m, 9 * m),
            (per * ho * wo * r3 * rows, spec.out_channels, m)] * reps
    if spec.downsample:
        dims.append((b * ho * wo, spec.out_channels, spec.in_channels))
    return dims


def quantisation(spec: BlockSpec, rate: float, variant: str, hw: HardwareSpec,
                 tiles: tuple[int, int] | None = None) -> float:
    """Padded/useful multiply-adds of the GEMM tiles and waves on a GPU (>= 1); 1 on CPU.
    tiles: (BM, BN) of a kernel config; None: what an autotuner would pick per GEMM."""
    if hw.kind == "cpu":
        return 1.0
    useful = padded = 0.0
    # channel modes list each sample's GEMMs: equal ones are counted once, times their
    # number (a batch of 1000 listed 3000; tiling each took 15 s in ``design``)
    for (m, n, k), times in Counter(gemm_dims(spec, rate, variant)).items():
        if m <= 0 or n <= 0 or k <= 0:
            continue
        bm, bn = tiles if tiles else (_tile(m), _tile(n))
        count = math.ceil(m / bm) * math.ceil(n / bn)
        waves = math.ceil(count / hw.compute_units)
        useful += times * m * n * k
        padded += times * bm * bn * k * waves * hw.compute_units
    return max(1.0, padded / useful) if useful > 0 else 1.0


def _tile(size: float) -> int:
    """Tile edge an autotuned kernel would pick: the power of two >= size in [16, 128]."""
    return int(min(128, max(16, 1 << max(0, math.ceil(math.log2(max(size, 1.0)))))))


@dataclass(frozen=True)
class Terms:
    """The model's inputs for one (spec, rate, variant): launches, compute seconds at full
    peak (with q), memory seconds at full bandwidth."""

    launches: float
    compute_s: float
    memory_s: float


def terms(spec: BlockSpec, rate: float, variant: str | Variant, hw: HardwareSpec,
          tiles: tuple[int, int] | None = None) -> Terms:
    """Terms of ``variant`` at (spec, rate) on ``hw`` from its Cost (tiles: see
    :func:`quantisation`).

    Raises:
        ValueError: if the variant is not registered or its cost fails.
    """
    v = resolve_variant(variant)
    try:
        c: Cost = v.cost(spec, float(rate))
    except MemoryError:
        raise
    except Exception as e:  # a cost that cannot handle this spec is a missing model
        raise ValueError(f"variant {v.name!r} has no latency model for {spec.short()} at "
                         f"rate {rate:g}: {e}") from None
    q = quantisation(spec, rate, v.name, hw, tiles)
    return Terms(float(c.launches), c.flops * q / hw.peak_macs(spec.dtype),
                 c.bytes / hw.bandwidth)


def _latency(t: Terms, f: Factors, hw: HardwareSpec) -> float:
    ov = hw.launch_overhead if f.overhead is None else f.overhead
    return t.launches * ov + max(t.compute_s / f.eff_c, t.memory_s / f.eff_m)


def factor_key(variant: str, spec: BlockSpec | None = None) -> str:
    """The name a variant's factors are fitted and looked up under: the variant's, except
    ``dense`` on blocks with channel masks, "dense/channel": there it runs another code
    path (``ops.dense``: unpacked convolutions with the mask applied before each bias, not
    the packed fused block), under the same Cost, so one set of factors fitted both badly
    (held-out median predicted/measured 0.85 in channel mode, session 29)."""
    if variant == "dense" and spec is not None and spec.mode in ("channel", "both"):
        return "dense/channel"
    return variant


def factors_for(variant: str, hw: HardwareSpec, factors: dict[str, Factors] | None) -> Factors:
    """The fitted factors under ``variant`` (a :func:`factor_key`), else the variant's own
    ("dense" for "dense/channel"), else the pooled fit ("*"), else the kind default."""
    factors = factors or {}
    return (factors.get(variant) or factors.get(variant.split("/")[0]) or factors.get("*")
            or DEFAULT_FACTORS[hw.kind])


def predict_block(spec: BlockSpec, rate: float, variant: str | Variant, hw: HardwareSpec,
                  factors: dict[str, Factors] | None = None) -> float:
    """Predicted seconds of one call of ``variant`` on ``spec`` at activation ``rate``,
    non-decreasing in ``rate`` (see the module docstring).

    Raises:
        ValueError: rate outside [0, 1], or a variant with no model.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate {rate!r} must be in [0, 1]")
    v = resolve_variant(variant)
    curve = _curve(spec, v.name, hw, factors_for(factor_key(v.name, spec), hw, factors))
    return curve[min(MONOTONE_STEPS, math.ceil(rate * MONOTONE_STEPS - 1e-6))]


@lru_cache(maxsize=65536)
def _grid_terms(spec: BlockSpec, i: int, variant: str, hw: HardwareSpec) -> Terms:
    return terms(spec, i / MONOTONE_STEPS, variant, hw)


@lru_cache(maxsize=8192)
def _curve(spec: BlockSpec, variant: str, hw: HardwareSpec, f: Factors) -> tuple[float, ...]:
    """Running maximum of the raw prediction over the rate grid."""
    out, top = [], 0.0
    for i in range(MONOTONE_STEPS + 1):
        top = max(top, _latency(_grid_terms(spec, i, variant, hw), f, hw))
        out.append(top)
    return tuple(out)


def predict_timings(spec: BlockSpec, bucket: float, variants: Iterable[str | Variant],
                    hw: HardwareSpec, factors: dict[str, Factors] | None = None
                    ) -> dict[str, dict[str, float]]:
    """{variant: {"{}": predicted seconds}}: the shape of measured timings, so that
    ``DispatchTable.add(bucket, ..., "predicted")`` takes it. The bucket is a mean rate
    over the batch (what a compiled block dispatches on), so the expected time
    (:func:`predict_expected`): at batch 8 with one cell per sample, bucket 0.5 is four
    samples on, not every sample's cell rounded off."""
    out = {}
    for v in variants:
        v = resolve_variant(v)
        out[v.name] = {"{}": predict_expected(spec, bucket, v, hw, factors)}
    return out


# -- fitting --------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One measured point: spec, rate bucket, variant, best seconds over its configs."""

    spec: BlockSpec
    rate: float
    variant: str
    seconds: float


def samples(entries: Iterable) -> list[Sample]:
    """Cache entries (``TuneCache.entries()``) -> the fastest finite, positive time per
    (spec, rate bucket, variant) and version: the entries of other versions
    (``entries(include_stale=True)``, marked ``meta["stale"]``) are samples of their own,
    added to the current ones rather than folded into them. Variants not registered here
    and dtypes outside ``hardware.DTYPES`` (a float64 compile's timings) are skipped
    (logged), as are timings of a variant on a block it does not run (a mode it does
    not handle, or ``supports`` False: a hand-edited cache file)."""
    best: dict[tuple, float] = {}
    skipped, dtypes, foreign = set(), set(), set()
    for e in entries:
        if not (math.isfinite(e.seconds) and e.seconds > 0):
            continue
        if e.spec.dtype not in DTYPES:  # e.g. float64 (compile(dtype=...)): no peak rate
            dtypes.add(e.spec.dtype)
            continue
        try:
            v = resolve_variant(e.variant)
        except ValueError:
            skipped.add(e.variant)
            continue
        if not (e.spec.mode in v.modes and v.supports(e.spec)):  # a hand-edited file:
            foreign.add(f"{e.variant} on {e.spec.short()}")  # no model of that run
            continue
        meta = getattr(e, "meta", None) or {}
        version = (json.dumps([meta.get("versions"), meta.get("source_hash")], sort_keys=True)
                   if meta.get("stale") else "")
        k = (e.spec, round(float(e.rate_bucket), 6), e.variant, version)
        best[k] = min(e.seconds, best.get(k, math.inf))
    if skipped:
        log.warning("cached timings of unregistered variants ignored: %s", sorted(skipped))
    if dtypes:
        log.warning("cached timings in dtypes the latency model has no peak for ignored: %s",
                    sorted(dtypes))
    if foreign:
        log.warning("cached timings of variants on blocks they do not run ignored: %s",
                    sorted(foreign)[:4] + (["..."] if len(foreign) > 4 else []))
    return [Sample(s, r, v, t) for (s, r, v, _), t in sorted(
        best.items(), key=lambda kv: (kv[0][0].key(), kv[0][1], kv[0][2], kv[0][3]))]


def _arrays(data: Sequence[Sample], hw: HardwareSpec):
    ts = [terms(s.spec, s.rate, s.variant, hw) for s in data]
    return (np.array([t.launches for t in ts]), np.array([t.compute_s for t in ts]),
            np.array([t.memory_s for t in ts]), np.array([s.seconds for s in data]))


_LO = np.log([1e-3, 1e-3, 1e-9])  # bounds of (1/eff_c, 1/eff_m, overhead s)
_HI = np.log([1e4, 1e4, 1e-1])


def _fit_one(arrays, hw: HardwareSpec, prior: Factors,
             free: tuple[bool, bool, bool] = (True, True, True)) -> tuple[Factors, float]:
    """(Factors, mean loss) minimising the mean |log(pred) - log(measured)| over (1/eff_c,
    1/eff_m, overhead), by a refined log grid (no SciPy). Absolute, not squared: on a
    loaded machine a few timings are 10-300x too slow (seen on the shared 2-core box), and
    squares let them drag every factor. A weak pull towards ``prior`` keeps unidentified
    parameters (e.g. eff_m when compute always dominates) at their default. ``free``:
    which of (eff_c, eff_m, overhead) are fitted; the others keep the prior's value."""
    lau, xc, xm, t = arrays
    lt = np.log(t)
    raw = np.array([1 / prior.eff_c, 1 / prior.eff_m,
                    prior.overhead if prior.overhead is not None else hw.launch_overhead])
    # into the searched box: an overhead of 0 (a calibration may say so) has no log
    p0 = np.clip(np.log(np.maximum(raw, np.exp(_LO))), _LO, _HI)
    best, width, loss = p0.copy(), (_HI - _LO) * np.array(free, dtype=float), math.inf
    for _ in range(6):
        axes = [np.clip(np.linspace(best[i] - width[i] / 2, best[i] + width[i] / 2,
                                    17 if free[i] else 1), _LO[i], _HI[i]) for i in range(3)]
        grid = np.stack([g.reshape(-1) for g in np.meshgrid(*axes, indexing="ij")], axis=1)
        a, b, c = (np.exp(grid[:, i:i + 1]) for i in range(3))
        pred = c * lau + np.maximum(a * xc, b * xm)
        err = np.abs(np.log(pred) - lt).mean(axis=1)
        err = err + 1e-4 * ((grid - p0) ** 2).sum(axis=1)
        k = int(np.argmin(err))
        best, loss = grid[k], float(err[k])
        width = width / 3
    a, b, c = np.exp(best)
    return Factors(eff_c=float(1 / a), eff_m=float(1 / b), overhead=float(c), n=len(t)), loss


def fit(data: Iterable, hw: HardwareSpec, min_samples: int = 4) -> dict[str, Factors]:
    """Per-variant Factors fitted on ``data`` (Samples or cache entries), plus "*" fitted on
    all of them (the fallback for variants with fewer than ``min_samples`` points).

    eff_m is shared by every variant (memory efficiency is the machine's, and one variant's
    few memory-bound points cannot pin it); eff_c and overhead are per variant. The shared
    eff_m is searched on a refined log grid, each candidate scored by the summed loss of the
    per-variant fits (on synthetic timings this recovers the true factors; a pooled eff_m
    fitted with shared eff_c/overhead did not)."""
    data = list(data)
    if data and not isinstance(data[0], Sample):
        data = samples(data)
    if len(data) < min_samples:
        return {}
    prior = DEFAULT_FACTORS[hw.kind]
    pooled, _ = _fit_one(_arrays(data, hw), hw, prior)
    keys = [factor_key(s.variant, s.spec) for s in data]
    groups = {k: [s for s, ks in zip(data, keys) if ks == k] for k in sorted(set(keys))}
    groups = {v: _arrays(p, hw) for v, p in groups.items() if len(p) >= min_samples}
    if not groups:
        return {"*": pooled}
    center, width, best = math.log(1 / pooled.eff_m), 4.0, (math.inf, {})
    for _ in range(4):
        for lb in np.linspace(center - width / 2, center + width / 2, 9):
            lb = float(np.clip(lb, _LO[1], _HI[1]))
            start = Factors(pooled.eff_c, math.exp(-lb), pooled.overhead)
            fits = {v: _fit_one(arr, hw, start, free=(True, False, True))
                    for v, arr in groups.items()}
            total = sum(loss * len(groups[v][3]) for v, (_, loss) in fits.items())
            if total < best[0]:
                best = (total, {v: f for v, (f, _) in fits.items()}, lb)
        center, width = best[2], width / 4
    return {"*": pooled, **best[1]}


# -- validation -----------------------------------------------------------------------

def shape_key(spec: BlockSpec) -> tuple:
    """The block shape entries are held out by: channels, stride, downsample, input size
    (mode, S, batch and dtype left out, so one shape never sits on both sides)."""
    return (spec.in_channels, spec.width, spec.out_channels, spec.stride, spec.downsample,
            tuple(spec.in_hw))


@dataclass
class ValidationReport:
    """rows: (spec, rate, variant, measured s, predicted s) of every held-out sample;
    per_variant: {variant: (MAPE %, n)}; mape: over every row; folds: shapes held out."""

    rows: list[tuple[BlockSpec, float, str, float, float]] = field(default_factory=list)
    per_variant: dict[str, tuple[float, int]] = field(default_factory=dict)
    mape: float = math.nan
    folds: int = 0

    def format(self) -> str:
        """Per-variant table, then the last line exactly ``MAPE <number>%``."""
        lines = [f"held out by block shape: {self.folds} folds, {len(self.rows)} timings",
                 f"{'variant':<14} {'n':>5} {'MAPE %':>8}"]
        for v, (m, n) in sorted(self.per_variant.items()):
            lines.append(f"{v:<14} {n:>5} {m:>8.2f}")
        if self.rows:
            med = float(np.median([abs(p - t) / t * 100 for *_, t, p in self.rows]))
            lines.append(f"median APE {med:.2f}% (robust to timings hit by machine load)")
        lines.append(f"MAPE {self.mape:.2f}%")
        return "\n".join(lines)


def validate(entries: Iterable, hw: HardwareSpec) -> ValidationReport:
    """Leave-one-block-shape-out validation: for each shape, fit on the others' timings and
    predict its own; MAPE = mean |pred - measured| / measured x 100.

    Raises:
        ValueError: if there are no usable timings, or fewer than 2 block shapes.
    """
    data = samples(entries)
    if not data:
        raise ValueError("no cached timings to validate on; run `laudtriton sweep` first "
                         "(and `laudtriton calibrate`)")
    shapes = sorted({shape_key(s.spec) for s in data})
    if len(shapes) < 2:
        raise ValueError(f"cached timings cover {len(shapes)} block shape; holding out by "
                         "shape needs at least 2 (sweep more blocks)")
    rep = ValidationReport(folds=len(shapes))
    for shape in shapes:
        train = [s for s in data if shape_key(s.spec) != shape]
        fac = fit(train, hw)
        for s in data:
            if shape_key(s.spec) == shape:
                p = predict_block(s.spec, s.rate, s.variant, hw, fac)
                rep.rows.append((s.spec, s.rate, s.variant, s.seconds, p))
    errs: dict[str, list[float]] = {}
    for _, _, v, t, p in rep.rows:
        errs.setdefault(v, []).append(abs(p - t) / t * 100)
    rep.per_variant = {v: (float(np.mean(e)), len(e)) for v, e in errs.items()}
    rep.mape = float(np.mean([e for es in errs.values() for e in es]))
    return rep


def predict_stem_head(input_size: int, batch: int, dtype: str, hw: HardwareSpec,
                      factors: dict[str, Factors] | None = None) -> float:
    """Predicted seconds of the dense stem and head (``network.stem_head_cost``), with the
    ``dense`` variant's factors."""
    flops, byts, launches = stem_head_cost(input_size, batch, dtype=dtype)
    t = Terms(float(launches), flops / hw.peak_macs(dtype), byts / hw.bandwidth)
    return _latency(t, factors_for("dense", hw, factors), hw)


def mask_units(spec: BlockSpec) -> int | None:
    """How many whole units a mean rate is made of, each on or off: the grid cells of a
    sample (spatial, and ``both``, whose channel groups are not counted), the channel
    groups of a sample (channel), the samples of the batch (layer); None when the spec has
    none (a channel mode with no groups)."""
    if spec.spatial:
        gh, gw = spec.grid
        return gh * gw
    if spec.mode == "channel":
        return spec.channel_groups or None
    if spec.mode == "layer":
        return spec.batch
    return None


def predict_expected(spec: BlockSpec, rate: float, variant: str | Variant, hw: HardwareSpec,
                     factors: dict[str, Factors] | None = None) -> float:
    """Expected seconds at a mean activation ``rate`` that need not be a whole number k/N of
    the N units the masks switch (:func:`mask_units`): linear between k/N and (k+1)/N,
    since masks realise whole units only. A Cost takes a rate as it comes: the spatial ones
    round it to whole cells, so a coarse grid (one 7x7 cell on a 7x7 map) would look free
    below rate 0.5; the channel one slices rate·width channels, so one group of 64
    channels would look half on at 0.5; the layer one counts rate·B samples with the
    gather of a partial batch, which a batch of 1 never pays. Equal to
    :func:`predict_block` at whole units and where there are none."""
    n = mask_units(spec)
    if n is None:
        return predict_block(spec, rate, variant, hw, factors)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate {rate!r} must be in [0, 1]")
    k = min(int(math.floor(rate * n + 1e-9)), n)
    lo = predict_block(spec, k / n, variant, hw, factors)
    if k >= n or rate * n - k <= 1e-9:
        return lo
    hi = predict_block(spec, (k + 1) / n, variant, hw, factors)
    return lo + (rate * n - k) * (hi - lo)
