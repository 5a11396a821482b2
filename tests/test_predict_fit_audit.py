"""Audit of the predictor's fit (``predict.fit``), machine bounds (``predict.hardware``),
per-stage CLI values (``predict.network``) and ``benchmarks/masker_share.py``'s lines."""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from laudtriton.ops.spec import BlockSpec
from laudtriton.predict.calibration import CEILING, FLOOR, MAX_OVERHEAD, MAX_SMS, Calibration
from laudtriton.predict.fit import Sample, fit, samples, validate
from laudtriton.predict.hardware import CPU_DEFAULT, PRESETS, HardwareSpec
from laudtriton.predict.model import (
    Factors,
    latency_from_terms,
    predict_block,
    predict_expected,
    predict_static_dense,
    predict_stem_head,
    terms,
)
from laudtriton.predict.network import model_specs, per_stage
from laudtriton.tune.cache import CacheEntry

CPU = CPU_DEFAULT
SPECS = sorted({s for _, s in model_specs("laud_resnet50", "spatial", "4-4-2-1", 1)},
               key=BlockSpec.key)


def _timings() -> list[Sample]:
    """Noise-free timings of dense and gather on five block shapes (eff_c 0.3)."""
    true = Factors(0.3, 0.4, 2e-5)
    return [Sample(s, r, v, latency_from_terms(terms(s, r, v, CPU), true, CPU))
            for s in SPECS[:5] for r in (0.1, 0.5, 1.0) for v in ("dense", "gather")]


# -- item 1: Samples and cache entries in one list ------------------------------------

def test_fit_takes_samples_and_cache_entries_in_one_list():
    """A list mixing them raised AttributeError ('rate' or 'rate_bucket', by which came
    first): the Samples are taken as they are, the entries read through ``samples``."""
    data = _timings()
    entries = [CacheEntry(s.spec, s.rate, s.variant, "{}", s.seconds, {}) for s in data]
    want = fit(data, CPU)
    for mixed in (data[:15] + entries[15:], entries[:15] + data[15:]):
        got = fit(mixed, CPU)
        assert set(got) == set(want)
        for k in want:
            assert got[k].eff_c == pytest.approx(want[k].eff_c, rel=1e-9)
            assert got[k].n == want[k].n


@pytest.mark.parametrize("bad", [None, (1e-3,), "1e-3", 1e-3])
def test_fit_and_samples_name_an_element_that_is_neither(bad):
    data = [*_timings()[:3], bad]
    with pytest.raises(ValueError, match=r"data\[3\] .* not a Sample or a cache entry"):
        fit(data, CPU)
    with pytest.raises(ValueError, match=r"entries\[1\] .* not a cache entry"):
        samples([CacheEntry(SPECS[0], 0.5, "dense", "{}", 1e-3, {}), bad])
    with pytest.raises(ValueError, match=r"entries\[3\] .* not a Sample or a cache entry"):
        validate(data, CPU)


def test_samples_still_take_entry_like_objects():
    """``samples`` reads attributes: any object with spec, rate_bucket, variant and
    seconds is an entry (tests and scripts build them as SimpleNamespace)."""
    e = SimpleNamespace(spec=SPECS[0], rate_bucket=0.5, variant="dense", seconds=1e-3)
    assert [s.seconds for s in samples([e])] == [1e-3]


# -- item 2: timings that pin no compute term ------------------------------------------

def test_fit_on_equal_timings_says_its_eff_c_is_implausible(caplog):
    """Equal timings on blocks of different sizes are explained by the launch overhead
    alone: the fit put eff_c far above the peak (124x for dense) and said nothing."""
    data = [Sample(s, r, "dense", 1e-3) for s in SPECS[:5] for r in (0.1, 0.5, 1.0)]
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        fac = fit(data, CPU)
    assert fac["dense"].eff_c > 10  # kept: the predictions still match the timings
    said = [r.getMessage() for r in caplog.records if "eff_c" in r.getMessage()]
    assert len(said) == 1 and "dense" in said[0] and "peak" in said[0]


def test_fit_on_plausible_timings_warns_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        fac = fit(_timings(), CPU)
    assert fac["dense"].eff_c == pytest.approx(0.3, rel=0.05)
    assert not [r for r in caplog.records if "eff_c" in r.getMessage()]


# -- item 3: a HardwareSpec built directly is bounded as a calibration is --------------

def _spec(**change) -> dict:
    args = dict(name="x", kind="gpu", compute_units=8, peak=(("float32", 1e12),),
                bandwidth=1e9, launch_overhead=1e-6)
    return {**args, **change}


@pytest.mark.parametrize("change,field", [
    (dict(launch_overhead=1e300), "launch_overhead"),
    (dict(launch_overhead=2 * MAX_OVERHEAD), "launch_overhead"),
    (dict(bandwidth=1e-300), "bandwidth"), (dict(bandwidth=FLOOR), "bandwidth"),
    (dict(bandwidth=10 * CEILING), "bandwidth"),
    (dict(peak=(("float32", 1e-300),)), "peak"), (dict(peak=(("float16", 1e18),)), "peak"),
    (dict(compute_units=10 ** 9), "compute_units"),
    (dict(kind="edge", compute_units=MAX_SMS + 1), "compute_units")])
def test_hardware_spec_is_bounded_as_a_calibration_is(change, field):
    """launch_overhead=1e300 passed (a calibration file holding it is corrupt), and
    predict printed "launch 1e+306 us"; so did 1e9 SMs and a peak of 1e-300."""
    with pytest.raises(ValueError, match=f"HardwareSpec 'x': {field} "):
        HardwareSpec(**_spec(**change))


def test_hardware_spec_bounds_keep_what_calibrations_and_presets_hold():
    for hw in (*PRESETS.values(), CPU_DEFAULT):
        assert HardwareSpec(**{f: getattr(hw, f) for f in hw.__dataclass_fields__}) == hw
    edge = HardwareSpec(**_spec(launch_overhead=MAX_OVERHEAD, bandwidth=CEILING,
                                compute_units=MAX_SMS, peak=(("float32", CEILING),)))
    assert edge.launch_overhead == MAX_OVERHEAD
    # a CPU's units are threads, which the model does not use: not bounded
    assert HardwareSpec(**_spec(kind="cpu", compute_units=4096)).compute_units == 4096
    cal = Calibration("c", "cpu", {"float32": 2 * FLOOR}, 2 * FLOOR, 0.0, 2, 4096)
    assert cal.to_hardware().compute_units == 4096


def test_calibration_errors_keep_their_wording():
    with pytest.raises(ValueError, match=r"^overhead 2.0 is not a number of s in \[0, 1\]"):
        Calibration("c", "cpu", {"float32": 1e11}, 1e10, 2.0, 2, 2)
    with pytest.raises(ValueError, match=r"^units 2000 is not an int >= 1 \(<= 1024 SMs"):
        Calibration("g", "gpu", {"float16": 1e14}, 1e12, 1e-6, 2, 2000)


# -- item 4: per-stage CLI values as arrays --------------------------------------------

@pytest.mark.parametrize("value", [np.array([4, 4, 2, 1]), torch.tensor([4, 4, 2, 1]),
                                   range(4, 0, -1), np.int64(2), np.array(2)])
def test_network_per_stage_takes_what_the_model_takes(value):
    """The model (``nn.stages.per_stage``) takes 1-d numpy arrays, tensors and ranges;
    predict's own per_stage called them malformed."""
    want = [int(v) for v in np.broadcast_to(np.asarray(list(value) if isinstance(
        value, range) else value), (4,))]
    assert per_stage(value, "granularity", int) == want


def test_model_specs_take_numpy_modes_and_granularities():
    want = model_specs("laud_resnet50", "spatial", "4-4-2-1")
    assert model_specs("laud_resnet50", np.array(["spatial"] * 4),
                       np.array([4, 4, 2, 1])) == want


def test_network_per_stage_refuses_2d_arrays_naming_the_option():
    with pytest.raises(ValueError, match=r"(?s)^--granularity array\(.*\) is a 2-d array"):
        per_stage(np.ones((2, 2), dtype=int), "granularity", int)
    with pytest.raises(ValueError, match=r"^--granularity array\(.*\) has 3 stages"):
        per_stage(np.array([4, 2, 1]), "granularity", int)


# -- item 5: masker_share's lines say what contains what -------------------------------

def _masker_share():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "masker_share.py"
    spec = importlib.util.spec_from_file_location("masker_share_audit", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_masker_share_files_nested_timers_under_their_caller():
    """"maskers" (CompiledBlock._masks) holds the pooling and gates it calls: printed as
    three lines side by side, their sum counted those twice. Calls inside another timed
    call are filed under it; outside one (the layer path pools and gates in its own
    step), at the top."""
    ms = _masker_share()
    totals: dict[str, float] = {}
    clock = iter(range(100))
    real = ms.time.perf_counter
    ms.time.perf_counter = lambda: float(next(clock))
    try:
        gates = ms.timed(totals, "gates", lambda: None)
        pool = ms.timed(totals, "pooling (mean_rows)", lambda: None)
        maskers = ms.timed(totals, "maskers", lambda: (pool(), gates()))
        maskers()  # 0 [1 2] [3 4] 5
        gates()  # 6 7
    finally:
        ms.time.perf_counter = real
    assert totals == {"maskers/pooling (mean_rows)": 1.0, "maskers/gates": 1.0,
                      "maskers": 5.0, "gates": 1.0}
    assert ms.profile_lines(totals, 1) == [
        "  maskers                          5000.00 ms a forward",
        "    of which pooling (mean_rows)   1000.00 ms a forward",
        "    of which gates                 1000.00 ms a forward",
        "  gates                            1000.00 ms a forward"]
    assert math.isclose(sum(totals[k] for k in totals if "/" not in k), 6.0)


# -- the same kinds of defect, found reading predict/ ----------------------------------

def test_validate_takes_samples_as_fit_does():
    """validate read its data through ``samples`` only: Samples raised AttributeError
    ('rate_bucket'), where fit takes them."""
    data = _timings()
    entries = [CacheEntry(s.spec, s.rate, s.variant, "{}", s.seconds, {}) for s in data]
    want = validate(entries, CPU)
    for given in (data, data[:10] + entries[10:]):
        got = validate(given, CPU)
        assert got.mape == pytest.approx(want.mape, rel=1e-9)
        assert len(got.rows) == len(want.rows) == len(data)


@pytest.mark.parametrize("kw,says", [
    (dict(rate=1.5), "Sample.rate 1.5 must be in"), (dict(rate=math.nan), "Sample.rate"),
    (dict(rate="0.5"), "Sample.rate"),
    (dict(spec="x"), "Sample: spec must be a BlockSpec, got str")])
def test_sample_is_checked_as_a_cache_entry_is(kw, says):
    """A Sample at rate 1.5 or NaN was fitted on (a cache refuses to record such a
    rate); a spec that is no BlockSpec failed in fit with AttributeError ('short')."""
    args = dict(spec=SPECS[0], rate=0.5, variant="dense", seconds=1e-3)
    with pytest.raises(ValueError, match=says):
        Sample(**{**args, **kw})
    assert Sample(**{**args, "rate": np.float32(1.0)}).rate == 1.0


@pytest.mark.parametrize("call", [
    lambda hw: fit(_timings(), hw), lambda hw: validate(_timings(), hw),
    lambda hw: predict_block(SPECS[0], 0.5, "dense", hw),
    lambda hw: predict_expected(SPECS[0], 0.5, "dense", hw),
    lambda hw: predict_static_dense(SPECS[0], hw),
    lambda hw: predict_stem_head(224, 1, "float32", hw)])
def test_predictor_functions_name_a_hardware_that_is_not_a_spec(call):
    """A hardware name where a HardwareSpec is due raised AttributeError ('kind',
    'peak_macs'); config_time already said what to give."""
    with pytest.raises(ValueError, match=r"hw must be a HardwareSpec .*got str"):
        call("a100")


def test_hardware_spec_refuses_a_dtype_given_twice():
    """peak (("float32", 1e12), ("float32", 1e9)) passed, and the last one silently won
    (a calibration's peak is a dict: one rate per dtype)."""
    with pytest.raises(ValueError, match="HardwareSpec 'x': peak .* dtypes among"):
        HardwareSpec(**_spec(peak=(("float32", 1e12), ("float32", 1e9))))


@pytest.mark.parametrize("factors,says", [
    ({"*": 0.5}, r"factors\['\*'\] must be a Factors, got float"),
    ({"dense": (0.5, 0.5)}, r"factors\['dense'\] must be a Factors, got tuple"),
    ([Factors()], r"factors must be a dict .*got list"), ("x", r"factors must be .*got str")])
def test_predict_block_names_factors_that_are_not_factors(factors, says):
    """Anything but {name: Factors} raised AttributeError ('overhead', 'get')."""
    with pytest.raises(ValueError, match=says):
        predict_block(SPECS[0], 0.5, "dense", CPU, factors)
    assert predict_block(SPECS[0], 0.5, "dense", CPU, {}) == predict_block(
        SPECS[0], 0.5, "dense", CPU, None)
