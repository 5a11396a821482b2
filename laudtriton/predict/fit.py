"""Fitting the latency model's ``Factors`` to cached timings (least mean absolute log
error per variant, :func:`fit`) and validating it on timings held out by block shape
(:func:`validate`); the model itself is ``predict.model``."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..nn.maskers import check_positive_ints, positive_real
from ..ops.spec import BlockSpec
from ..tune.cache import check_spec
from .hardware import DTYPES, HardwareSpec, check_hardware
from .model import DEFAULT_FACTORS, Factors, factor_key, predict_block, resolve_variant, terms
from .network import check_rate

log = logging.getLogger("laudtriton")


@dataclass(frozen=True)
class Sample:
    """One measured point: spec, rate bucket, variant, best seconds over its configs.

    Raises:
        ValueError: if seconds is not a finite number > 0 (a failed config's inf, a NaN,
            0: one such point among good ones put every fitted factor at the edge of the
            search box, eff_c 1000x the peak, and dropped the per-variant factors;
            :func:`samples` skips them in cache entries), rate is not a number in
            [0, 1] (a cache refuses to record one; 1.5 and NaN were fitted on), spec
            is not a BlockSpec, or variant is not the name (a str) of a registered
            variant that runs spec (its mode and ``supports``): an unknown name, None,
            a Variant object (fitted under itself as a key) or ``channel_gemm`` on a
            spatial block were fitted on until session 66 (:func:`samples` skips such
            cache entries, with a warning, before making a Sample).
    """

    spec: BlockSpec
    rate: float
    variant: str
    seconds: float

    def __post_init__(self) -> None:
        """Check spec, rate, variant and seconds (see the class docstring); rate and
        seconds kept as floats."""
        check_spec(self.spec, "Sample")
        _check_variant(self.variant, self.spec)
        object.__setattr__(self, "rate", check_rate(self.rate, "Sample.rate"))
        object.__setattr__(self, "seconds", positive_real("Sample.seconds", self.seconds))


def _check_variant(variant: object, spec: BlockSpec) -> None:
    """A ValueError naming ``Sample.variant`` unless ``variant`` is the name of a
    registered variant that runs ``spec`` (the checks :func:`samples` skips cache entries
    by)."""
    if not isinstance(variant, str):  # (a Variant's repr is a page long: its type only)
        raise ValueError(f"Sample.variant must be a variant's name (a str), got "
                         f"{type(variant).__name__}"
                         + (f" {variant!r}" if variant is None or
                            isinstance(variant, (int, float, bytes)) else ""))
    try:
        v = resolve_variant(variant)
    except ValueError as e:
        raise ValueError(f"Sample.variant {variant!r}: {e}") from None
    if spec.mode not in v.modes:
        raise ValueError(f"Sample.variant {variant!r} does not run {spec.short()}: it runs "
                         f"mode {', '.join(v.modes)}, not {spec.mode!r}")
    if not v.supports(spec):
        raise ValueError(f"Sample.variant {variant!r} does not run {spec.short()} (its "
                         "supports() refuses that block)")


_ENTRY_FIELDS = ("spec", "rate_bucket", "variant", "seconds")


def _is_entry(e: object) -> bool:
    """Whether ``e`` has a cache entry's fields (``_ENTRY_FIELDS``)."""
    return all(hasattr(e, a) for a in _ENTRY_FIELDS)


def samples(entries: Iterable) -> list[Sample]:
    """Cache entries (``TuneCache.entries()``) -> the fastest finite, positive time per
    (spec, rate bucket, variant) and version: the entries of other versions
    (``entries(include_stale=True)``, marked ``meta["stale"]``) are samples of their own,
    added to the current ones rather than folded into them. Variants not registered here
    and dtypes outside ``hardware.DTYPES`` (a float64 compile's timings) are skipped
    (logged), as are timings of a variant on a block it does not run (a mode it does
    not handle, or ``supports`` False: a hand-edited cache file).

    An entry is any object with ``spec``, ``rate_bucket``, ``variant`` and ``seconds``
    (a ``tune.cache.CacheEntry``).

    Raises:
        ValueError: naming the position and type of an element that is not an entry.
    """
    best: dict[tuple, float] = {}
    skipped, dtypes, foreign = set(), set(), set()
    for i, e in enumerate(entries):
        if not _is_entry(e):  # (None raised AttributeError)
            raise ValueError(f"entries[{i}] is a {type(e).__name__}, not a cache entry "
                             f"(an object with {', '.join(_ENTRY_FIELDS)})")
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


def _as_samples(data: Iterable, name: str) -> list[Sample]:
    """``data``'s Samples as they are, then :func:`samples` of its cache entries (a list
    mixing the two raised AttributeError, 'rate' or 'rate_bucket').

    Raises:
        ValueError: naming the argument (``name``), the position and the type of an
            element that is neither.
    """
    data = list(data)
    for i, e in enumerate(data):
        if not isinstance(e, Sample) and not _is_entry(e):
            raise ValueError(f"{name}[{i}] is a {type(e).__name__}, not a Sample or a cache "
                             f"entry (an object with {', '.join(_ENTRY_FIELDS)})")
    if all(isinstance(e, Sample) for e in data):
        return data
    return ([e for e in data if isinstance(e, Sample)]
            + samples(e for e in data if not isinstance(e, Sample)))


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
    fitted with shared eff_c/overhead did not). That search has no pull towards the prior
    (``_fit_one``'s): where the memory term never limits a timing, every eff_m past some
    bound explains the timings alike, and the one found (375 on the shipped AVX2 CPU
    cache, 453 on the Intel one, where the pooled fits give 30 and 32) says only "not
    memory-bound on these timings": a shape where memory would limit is then predicted
    without that limit.

    Cache entries are read through :func:`samples` (failed configs' inf and other times
    that are no duration skipped); a Sample holds a finite time > 0 by construction.
    ``data`` may mix the two: the Samples are fitted on as they are, beside the samples
    of the entries.

    A fitted eff_c above ``MAX_PLAUSIBLE_EFF_C`` is kept (it still explains the timings)
    and logged as a warning, on every call: the timings do not pin the compute term.

    The ``_FITTED_MAX`` results used last are remembered (``_FITTED``), by hw, the samples
    (equal ones, in the same order), min_samples and the kind's default factors the
    search starts from: the same call again returns equal factors in a new dict without
    searching. What else the search reads (a variant's Cost, found by its name in the
    registry; the search box ``_LO``/``_HI``) is taken as fixed for the process.

    Raises:
        ValueError: if min_samples is not a positive int (0 fitted factors on no timing),
            an element of ``data`` is neither a Sample nor a cache entry (naming it), or
            hw is not a HardwareSpec.
    """
    check_positive_ints(min_samples=min_samples)
    check_hardware(hw)
    data = _as_samples(data, "data")
    if len(data) < min_samples:
        return {}
    prior = DEFAULT_FACTORS[hw.kind]
    key = (hw, tuple(data), min_samples, prior)
    found = _FITTED.pop(key, None)  # (put back last: the most recently used)
    if found is None:
        found = _fit_all(data, hw, min_samples, prior)
    _FITTED[key] = found
    for old in list(_FITTED)[:-_FITTED_MAX]:
        _FITTED.pop(old, None)  # (another thread may have taken it)
    return _say_implausible(dict(found))


# fit's results by (hw, samples, min_samples, prior), least recently used first: a
# compile with tune="cached" fits the same cached timings each time (~1 s for the 540
# samples of a shipped CPU cache), and the tests and `laudtriton bench` compile many times
# in one process. Factors are frozen; each call gets its own dict.
_FITTED: dict[tuple, dict[str, Factors]] = {}
_FITTED_MAX = 8


def _fit_all(data: list[Sample], hw: HardwareSpec, min_samples: int,
             prior: Factors) -> dict[str, Factors]:
    """:func:`fit`'s search on checked ``data`` (at least ``min_samples`` long), from
    ``prior`` (the kind's default factors); the implausible-eff_c warning is left to the
    caller."""
    pooled, _ = _fit_one(_arrays(data, hw), hw, prior)
    keys = [factor_key(s.variant, s.spec) for s in data]
    groups = {k: [s for s, ks in zip(data, keys) if ks == k] for k in sorted(set(keys))}
    groups = {v: _arrays(p, hw) for v, p in groups.items() if len(p) >= min_samples}
    if not groups:
        return {"*": pooled}
    center = math.log(1 / pooled.eff_m)
    width, best = 4.0, (math.inf, {}, center)  # (kept if no loss is finite)
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


# The largest eff_c taken without a warning: fitted on the timings shipped in
# autotune_cache/ (three 2-core CPUs), eff_c is 0.46-0.89; on a GPU fp32 convolutions
# that cuDNN runs in TF32 may reach 8x the fp32 peak (A100: 156 vs 19.5 TFLOPS) a
# calibration measures. The search box reaches 1000 (``_LO``) so as never to clip a fit;
# equal timings on five block shapes fitted dense's eff_c at 124.
MAX_PLAUSIBLE_EFF_C = 10.0


def _say_implausible(factors: dict[str, Factors]) -> dict[str, Factors]:
    """``factors``, after one warning naming those whose eff_c is above
    ``MAX_PLAUSIBLE_EFF_C`` (the compute term then explains little of the timings: they
    are explained by the launch overhead, e.g. all equal, or the calibrated peak is far
    below what the machine reaches). eff_m is not checked: CPU timings fit it at 30-454
    (blocks whose data sits in caches faster than the DRAM copy the calibration times),
    where the memory term never binds."""
    odd = {k: f.eff_c for k, f in factors.items() if f.eff_c > MAX_PLAUSIBLE_EFF_C}
    if odd:
        log.warning("fitted eff_c above %gx the calibrated peak, kept but implausible: %s; "
                    "their timings do not pin the compute term (launch overhead explains "
                    "them, e.g. all equal) or the calibration's peak is too low: time more "
                    "block shapes, or run `laudtriton calibrate` again", MAX_PLAUSIBLE_EFF_C,
                    ", ".join(f"{k} {v:.3g}" for k, v in sorted(odd.items())))
    return factors


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
    predict its own; MAPE = mean |pred - measured| / measured x 100. ``entries``: cache
    entries, Samples or both, as :func:`fit` takes them.

    Raises:
        ValueError: if there are no usable timings, fewer than 2 block shapes, an element
            that is neither a Sample nor a cache entry, or hw not a HardwareSpec.
    """
    check_hardware(hw)
    data = _as_samples(entries, "entries")
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
