"""Audit of the predictor's machine model: calibration files read back (``predict.
calibration``), hardware specs (``predict.hardware``) and the factors' fit (``predict.fit``)
on timings that are not plain positive numbers."""

from __future__ import annotations

import json
import logging
import math

import pytest

from laudtriton.ops.spec import BlockSpec
from laudtriton.predict.calibration import (
    Calibration,
    calibration_path,
    load_calibration,
    read_calibration,
)
from laudtriton.predict.fit import Sample, fit
from laudtriton.predict.hardware import HardwareSpec, get_hardware
from laudtriton.predict.model import Factors, latency_from_terms, predict_block, terms
from laudtriton.tune.keys import device_fingerprint

BIG = 10 ** 400  # an int JSON reads exactly; float() of it overflows


def _file(tmp_path, **fields) -> tuple:
    """A cpu calibration file in tmp_path with ``fields`` replacing good values."""
    data = dict(fingerprint=device_fingerprint("cpu"), kind="cpu", peak={"float32": 1e11},
                bandwidth=1e10, overhead=1e-6, threads=2, units=2, created="")
    data.update(fields)
    path = calibration_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("fields", [dict(bandwidth=BIG), dict(peak={"float32": BIG}),
                                    dict(overhead=BIG), dict(bandwidth=-BIG)])
def test_calibration_with_a_huge_integer_is_corrupt_not_a_crash(tmp_path, caplog, fields):
    """An integer past float's range raised OverflowError from math.isfinite: not the
    ValueError load_calibration and the "cpu" preset ignore a corrupt file on."""
    path = _file(tmp_path, **fields)
    with pytest.raises(ValueError, match=f"{list(fields)[0]} .* is not"):
        read_calibration(path, "cpu", "cpu")
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert load_calibration(tmp_path) is None
        assert get_hardware("cpu", tmp_path).notes.startswith("uncalibrated")
    assert "corrupt" in caplog.text


@pytest.mark.parametrize("field", ["bandwidth", "launch_overhead", "peak"])
def test_hardware_spec_with_a_huge_integer_is_refused(field):
    args = dict(name="x", kind="gpu", compute_units=8, peak=(("float32", 1e12),),
                bandwidth=1e9, launch_overhead=0.0)
    args[field] = (("float32", BIG),) if field == "peak" else BIG
    with pytest.raises(ValueError, match=field):
        HardwareSpec(**args)


def test_gpu_calibration_with_absurd_units_is_corrupt(tmp_path):
    """units are a GPU's SMs and set its tile waves: 1e9 of them predicted a dense block
    at 3915 s (0.5 ms with 132), silently."""
    with pytest.raises(ValueError, match="units 1000000000 is not"):
        Calibration("g", "gpu", {"float16": 4e14}, 3e12, 5e-6, 2, 10 ** 9)
    cal = Calibration("g", "gpu", {"float16": 4e14}, 3e12, 5e-6, 2, 304)  # an MI300X's CUs
    assert cal.to_hardware().compute_units == 304
    # on a CPU units are threads, which the model does not use: any count is kept
    assert Calibration("c", "cpu", {"float32": 1e11}, 1e10, 1e-6, 2, 4096).units == 4096


def _spec() -> BlockSpec:
    return BlockSpec(in_channels=64, width=64, out_channels=256, stride=1, downsample=True,
                     in_hw=(56, 56), mode="spatial", granularity=4, batch=1,
                     dtype="float32")


def _timings() -> list[Sample]:
    hw, spec = get_hardware("rtx3090"), _spec()
    true = Factors(0.3, 0.6, 2e-5)
    return [Sample(spec, r, v, latency_from_terms(terms(spec, r, v, hw), true, hw))
            for v in ("dense", "gather") for r in (0.1, 0.3, 0.5, 0.7, 0.9)]


@pytest.mark.parametrize("seconds", [math.nan, math.inf, 0.0, -1e-3, "1e-3", True])
def test_sample_of_a_time_that_is_no_duration_is_refused(seconds):
    """One such Sample among good ones fitted every factor at the edge of its search box
    (eff_c 1000: 1000x the peak) and dropped the per-variant factors, silently."""
    spec = _spec()
    with pytest.raises(ValueError, match="seconds"):
        Sample(spec, 0.5, "dense", seconds)


def test_fit_on_good_samples_stays_near_the_defaults():
    hw = get_hardware("rtx3090")
    data = _timings()
    fac = fit(data, hw)
    assert set(fac) >= {"*", "dense", "gather"}
    for s in data:
        assert predict_block(s.spec, s.rate, s.variant, hw, fac) == pytest.approx(
            s.seconds, rel=0.05)
