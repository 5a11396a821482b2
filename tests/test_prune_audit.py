"""Audit of ``predict.prune``: a config's output tile must be positive ints (block_m 0
divided by zero, a negative one predicted the fastest time), and config_time's other
arguments are checked with errors that name them."""

from __future__ import annotations

import pytest

from laudtriton.ops import BlockSpec
from laudtriton.predict.hardware import get_hardware
from laudtriton.predict.prune import config_tiles, config_time, make_prune

SPEC = BlockSpec(48, 12, 48, 1, False, (13, 13), "spatial", 3)


@pytest.mark.parametrize("config, key", [
    ({"block_m": 0, "block_n": 64}, "block_m"),
    ({"block_m": -64, "block_n": 64}, "block_m"),
    ({"block_m": 64.7, "block_n": 64}, "block_m"),
    ({"block_m": "64", "block_n": 64}, "block_m"),
    ({"block_m": True, "block_n": 64}, "block_m"),
    ({"BLOCK_P": 32, "block_n": 0}, "block_n"),
    ({"block_m": 64, "block_n": None}, "block_n"),
    ({"block_m": float("inf"), "block_n": 16}, "block_m"),
    ({"conv1": {"block_m": 0, "block_n": 16}, "conv2": {}}, "conv1.block_m"),
])
@pytest.mark.parametrize("hw", ["h100", "cpu"])
def test_a_tile_that_is_not_a_positive_int_is_refused(config, key, hw):
    with pytest.raises(ValueError, match=rf"config '{key}' must be a positive int, got "):
        config_time(SPEC, 0.5, "dense", config, get_hardware(hw))
    with pytest.raises(ValueError, match=rf"config '{key}'"):
        config_tiles(config)


def test_valid_tiles_still_rank():
    h100 = get_hardware("h100")
    assert config_tiles({"block_m": 64, "block_n": 32, "num_warps": 4}) == (64, 32)
    assert config_tiles({"conv1": {"block_m": 16, "block_n": 128}}) == (16, 128)
    assert config_tiles({"block_m": 64}) is None and config_tiles({}) is None
    small = config_time(SPEC, 0.5, "dense", {"block_m": 16, "block_n": 16}, h100)
    assert small > 0
    hook = make_prune(h100, 1, {})
    with pytest.raises(ValueError, match="config 'block_m'"):
        hook(SPEC, 0.5, "dense", [{"block_m": 64, "block_n": 64},
                                  {"block_m": 0, "block_n": 64}])


@pytest.mark.parametrize("args, match", [
    (dict(config=None), "config must be a dict"),
    (dict(config=[("block_m", 64)]), "config must be a dict"),
    (dict(hw="h100"), r"hw must be a HardwareSpec .*got str"),
    (dict(variant=None), "variant None has no latency model"),
])
def test_config_time_names_a_bad_argument(args, match):
    kw = dict(spec=SPEC, rate=0.5, variant="dense", config={}, hw=get_hardware("h100"))
    with pytest.raises(ValueError, match=match):
        config_time(**{**kw, **args})
