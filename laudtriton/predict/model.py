"""Per-variant latency model (DESIGN.md section 6).

For a variant with ``Cost(flops, bytes, launches)`` at (spec, rate) on hardware ``hw``:

    t = launches · overhead + max(flops · q / (peak · eff_c), bytes / (bw · eff_m))

peak: ``hw.peak_macs(spec.dtype)`` multiply-adds/s; bw: ``hw.bandwidth`` B/s. q >= 1 is the
GPU tile-and-wave quantisation of the block's GEMMs (conv1, conv2 as im2col, conv3, the
downsample; rows at the rate as the variant's Cost counts them: whole cells for ``gather``
and ``patch``, expected rows for the others): a GEMM [M, N, K] runs as ⌈M/BM⌉·⌈N/BN⌉ tiles
(BM, BN: the power of two >= the dimension, clamped to [16, 128], as an autotuned kernel
would pick) in W = ⌈tiles/units⌉ waves over ``hw.compute_units`` SMs, and takes the time of
W·units tiles of BM·BN·K; q = Σ W·units·BM·BN·K / Σ M·N·K; q = 1 on CPUs. eff_c, eff_m
(fractions of peak) and overhead (s per launch) are the variant's ``Factors``: fitted on
cached timings by the least mean absolute log error (``predict.fit``), else defaults per hardware
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

import logging
import math
import numbers
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from ..nn.maskers import finite_real, positive_real
from ..ops.registry import Cost, Variant, all_variants, get_variant
from ..ops.spatial_cost import _rates as cell_rates  # (a hashed file: not renamed)
from ..ops.spec import BlockSpec
from ..tune.cache import check_spec
from .hardware import HardwareSpec, check_hardware
from .network import check_rate, mask1_fraction, stem_head_cost

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

    def __post_init__(self) -> None:
        """Raise a ValueError naming the field unless eff_c and eff_m are finite numbers
        > 0, overhead None or a finite number >= 0, and n an int >= 0: a NaN eff_c
        predicted 0 s, a zero one raised ZeroDivisionError."""
        # kept as the floats checked (a 0-d tensor given would make every time a tensor)
        object.__setattr__(self, "eff_c", positive_real("Factors.eff_c", self.eff_c))
        object.__setattr__(self, "eff_m", positive_real("Factors.eff_m", self.eff_m))
        if self.overhead is not None:
            overhead = finite_real("Factors.overhead", self.overhead)
            if overhead < 0:
                raise ValueError(f"Factors.overhead must be >= 0, got {self.overhead!r}")
            object.__setattr__(self, "overhead", overhead)
        if isinstance(self.n, bool) or not isinstance(self.n, numbers.Integral) or self.n < 0:
            raise ValueError(f"Factors.n must be an int >= 0, got {self.n!r}")


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


# variants whose Cost counts whole cells, round(rate·N) a sample, and whole channel groups
# (``ops.spatial_cost._rates``, read here as that Cost reads it); the others take the rate
# as given
WHOLE_CELL_VARIANTS = ("gather", "patch")


def gemm_dims(spec: BlockSpec, rate: float, variant: str) -> list[tuple[float, float, float]]:
    """[M, N, K] of the block's GEMMs (conv1, conv2 as im2col, conv3, downsample) when
    ``variant`` runs at ``rate``; per sample for channel modes (each sample its own lists).
    Rows and channels at the rate as the variant's Cost counts it: whole cells and groups
    for :data:`WHOLE_CELL_VARIANTS` (q scales that Cost's multiply-adds; taken at 0.13 on
    a 2x2 grid, where the Cost prices one cell of four, q of half those rows doubled the
    compute term, a spike the monotone envelope carried to rate 1: patch 1.46x on an A100),
    expected rows at the rate for the others."""
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
            if variant in WHOLE_CELL_VARIANTS:  # the fractions their Cost counts
                r1, r3, rc = cell_rates(spec, rate)
            else:
                r3, rc = rate, rate if spec.mode == "both" else 1.0
                r1 = mask1_fraction(spec, r3)
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


def check_mode(v: Variant, spec: BlockSpec) -> None:
    """A ValueError unless ``v`` runs ``spec``'s mode: a variant of another mode has no
    time to predict (``channel_gemm`` or ``compact`` on a spatial block got one until
    session 66; a variant of the mode whose ``supports`` refuses the block keeps its
    Cost's estimate)."""
    if spec.mode not in v.modes:
        raise ValueError(f"variant {v.name!r} does not run {spec.short()}: it runs mode "
                         f"{', '.join(v.modes)}, not {spec.mode!r} (no time to predict)")


def terms(spec: BlockSpec, rate: float, variant: str | Variant, hw: HardwareSpec,
          tiles: tuple[int, int] | None = None) -> Terms:
    """Terms of ``variant`` at (spec, rate) on ``hw`` from its Cost (tiles: see
    :func:`quantisation`).

    Raises:
        ValueError: if spec is not a BlockSpec, the variant is not registered, runs
            another mode than spec's (:func:`check_mode`), or its cost fails.
    """
    check_spec(spec, "terms")  # (a key string raised AttributeError, 'short')
    v = resolve_variant(variant)
    check_mode(v, spec)  # (``prune.config_time`` priced one until review s66l)
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


def latency_from_terms(t: Terms, f: Factors, hw: HardwareSpec) -> float:
    """Raw predicted seconds of one call from its ``terms`` and ``f``: launches ·
    overhead (``f``'s, else ``hw.launch_overhead``) + max(compute_s / eff_c, memory_s /
    eff_m), the module docstring's formula (not made monotone in rate)."""
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
    ("dense" for "dense/channel"), else the pooled fit ("*"), else the kind default.

    Raises:
        ValueError: if factors is not None or a dict, or the entry found is not a Factors
            (naming its key; they raised AttributeError, 'get' or 'overhead').
    """
    if factors is not None and not isinstance(factors, dict):
        raise ValueError(f"factors must be a dict {{variant: Factors}} (predict.fit) or None, "
                         f"got {type(factors).__name__}")
    factors = factors or {}
    for key in (variant, variant.split("/")[0], "*"):
        found = factors.get(key)
        if found:  # (as before: an empty entry falls through)
            if not isinstance(found, Factors):
                raise ValueError(f"factors[{key!r}] must be a Factors, got "
                                 f"{type(found).__name__}")
            return found
    return DEFAULT_FACTORS[hw.kind]


def predict_block(spec: BlockSpec, rate: float, variant: str | Variant, hw: HardwareSpec,
                  factors: dict[str, Factors] | None = None) -> float:
    """Predicted seconds of one call of ``variant`` on ``spec`` at activation ``rate``,
    non-decreasing in ``rate`` (see the module docstring).

    Raises:
        ValueError: spec not a BlockSpec, rate not a number in [0, 1]
            (``network.check_rate``), a variant with no model or one of another mode
            than ``spec``'s (``channel_gemm`` or ``compact`` on a spatial block was
            priced until session 66; a variant of the mode whose ``supports`` refuses
            the block, ``patch`` at S = 1, keeps its Cost's estimate), or hw not a
            HardwareSpec.
    """
    check_spec(spec, "predict_block")  # (a key string raised AttributeError, 'mode')
    rate = check_rate(rate)
    check_hardware(hw)
    v = resolve_variant(variant)
    check_mode(v, spec)
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
        top = max(top, latency_from_terms(_grid_terms(spec, i, variant, hw), f, hw))
        out.append(top)
    return tuple(out)


def predict_timings(spec: BlockSpec, bucket: float, variants: Iterable[str | Variant],
                    hw: HardwareSpec, factors: dict[str, Factors] | None = None
                    ) -> dict[str, dict[str, float]]:
    """{variant: {"{}": predicted seconds}}: the shape of measured timings, so that
    ``DispatchTable.add(bucket, ..., "predicted")`` takes it. The bucket is a mean rate
    over the batch (what a compiled block dispatches on), so the expected time
    (:func:`predict_expected`): at batch 8 with one cell per sample, bucket 0.5 is four
    samples on, not every sample's cell rounded off.

    Raises:
        ValueError: ``variants`` is a single name or Variant, or not iterable (a name
            was iterated letter by letter: "variant 'd' has no latency model"), or as
            :func:`predict_expected`.
    """
    if isinstance(variants, (str, Variant)) or not isinstance(variants, Iterable):
        raise ValueError(f"variants must be an iterable of variant names or Variants, got "
                         f"{type(variants).__name__} {variants!r}")
    check_spec(spec, "predict_timings")
    out = {}
    for v in variants:
        v = resolve_variant(v)
        out[v.name] = {"{}": predict_expected(spec, bucket, v, hw, factors)}
    return out


# -- the whole model: stem and head, expected times, the static baseline --------------

def predict_stem_head(input_size: int, batch: int, dtype: str, hw: HardwareSpec,
                      factors: dict[str, Factors] | None = None) -> float:
    """Predicted seconds of the dense stem and head (``network.stem_head_cost``), with the
    ``dense`` variant's factors. Raises ValueError if hw is not a HardwareSpec."""
    check_hardware(hw)
    flops, byts, launches = stem_head_cost(input_size, batch, dtype=dtype)
    t = Terms(float(launches), flops / hw.peak_macs(dtype), byts / hw.bandwidth)
    return latency_from_terms(t, factors_for("dense", hw, factors), hw)


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


def predict_static_dense(spec: BlockSpec, hw: HardwareSpec,
                         factors: dict[str, Factors] | None = None) -> float:
    """Predicted seconds of the static block, the dense baseline: the ``dense`` variant's
    Cost at rate 1 under ``dense``'s own factors, whatever the spec's mode. On a block with
    channel masks the ``dense`` variant is another code path ("dense/channel",
    :func:`factor_key`), a candidate of that block but not the baseline: predicted so, a
    channel-mode model's "dense" took 85 ms against the spatial one's 64 ms (ResNet-50 on
    the Intel cache's fit, session 31). Raises ValueError if spec is not a BlockSpec or
    hw not a HardwareSpec."""
    check_spec(spec, "predict_static_dense")
    check_hardware(hw)
    return _curve(spec, "dense", hw, factors_for("dense", hw, factors))[MONOTONE_STEPS]


def predict_expected(spec: BlockSpec, rate: float, variant: str | Variant, hw: HardwareSpec,
                     factors: dict[str, Factors] | None = None) -> float:
    """Expected seconds at a mean activation ``rate`` that need not be a whole number k/N of
    the N units the masks switch (:func:`mask_units`): linear between k/N and (k+1)/N,
    since masks realise whole units only. A Cost takes a rate as it comes: the spatial ones
    round it to whole cells, so a coarse grid (one 7x7 cell on a 7x7 map) would look free
    below rate 0.5; the channel one slices rate·width channels, so one group of 64
    channels would look half on at 0.5; the layer one counts rate·B samples with the
    gather of a partial batch, which a batch of 1 never pays. Equal to
    :func:`predict_block` at whole units and where there are none.

    Raises:
        ValueError: as :func:`predict_block` (a spec that is not a BlockSpec raised
            AttributeError, 'spatial').
    """
    check_spec(spec, "predict_expected")
    rate = check_rate(rate)
    n = mask_units(spec)
    if n is None:
        return predict_block(spec, rate, variant, hw, factors)
    k = min(int(math.floor(rate * n + 1e-9)), n)
    lo = predict_block(spec, k / n, variant, hw, factors)
    if k >= n or rate * n - k <= 1e-9:
        return lo
    hi = predict_block(spec, (k + 1) / n, variant, hw, factors)
    return lo + (rate * n - k) * (hi - lo)
