"""Session 65's review of the latency predictor's Python API: a spec that is not a
BlockSpec, and a single variant name where a list of them is due, raised an internal
AttributeError or an error about another variant, not one naming the argument."""

from __future__ import annotations

import pytest

from laudtriton.ops.spec import BlockSpec
from laudtriton.predict import (
    config_time,
    flops_ratio,
    predict_block,
    predict_expected,
    predict_timings,
    rate_for_flops_ratio,
)
from laudtriton.predict.hardware import CPU_DEFAULT
from laudtriton.predict.model import predict_static_dense, terms

SPEC = BlockSpec(64, 16, 64, 1, False, (8, 8), "spatial", 2)


@pytest.mark.parametrize("call", [
    lambda s: predict_block(s, 0.5, "dense", CPU_DEFAULT),
    lambda s: predict_expected(s, 0.5, "dense", CPU_DEFAULT),
    lambda s: predict_static_dense(s, CPU_DEFAULT),
    lambda s: predict_timings(s, 0.5, ["dense"], CPU_DEFAULT),
    lambda s: terms(s, 0.5, "dense", CPU_DEFAULT),
    lambda s: config_time(s, 0.5, "gather", {}, CPU_DEFAULT),
    lambda s: flops_ratio(s, 0.5),
    lambda s: rate_for_flops_ratio(s, 0.5),
], ids=["predict_block", "predict_expected", "predict_static_dense", "predict_timings",
        "terms", "config_time", "flops_ratio", "rate_for_flops_ratio"])
def test_a_spec_that_is_no_blockspec_is_a_valueerror_naming_it(call):
    """A spec given as its key string (or anything else but a BlockSpec) raised
    AttributeError ('str' object has no attribute 'mode', 'spatial', 'short',
    'conv_macs') from inside the model; hw and rate were checked, spec was not."""
    with pytest.raises(ValueError, match="spec must be a BlockSpec, got str"):
        call(SPEC.key())


@pytest.mark.parametrize("variants", ["dense", None, 3])
def test_predict_timings_refuses_variants_that_are_no_list(variants):
    """predict_timings(spec, bucket, "dense", ...) iterated the string's letters and said
    "variant 'd' has no latency model", a message about no variant the caller named; None
    raised TypeError."""
    with pytest.raises(ValueError, match="variants must be"):
        predict_timings(SPEC, 0.5, variants, CPU_DEFAULT)


def test_predict_timings_still_takes_names_and_variants():
    """The fix keeps every iterable of names or Variants (a tuple, a generator)."""
    from laudtriton.ops import get_variant

    got = predict_timings(SPEC, 0.5, (n for n in ("dense", get_variant("gather"))),
                          CPU_DEFAULT)
    assert set(got) == {"dense", "gather"} and all(t["{}"] > 0 for t in got.values())


def _plot_rows(gather_seconds: dict[float, float]) -> tuple[BlockSpec, list[dict]]:
    """A spec's sweep rows: dense timed at 0.2 and 0.6, gather at the given seconds."""
    spec = BlockSpec(256, 64, 256, 1, False, (56, 56), "spatial", 4)  # gather predicted
    base = {"model": "m", "block": "layer1.0", "spec": spec.short(), "spec_key": spec.key()}
    rows = [dict(base, rate=r, variant="dense", seconds=1e-3) for r in (0.2, 0.6)]
    rows += [dict(base, rate=r, variant="gather", seconds=t) for r, t in gather_seconds.items()]
    return spec, rows


def test_the_predicted_line_leaves_out_a_variant_that_failed_at_that_rate(tmp_path,
                                                                           monkeypatch):
    """``plot``'s predicted line took the least predicted time over every variant its rows
    name, also one whose every config failed there (seconds inf, drawn nowhere): the line
    showed gather's time under a measured best that is dense's. It now predicts, at each
    rate, the variants timed there (as compile predicts only variants that ran)."""
    from laudtriton.plot_command import predicted_curves
    from laudtriton.predict import calibration

    monkeypatch.setattr(calibration, "fitted_predictor",
                        lambda cache, device: (CPU_DEFAULT, {}))
    spec, rows = _plot_rows({0.2: float("inf"), 0.6: float("inf")})
    dense = {r: predict_block(spec, r, "dense", CPU_DEFAULT, {}) for r in (0.2, 0.6)}
    gather = {r: predict_block(spec, r, "gather", CPU_DEFAULT, {}) for r in (0.2, 0.6)}
    assert all(gather[r] < dense[r] for r in dense)  # (else the test shows nothing)
    assert predicted_curves(rows, tmp_path) == {spec.key(): dense}
    spec, rows = _plot_rows({0.2: 5e-4, 0.6: float("inf")})  # ran at 0.2 only
    assert predicted_curves(rows, tmp_path) == {spec.key(): {0.2: gather[0.2],
                                                              0.6: dense[0.6]}}
