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
from collections.abc import Iterable, Sequence
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

# ``design`` builds and sorts every per-stage configuration, each a Design held in
# memory: its default options give 1080 on LAUD-ResNet-101; 181,440 (granularities 1-40)
# took 6 s and 0.5 GB at peak on the 2-core CPU of session 36; 4.3e9 (granularities
# 1-128 in two spatial modes at 4096x4096) held 0.8 GB and kept growing after 22 s
MAX_DESIGNS = 250_000


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
            ValueError: if ``bucket`` is not in [0, 1] (NaN included) or ``source`` is not
                one of SOURCES.
        """
        if isinstance(bucket, bool) or not (isinstance(bucket, numbers.Real)
                                            and 0.0 <= bucket <= 1.0):
            raise ValueError(f"bucket {bucket!r} must be a rate in [0, 1]")
        if source not in SOURCES:
            raise ValueError(f"source {source!r} unknown; accepted: {', '.join(SOURCES)}")
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
            ValueError: if the table is empty or ``rate`` is not in [0, 1].
        """
        if not self.entries:
            raise ValueError("empty dispatch table")
        if not 0.0 <= rate <= 1.0:
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


# -- latency-guided co-design (LAUDNet's 4-4-2-1 vs 8-4-7-1 choice) ---------------------

@dataclass(frozen=True)
class Design:
    """One per-stage configuration ranked by the co-design search.

    modes, granularities: per stage (S is 1 where the stage has no spatial mask;
    ``s_label`` prints '_' there).
    seconds: predicted latency of the whole model (each block with the variant compile
    would pick from the predictions: the fastest, but ``dense`` unless beaten by more
    than ``DENSE_MARGIN``; plus the dense stem and head); dense_seconds: the static
    network's (every block dense, no masks: ``predict.model.predict_static_dense``), the
    same for every design.
    flops_ratio: achieved FLOPs of the residual blocks / their dense FLOPs.
    rates: activation rate per block (the one that meets the target FLOPs ratio).
    variants: that variant per block.
    """

    modes: tuple[str, ...]
    granularities: tuple[int, ...]
    seconds: float
    dense_seconds: float
    flops_ratio: float
    rates: tuple[float, ...] = ()
    variants: tuple[str, ...] = ()

    def s_label(self) -> str:
        """S per stage, '_' for a stage without a spatial mask: '4-4-_-_'."""
        return "-".join(str(g) if m in ("spatial", "both") else "_"
                        for m, g in zip(self.modes, self.granularities))

    def label(self) -> str:
        """The configuration's name, its modes per stage and ``s_label``, e.g.
        'spatial-spatial-channel-layer 4-4-_-_'; ``design_search`` ranks designs of equal
        latency by it."""
        return f"{'-'.join(self.modes)} {self.s_label()}"


def _stage_options(modes, granularities, size: int) -> list[tuple[str, int]]:
    """The distinct (mode, S) a stage of a ``size`` map can take (a mode or S named twice
    counts once: each configuration is ranked once)."""
    opts = []
    for m in modes:
        if m in ("spatial", "both"):
            opts += [(m, g) for g in granularities if 1 <= g <= size]
        else:
            opts.append((m, 1))
    return list(dict.fromkeys(opts))


def check_target_rate(target: float) -> None:
    """Raise a ValueError naming ``--target-rate`` unless 0 < target <= 1."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"--target-rate {target!r} must be in (0, 1]")


def check_modes(modes: Sequence[str]) -> None:
    """Raise a ValueError naming ``--modes`` unless ``modes`` is a non-empty sequence of
    known modes (``predict.network.MODES``)."""
    from .predict.network import MODES

    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"--modes {','.join(modes)!r}: unknown {bad}; accepted: "
                         f"{', '.join(MODES)}")


def design_stages(arch: str, modes: Sequence[str], granularities: Sequence[int], batch: int,
                  input_size: int, dtype: str, channel_granularity: int | str | Sequence[int]
                  ) -> list[list[tuple[str, int, list[BlockSpec]]]]:
    """Per stage, the options ``design_search`` ranks: (mode, S, the stage's block specs
    with S there and 1 elsewhere). Needs no hardware: the ``design`` command checks its
    options with it before reading one (which may warn).

    Raises:
        ValueError: naming the option: an S larger than every stage's map, a stage with
            no option, a channel granularity that does not divide a width, more than
            ``MAX_DESIGNS`` configurations.
    """
    from .predict.network import model_specs, stem_hw

    stage_size = [stem_hw(input_size)]
    for st in (1, 2, 2, 2):
        stage_size.append((stage_size[-1] - 1) // st + 1)
    too_large = [g for g in granularities if g > max(stage_size[1:])]
    if too_large and any(m in ("spatial", "both") for m in modes):  # never an option
        raise ValueError(f"--granularities: {', '.join(map(str, too_large))} larger than "
                         f"every stage's map (the largest is {max(stage_size[1:])}x"
                         f"{max(stage_size[1:])})")
    stages = []
    for i in range(4):
        opts = []
        for mode, g in _stage_options(modes, granularities, stage_size[i + 1]):
            gran = [1, 1, 1, 1]
            gran[i] = g
            specs = [s for n, s in model_specs(arch, mode, gran, batch, input_size, dtype,
                                               channel_granularity)
                     if n.startswith(f"layer{i + 1}.")]
            opts.append((mode, g, specs))
        if not opts:
            raise ValueError(f"--modes/--granularities: stage {i + 1} ({stage_size[i + 1]}x"
                             f"{stage_size[i + 1]}) has no option among modes {modes} and "
                             f"granularities {granularities}")
        stages.append(opts)
    count = math.prod(len(opts) for opts in stages)
    if count > MAX_DESIGNS:  # the search builds and sorts every one of them
        raise ValueError(f"--modes/--granularities: {count} configurations ("
                         f"{' x '.join(str(len(opts)) for opts in stages)} options per stage) "
                         f"are more than the {MAX_DESIGNS} the search ranks; give fewer "
                         "granularities or modes")
    return stages


def design_search(arch: str, hw: HardwareSpec | str, target: float,
                  modes: Sequence[str] = ("spatial", "channel", "layer"),
                  granularities: Sequence[int] = (1, 2, 4, 8), batch: int = 1,
                  input_size: int = 224, dtype: str | None = None, factors: dict | None = None,
                  channel_granularity: int | str | Sequence[int] = 1, top: int | None = None
                  ) -> list[Design]:
    """Every per-stage (mode, S) configuration of ``arch``, ranked by predicted latency at
    the FLOPs ratio ``target``, fastest first.

    Each block runs at the activation rate whose FLOPs ratio (official accounting, dense
    downsample) equals ``target`` (``predict.network.rate_for_flops_ratio``; rate 0 where
    the dense downsample alone exceeds it), with the variant compile would pick from the
    predictions on ``hw``: the fastest, but ``dense`` unless another beats it by more than
    ``DENSE_MARGIN`` (``DispatchTable.add``).
    Stages are independent (a block's latency does not depend on its neighbours' modes),
    so each stage option is predicted once and the configurations are their sums.
    channel_granularity: one value or one per stage ("2", "2-2-4-4", a list of 4), as
    ``predict.network.model_specs`` takes it.

    Raises:
        ValueError: unknown arch, mode or hardware, target outside (0, 1], no valid option
            for a stage (e.g. every S larger than its map), an S larger than every stage's
            map (with a spatial mode), top < 1.
    """
    import itertools

    from .ops.registry import variants_for
    from .predict.hardware import get_hardware
    from .predict.model import predict_expected, predict_static_dense, predict_stem_head
    from .predict.network import flops_ratio, rate_for_flops_ratio

    hw = get_hardware(hw)
    check_target_rate(target)
    if top is not None and top < 1:
        raise ValueError(f"--top {top} must be >= 1")
    check_modes(modes)
    dtype = dtype or hw.default_dtype
    memo: dict = {}

    def block(spec):
        if spec not in memo:
            r = rate_for_flops_ratio(spec, target)
            preds = {v.name: predict_expected(spec, r, v, hw, factors)
                     for v in variants_for(spec, hw.backend)}
            pick = compile_pick(preds)
            best = (preds[pick], pick)
            dense = predict_static_dense(spec, hw, factors)
            memo[spec] = (best[0], dense, flops_ratio(spec, r) * spec.dense_flops(),
                          spec.dense_flops(), r, best[1])
        return memo[spec]

    per_stage = []
    for options in design_stages(arch, modes, granularities, batch, input_size, dtype,
                                 channel_granularity):
        opts = []
        for mode, g, specs in options:
            rows = [block(s) for s in specs]
            opts.append((mode, g, tuple(map(sum, zip(*[r[:4] for r in rows]))),
                         tuple(r[4] for r in rows), tuple(r[5] for r in rows)))
        per_stage.append(opts)
    stem = predict_stem_head(input_size, batch, dtype, hw, factors)
    out = []
    for combo in itertools.product(*per_stage):
        t, dense, fl, dfl = (sum(c[2][k] for c in combo) for k in range(4))
        out.append(Design(tuple(c[0] for c in combo), tuple(c[1] for c in combo),
                          t + stem, dense + stem, fl / dfl,
                          tuple(r for c in combo for r in c[3]),
                          tuple(v for c in combo for v in c[4])))
    out.sort(key=lambda d: (d.seconds, d.label()))
    return out[:top] if top else out
