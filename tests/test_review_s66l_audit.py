"""Review s66l: the changes of session 66 (s66g-s66k) audited for what they broke or
left half-done; regressions for what it found."""

from __future__ import annotations

import json

import pytest

from laudtriton.ops.spec import BlockSpec
from laudtriton.plot_rows import check_measured, rows_from_cache
from laudtriton.tune.cache import TuneCache
from laudtriton.tune.options import MAX_BATCH


def _big_batch_cache(folder) -> TuneCache:
    """A cache holding what ``compile(tune="quick")`` records for a block run at a batch
    past a sweep's ``--batch`` bound (compile has none: a small-image model at batch
    8192), at three rates, with the block's model and name."""
    cache = TuneCache(folder, device="cpu", enabled=True)
    spec = BlockSpec(in_channels=64, width=16, out_channels=64, stride=1, downsample=False,
                     in_hw=(8, 8), mode="spatial", granularity=1, batch=2 * MAX_BATCH)
    for r in (0.0, 0.5, 1.0):
        cache.record(spec, r, {"dense": {"{}": 1e-3}, "gather": {"{}": 1e-3 * (0.2 + r)}},
                     {"models": {"m": ["layer1.0"]}, "input_size": 32})
    return cache


def test_plot_rows_of_the_cache_at_a_batch_past_a_sweeps_bound_pass(tmp_path) -> None:
    """s66k held rows given to the plots to read_csv's spec_key rule, the sweep's size
    bounds included; but ``plot --from cache`` checks the cache's rows by that rule too,
    and a cache entry that compile recorded at a batch over ``--batch``'s 4096 (compile
    has no such bound) made ``laudtriton plot --from cache`` refuse the whole cache
    ("is a block larger than a sweep times"), which it plotted before."""
    rows = rows_from_cache(_big_batch_cache(tmp_path / "c"))
    assert len(rows) == 6
    check_measured(rows, "--from 'cache'")  # raised ValueError
    d = json.loads(rows[0]["spec_key"])  # a map past any compile's is still refused
    d["in_hw"] = [100000, 100000]
    with pytest.raises(ValueError, match=r"column 'spec_key'.*larger than"):
        check_measured([{**rows[0], "spec_key": json.dumps(d)}], "the rows given")


def test_plot_command_from_a_cache_at_a_batch_past_a_sweeps_bound(tmp_path, capsys) -> None:
    """``laudtriton plot --from cache`` (as above) exited 2 on a cache compile wrote at
    batch 8192; it drew its figures before s66k."""
    pytest.importorskip("matplotlib")
    from laudtriton.cli import main

    _big_batch_cache(tmp_path / "c")
    rc = main(["plot", "--from", "cache", "--cache-dir", str(tmp_path / "c"),
               "--out", str(tmp_path / "o"), "--no-predicted"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.suffix for p in (tmp_path / "o").iterdir()) == [".png", ".png"]


def test_config_time_refuses_a_variant_of_another_mode() -> None:
    """s66i made ``predict_block`` refuse a variant of another mode than the block's
    (``channel_gemm`` on a spatial block got a time); ``config_time``, exported beside it
    from ``laudtriton.predict`` and pricing through the same ``terms``, still gave one
    (1.8 ms for channel_gemm on a spatial block, CPU)."""
    from laudtriton.predict import config_time, predict_block
    from laudtriton.predict.hardware import get_hardware
    from laudtriton.predict.model import terms

    hw = get_hardware("cpu")
    spec = BlockSpec(in_channels=256, width=64, out_channels=256, stride=1,
                     downsample=False, in_hw=(56, 56), mode="spatial", granularity=2)
    assert config_time(spec, 0.5, "gather", {}, hw) > 0  # a variant of the mode: priced
    for call in (lambda: config_time(spec, 0.5, "channel_gemm", {}, hw),
                 lambda: terms(spec, 0.5, "channel_gemm", hw),
                 lambda: predict_block(spec, 0.5, "channel_gemm", hw)):
        with pytest.raises(ValueError, match=r"'channel_gemm' does not run .* not 'spatial'"):
            call()
