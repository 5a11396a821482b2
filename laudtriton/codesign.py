"""The latency-guided co-design search (LAUDNet's 4-4-2-1 vs 8-4-7-1 choice): every
per-stage (mode, S) configuration of a LAUD-ResNet ranked by predicted latency at a target
FLOPs ratio, each block with the variant compile would pick (``schedule.compile_pick``).
The ``design`` command (``predict.design_command``) prints the ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .schedule import compile_pick

if TYPE_CHECKING:
    from .ops.spec import BlockSpec
    from .predict.hardware import HardwareSpec

# ``design`` builds and sorts every per-stage configuration, each a Design held in
# memory: its default options give 1080 on LAUD-ResNet-101; 181,440 (granularities 1-40)
# took 6 s and 0.5 GB at peak on the 2-core CPU of session 36; 4.3e9 (granularities
# 1-128 in two spatial modes at 4096x4096) held 0.8 GB and kept growing after 22 s
MAX_DESIGNS = 250_000


@dataclass(frozen=True)
class Design:
    """One per-stage configuration ranked by the co-design search.

    modes, granularities: per stage (S is 1 where the stage has no spatial mask;
    ``s_label`` prints '_' there).
    seconds: predicted latency of the whole model (each block with the variant compile
    would pick from the predictions: the fastest, but ``dense`` unless beaten by more
    than ``schedule.DENSE_MARGIN``; plus the dense stem and head); dense_seconds: the static
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


# What the checks call each argument: ``design_search``'s parameters when it is called
# from Python, the ``design`` command's options when the command checks them.
ARGUMENT_NAMES = {"target": "target", "modes": "modes", "granularities": "granularities"}
OPTION_NAMES = {"target": "--target-rate", "modes": "--modes",
                "granularities": "--granularities"}


def check_target_rate(target: float, names: dict[str, str] = ARGUMENT_NAMES) -> None:
    """Raise a ValueError naming ``names["target"]`` (``target``, or the command's
    ``--target-rate``) unless target is a number (not a bool) with 0 < target <= 1 (a
    string raised TypeError): ``predict.network.check_flops_target``."""
    from .predict.network import check_flops_target

    check_flops_target(target, names["target"])


def check_modes(modes: Sequence[str], names: dict[str, str] = ARGUMENT_NAMES) -> None:
    """Raise a ValueError naming ``names["modes"]`` (``modes``, or the command's
    ``--modes``) unless ``modes`` is a non-empty sequence of known modes
    (``predict.network.MODES``)."""
    from .predict.network import MODES

    name = names["modes"]
    if isinstance(modes, str):  # "spatial" was read letter by letter: unknown ['s', ...]
        raise ValueError(f"{name} {modes!r}: give a sequence of modes, e.g. ('{modes}',)")
    try:
        bad = [m for m in modes if m not in MODES]
    except TypeError:  # None or a number
        raise ValueError(f"{name} {modes!r}: give a sequence of modes, e.g. ('spatial',)"
                         ) from None
    if bad or not modes:
        raise ValueError(f"{name} {','.join(map(str, modes))!r}: unknown {bad}; accepted: "
                         f"{', '.join(MODES)}")


def design_stages(arch: str, modes: Sequence[str], granularities: Sequence[int], batch: int,
                  input_size: int, dtype: str, channel_granularity: int | str | Sequence[int],
                  names: dict[str, str] = ARGUMENT_NAMES
                  ) -> list[list[tuple[str, int, list[BlockSpec]]]]:
    """Per stage, the options ``design_search`` ranks: (mode, S, the stage's block specs
    with S there and 1 elsewhere). Needs no hardware: the ``design`` command checks its
    options with it before reading one (which may warn), with ``names=OPTION_NAMES``.

    Raises:
        ValueError: naming the argument as ``names`` calls it (or the batch or input
            size): a batch or input size ``model_specs`` refuses,
            granularities that are not a sequence, or empty with a spatial (or both)
            mode, an S that is not an int >= 1 or larger than every stage's map, a stage with
            no option, a channel granularity that does not divide a width, more than
            ``MAX_DESIGNS`` configurations.
    """
    from .nn.maskers import is_positive_int
    from .predict.network import check_batch_and_size, model_specs, stem_hw

    check_batch_and_size(batch, input_size)  # before the stage maps the S are checked on
    gname, both = names["granularities"], f"{names['modes']}/{names['granularities']}"
    try:  # an int raised TypeError; none dropped the spatial modes without a word
        grans = tuple(granularities)
    except TypeError:
        grans = None
    if grans is None or not grans and any(m in ("spatial", "both") for m in modes):
        raise ValueError(f"{gname} {granularities!r}: give a non-empty sequence of "
                         "positive ints, e.g. (1, 2, 4, 8)")
    granularities = grans
    bad = [g for g in granularities if not is_positive_int(g)]
    if bad:  # a string raised TypeError; 0 was dropped without a word
        raise ValueError(f"{gname}: {', '.join(map(repr, bad))} not a positive int")
    stage_size = [stem_hw(input_size)]
    for st in (1, 2, 2, 2):
        stage_size.append((stage_size[-1] - 1) // st + 1)
    too_large = [g for g in granularities if g > max(stage_size[1:])]
    if too_large and any(m in ("spatial", "both") for m in modes):  # never an option
        raise ValueError(f"{gname}: {', '.join(map(str, too_large))} larger than "
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
            raise ValueError(f"{both}: stage {i + 1} ({stage_size[i + 1]}x"
                             f"{stage_size[i + 1]}) has no option among modes {modes} and "
                             f"granularities {granularities}")
        stages.append(opts)
    count = math.prod(len(opts) for opts in stages)
    if count > MAX_DESIGNS:  # the search builds and sorts every one of them
        raise ValueError(f"{both}: {count} configurations ("
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
    ``schedule.DENSE_MARGIN`` (``schedule.DispatchTable.add``).
    Stages are independent (a block's latency does not depend on its neighbours' modes),
    so each stage option is predicted once and the configurations are their sums.
    channel_granularity: one value or one per stage ("2", "2-2-4-4", a list of 4), as
    ``predict.network.model_specs`` takes it.

    Raises:
        ValueError: unknown arch, mode or hardware, target outside (0, 1], no valid option
            for a stage (e.g. every S larger than its map), an S larger than every stage's
            map (with a spatial mode), an S or top that is not an int >= 1, modes or
            granularities that are not a sequence, no granularity with a spatial mode.
    """
    import itertools

    from .nn.maskers import is_positive_int
    from .ops.registry import variants_for
    from .predict.hardware import get_hardware
    from .predict.model import predict_expected, predict_static_dense, predict_stem_head
    from .predict.network import flops_ratio, rate_for_flops_ratio

    hw = get_hardware(hw)
    check_target_rate(target)
    if top is not None and not is_positive_int(top):  # 2.5 and "3" raised TypeError
        raise ValueError(f"top {top!r} must be an int >= 1")
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
