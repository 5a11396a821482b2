"""Dispatch tables: per block, rate -> (variant, kernel config) (DESIGN.md section 6).

A table is built from timings (measured now, or read from the autotune cache), each kept
at the rate its masks realised, and, at the rate buckets no timing lies near, from
predictions. ``choose(rate)`` picks the entry of the nearest rate; ``static`` dispatch
resolves it once, from the expected rate, so that the forward pass needs no host sync to
read the rate.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from .ops.masks import host_array

if TYPE_CHECKING:
    from .nn.block import BlockMasks
    from .ops.registry import Variant
    from .ops.spec import BlockSpec
    from .predict.hardware import HardwareSpec

SOURCES = ("measured", "cached", "predicted", "rule")


def mean64(t: torch.Tensor) -> float:
    """The mean of a mask in float64: in a half type its own mean is rounded (0.55 read
    0.5498 in bfloat16, and a rate halfway between two table entries went to the upper
    one where float32 masks' went to the lower). A CPU mask of a numpy dtype is read
    through numpy (no torch op)."""
    a = host_array(t)
    if a is not None:
        return float(a.mean(dtype=np.float64))
    return float(t.double().mean())


def run_rate(spec: BlockSpec, masks: BlockMasks) -> float:
    """The rate a block's dispatch table is read at, and its timings recorded at (compile's
    tuning, ``tune.sweep``): the mean of its channel mask (mode ``channel``) or of its grid
    (spatial mask or layer gate), in float64 whatever the masks' dtype (``mean64``;
    ``ops.masks.dispatch_rate`` reads a half-type mask in its own dtype)."""
    return mean64(masks.channel if spec.mode == "channel" else masks.grid)


# A variant other than ``dense`` must beat dense's time by more than this fraction to be
# chosen. Why (session 8, 2-core CPU): the same block's time moves by -5%..+9% (5th-95th
# percentile) from one sweep to the next, so about 10 of 240 winners flipped per re-sweep,
# nearly all of them near-ties; and a sparse variant that wins a near-tie alone can lose
# inside the model (its index tables and gathers run cold there): LAUD-ResNet-101, spatial,
# rate 0.75, the 22 blocks of layer3 `dense` instead of `gather` (0.968 to 0.995 of dense
# alone): 0.954-0.971 of the model's time, in both compile orders. A margin of 2% halves
# the flips; 5% also turns those blocks back.
DENSE_MARGIN = 0.05

# The rates a table is filled at where nothing was timed (``fill_predictions``; compile's
# tuning times ``planning.QUICK_RATES`` or every bucket). An entry is kept at the rate its
# masks realised (``schedule.run_rate``), which may lie between buckets.
BUCKET_STEP = 0.1


def fastest(timings: dict[str, dict[str, float]]) -> tuple[str, str, float] | None:
    """(variant, config_key, seconds) of the fastest finite positive timing of ``timings``
    ({variant: {config_key: seconds}}); None when there is none."""
    cands = [(t, v, c) for v, cs in timings.items() for c, t in cs.items()
             if math.isfinite(t) and t > 0]
    if not cands:
        return None
    t, v, c = min(cands)
    return v, c, t


def keeps_dense(seconds: float, dense_seconds: float | None) -> bool:
    """Whether a variant taking ``seconds`` leaves a block ``dense`` (which takes
    ``dense_seconds``; None: dense is not timed): unless it beats dense by more than
    ``DENSE_MARGIN``."""
    return dense_seconds is not None and seconds >= (1.0 - DENSE_MARGIN) * dense_seconds


def compile_pick(seconds: dict[str, float]) -> str:
    """The variant compile's rule picks from one (predicted) time per variant: the
    fastest (ties: the name first in alphabetical order), but ``dense`` where
    ``keeps_dense``. ``design`` and ``predict`` report it, so that their latencies are
    those of the model compile builds."""
    name = min(seconds, key=lambda n: (seconds[n], n))
    return "dense" if keeps_dense(seconds[name], seconds.get("dense")) else name


def rate_key(rate: float) -> float:
    """A rate as tables key it: rounded to 6 decimals, as the autotune cache keeps rates
    (two distinct rates of a grid of up to 10^5 cells stay apart)."""
    return round(float(rate), 6)


def format_rate(rate: float) -> str:
    """A rate with 2 decimals, or 3 when it lies between hundredths (as masks realise it:
    0.102 = 20/196, 0.125 = 1/8), so that the rates of one grid print apart (rates closer
    than a thousandth, of grids over 1000 cells, may print alike)."""
    return f"{rate:.2f}" if abs(rate * 100 - round(rate * 100)) < 1e-6 else f"{rate:.3f}"


def _is_rate(value: object) -> bool:
    """Whether value is a real number in [0, 1], not a bool (NaN is not)."""
    return (not isinstance(value, bool) and isinstance(value, numbers.Real)
            and 0.0 <= value <= 1.0)


_TIMINGS_SHAPE = "{variant: {config_key: seconds}} (str keys, real-number seconds)"


def _check_timings(timings: object) -> None:
    """Raise unless ``timings`` is {variant: {config_key: seconds}}: str keys at both
    levels, real numbers (not bools) for the seconds. Light: one pass, no JSON parsing.

    Raises:
        ValueError: naming the first entry that differs and the shape expected.
    """
    def bad(what: str) -> ValueError:
        return ValueError(f"{what}; timings must be {_TIMINGS_SHAPE}")

    if not isinstance(timings, Mapping):
        raise bad(f"timings is a {type(timings).__name__}")
    for v, cfgs in timings.items():
        if not isinstance(v, str):
            raise bad(f"timings has the key {v!r}, not a variant name")
        if not isinstance(cfgs, Mapping):  # a flat {variant: seconds}
            raise bad(f"timings[{v!r}] is {cfgs!r}, not a dict of config keys")
        for c, t in cfgs.items():
            if not isinstance(c, str):
                raise bad(f"timings[{v!r}] has the key {c!r}, not a config key")
            if isinstance(t, bool) or not isinstance(t, numbers.Real):
                raise bad(f"timings[{v!r}][{c!r}] is {t!r}, not a number of seconds")


@dataclass(frozen=True)
class Choice:
    """One dispatch entry: the variant, its config (sorted (key, value) pairs;
    ``config_dict`` gives the dict), the time it scored (s; nan when unknown) and where
    that came from (measured | cached | predicted | rule)."""

    variant: str
    config: tuple = ()
    seconds: float = math.nan
    source: str = "measured"

    @property
    def config_dict(self) -> dict:
        """``config`` as a dict (a new one at each read), as a variant's ``run`` takes it."""
        return dict(self.config)

    @classmethod
    def make(cls, variant: str, config: dict | str | None, seconds: float, source: str
             ) -> Choice:
        """A Choice from ``config`` given as a dict, as a JSON string (how timings key
        configs, ``tune.measure.config_key``; json.loads raises on one that is not JSON)
        or as None (no config): its items sorted, ``seconds`` made a float. ``source`` is
        not checked here (``DispatchTable.add`` checks it)."""
        if isinstance(config, str):
            config = json.loads(config)
        return cls(variant, tuple(sorted((config or {}).items())), float(seconds), source)


def near(rates: Iterable[float], bucket: float) -> bool:
    """Whether one of ``rates`` lies within half a bucket (``BUCKET_STEP`` / 2) of
    ``bucket``."""
    return any(abs(r - bucket) <= BUCKET_STEP / 2 + 1e-9 for r in rates)


@dataclass
class DispatchTable:
    """activation rate in [0, 1] -> Choice (at the rate its timings were taken, or at a
    bucket where it is predicted), plus the dense time per rate where it was measured
    (for reporting ratios)."""

    entries: dict[float, Choice] = field(default_factory=dict)
    dense_seconds: dict[float, float] = field(default_factory=dict)

    def add(self, bucket: float, timings: dict[str, dict[str, float]], source: str) -> None:
        """Add the fastest finite timing of ``timings`` ({variant: {config_key: s}}), but
        keep ``dense`` unless the fastest beats it by more than ``DENSE_MARGIN``.

        Raises:
            ValueError: if ``bucket`` is not in [0, 1] (NaN included), ``source`` is not
                one of SOURCES, or ``timings`` has another shape (``_check_timings``).
        """
        if not _is_rate(bucket):
            raise ValueError(f"bucket {bucket!r} must be a rate in [0, 1]")
        if source not in SOURCES:
            raise ValueError(f"source {source!r} unknown; accepted: {', '.join(SOURCES)}")
        _check_timings(timings)
        best = fastest(timings)
        if best is None:
            return
        dense = fastest({"dense": timings.get("dense", {})})
        if dense is not None and keeps_dense(best[2], dense[2]):
            best = dense
        self.entries[rate_key(bucket)] = Choice.make(*best, source)
        if dense is not None:
            self.dense_seconds[rate_key(bucket)] = dense[2]

    def choose(self, rate: float) -> Choice:
        """The entry of the rate nearest to ``rate`` (ties: the lower one; distances are
        compared at 9 decimals, so that 0.65 lies as near 0.6 as 0.7).

        Raises:
            ValueError: if the table is empty or ``rate`` is not a number in [0, 1] (a
                bool, a string or None included, as ``add`` refuses them).
        """
        if not self.entries:
            raise ValueError("empty dispatch table")
        if not _is_rate(rate):
            raise ValueError(f"rate {rate!r} must be in [0, 1]")
        bucket = min(self.entries, key=lambda b: (round(abs(b - rate), 9), b))
        return self.entries[bucket]

    def covers(self, bucket: float) -> bool:
        """Whether an entry lies within half a bucket (``BUCKET_STEP`` / 2) of ``bucket``:
        a rate timed between buckets (0.75, a layer gate at batch 8) serves the rates
        around it, so neither a prediction nor another timing is added there."""
        return near(self.entries, bucket)

    def variants(self) -> list[str]:
        """The distinct variants of the table's entries, sorted by name."""
        return sorted({c.variant for c in self.entries.values()})

    def describe(self) -> str:
        """'0.25:gather 0.50:patch ...' with the source of each entry (``format_rate``)."""
        parts = []
        for b in sorted(self.entries):
            c = self.entries[b]
            cfg = "" if not c.config else json.dumps(c.config_dict, sort_keys=True)
            parts.append(f"{format_rate(b)}:{c.variant}{cfg}({c.source[0]})")
        return " ".join(parts)


# -- predictions where nothing was measured (issue 6) ----------------------------------

def fill_predictions(table: DispatchTable, spec: BlockSpec, buckets: Iterable[float],
                     variants: Iterable[str | Variant], hw: HardwareSpec | str,
                     factors: dict | None = None, configs: dict | None = None) -> list[float]:
    """Add "predicted" entries to ``table`` for the ``buckets`` it does not cover
    (``DispatchTable.covers``); measured or cached entries are never replaced. Each
    predicted Choice carries the variant's config in ``configs`` ({variant: config_key},
    e.g. one that ran on this block), else its first config (a config the variant
    accepts). ``dense_seconds`` stays measured-only.

    spec: BlockSpec; variants: names or Variants (candidates for this block); hw: a
    HardwareSpec or a hardware name; factors: fitted ``predict.model.Factors`` per variant.
    Returns the buckets that were filled.

    Raises:
        ValueError: an unknown hardware name, or a variant with no latency model.
    """
    from .predict.hardware import get_hardware
    from .predict.model import predict_timings, resolve_variant
    from .tune.measure import config_key

    hw = get_hardware(hw)
    cands = [resolve_variant(v) for v in variants]
    filled = []
    for b in sorted({rate_key(b) for b in buckets}):
        if table.covers(b):
            continue
        pred = predict_timings(spec, b, cands, hw, factors)
        timings = {}
        for v in cands:
            space = v.configs(spec) or [{}]
            key = (configs or {}).get(v.name) or config_key(space[0])
            timings[v.name] = {key: pred[v.name]["{}"]}
        dense_before = table.dense_seconds.get(b)
        table.add(b, timings, "predicted")
        if dense_before is None:
            table.dense_seconds.pop(b, None)
        if table.covers(b):  # not when no predicted time was usable (nothing added)
            filled.append(b)
    return filled
