"""Predictor-guided pruning of kernel configs for the sweep (issue 6, item 3).

``make_prune(hw, top_k, cache_dir=...)`` returns the ``prune(spec, rate, variant, configs)
-> configs`` hook of ``tune.sweep.sweep``: it keeps the ``top_k`` configs with the lowest
predicted time, predicted as ``laudtriton predict`` predicts. The model sees a config
only through its output tile (BM, BN) and the tile and wave quantisation that follows from
it (``model.quantisation``); configs it cannot tell apart (same tile, other BLOCK_K /
warps / stages) keep their order in the variant's space.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..nn.maskers import check_positive_ints
from ..ops.registry import Variant
from ..ops.spec import BlockSpec
from .hardware import HardwareSpec, check_hardware
from .model import (
    Factors,
    factor_key,
    factors_for,
    latency_from_terms,
    resolve_variant,
    terms,
)
from .network import check_rate

# Config keys that name the output tile of a kernel config (rows, then columns).
ROW_KEYS = ("block_m", "block_p", "BLOCK_M", "BLOCK_P")
COL_KEYS = ("block_n", "BLOCK_N")


def config_tiles(config: dict) -> tuple[int, int] | None:
    """(BM, BN) of a kernel config, or None when it names no output tile (a row key and
    a column key). A config of per-kernel tiles ({"conv1": {"block_m": ...}, "conv2":
    ...}: the Triton spatial variants) gives its first kernel's (their space shares one
    tile over the kernels).

    Raises:
        ValueError: if config is not a dict, or a tile key of the (kernel's) config
            holds anything but a positive int, naming the key ("conv1.block_m"):
            block_m 0 divided by zero in ``model.quantisation``, a negative one
            predicted the fastest time.
    """
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    return _tiles(config, "")


def _tiles(config: dict, where: str) -> tuple[int, int] | None:
    """``config_tiles`` of ``config``, found at ``where`` ("conv1.") in the config."""
    if not any(k in config for k in ROW_KEYS + COL_KEYS):
        nested = [(k, v) for k, v in config.items() if isinstance(v, dict)]
        return _tiles(nested[0][1], f"{where}{nested[0][0]}.") if nested else None
    row = next((k for k in ROW_KEYS if k in config), None)
    col = next((k for k in COL_KEYS if k in config), None)
    for k in (row, col):
        if k is not None:
            check_positive_ints(**{f"config '{where}{k}'": config[k]})
    if row is None or col is None:
        return None
    return int(config[row]), int(config[col])


def config_time(spec: BlockSpec, rate: float, variant: str | Variant, config: dict,
                hw: HardwareSpec, factors: dict[str, Factors] | None = None) -> float:
    """Predicted seconds of ``variant`` with ``config`` at (spec, rate) (raw model, for
    ranking configs at one rate), under the factors ``predict`` looks up for it
    (``model.factor_key``: "dense/channel" for ``dense`` on a block with channel masks).

    Raises:
        ValueError: rate not a number in [0, 1], a variant with no latency model or
            of another mode than spec's (``model.check_mode``), hw not a HardwareSpec,
            or a config that is not a dict or whose tile is not positive ints
            (``config_tiles``).
    """
    check_hardware(hw)
    name = resolve_variant(variant).name
    t = terms(spec, check_rate(rate), variant, hw, config_tiles(config))
    return latency_from_terms(t, factors_for(factor_key(name, spec), hw, factors), hw)


def make_prune(hw: HardwareSpec | str, top_k: int = 3,
               factors: dict[str, Factors] | None = None,
               cache_dir: str | Path | None = None
               ) -> Callable[[BlockSpec, float, Variant, list[dict]], list[dict]]:
    """The sweep's prune hook keeping the ``top_k`` configs of lowest predicted time,
    predicted as ``laudtriton predict --cache-dir cache_dir`` predicts
    (``calibration.predictor_for``): "cpu" / "cuda" read their calibration in
    ``cache_dir``, and factors None means those fitted on the timings cached there
    (the kind's defaults for a preset or when nothing is cached; {}: the defaults).

    Raises:
        ValueError: unknown hardware, or top_k < 1.
    """
    from .calibration import predictor_for

    check_positive_ints(top_k=top_k)
    hw, fitted, _ = predictor_for(hw, cache_dir, fit=factors is None)
    factors = fitted if factors is None else factors

    def prune(spec: BlockSpec, rate: float, variant: Variant, configs: list[dict]):
        configs = list(configs)
        if len(configs) <= top_k:
            return configs
        ranked = sorted(range(len(configs)),
                        key=lambda i: (config_time(spec, rate, variant, configs[i], hw,
                                                   factors), i))
        return [configs[i] for i in sorted(ranked[:top_k])]

    return prune
