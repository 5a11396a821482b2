"""What the latency predictor reads from outside: calibration files (corrupt ones are
reported once, naming the file, and ignored), the cache directory ``sweep --prune-top``
takes its predictor from, and the options ``predict --validate`` refuses."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

import laudtriton.ops  # noqa: F401  (registers every variant)
from laudtriton.cli import main
from laudtriton.ops.spec import BlockSpec
from laudtriton.predict.calibration import (
    Calibration,
    calibration_path,
    fitted_predictor,
    load_calibration,
    save_calibration,
)
from laudtriton.predict.fit import fit
from laudtriton.predict.hardware import CPU_DEFAULT, get_hardware
from laudtriton.testing import assert_close
from laudtriton.tune.cache import TuneCache
from laudtriton.tune.keys import device_fingerprint

SPEC = BlockSpec(64, 16, 64, 1, False, (14, 14), "spatial", 2, 0, 1)


def _good() -> dict:
    """A valid calibration of this process's CPU (as ``laudtriton calibrate`` writes)."""
    return {"fingerprint": device_fingerprint("cpu"), "kind": "cpu",
            "peak": {"float32": 1.1e11}, "bandwidth": 4e10, "overhead": 2.5e-6,
            "threads": torch.get_num_threads(), "units": 2, "created": "2026-12-01T21:07:33"}


def _record_timings(cache_dir) -> TuneCache:
    cache = TuneCache(cache_dir, device="cpu")
    for b in (0.25, 0.5, 0.75):
        cache.record(SPEC, b, {"dense": {"{}": 2e-3}, "gather": {"{}": 5e-4 + b * 2e-3}})
    return cache


# JSON texts of calibration files that must be refused: (text, what the warning says).
CORRUPT = [
    ('"peak": []', "peak []"),
    ('"peak": {}', "peak {}"),
    ('"peak": {"float32": NaN}', "peak {'float32': nan}"),
    ('"peak": {"float32": Infinity}', "peak {'float32': inf}"),
    ('"peak": {"float32": -1e11}', "peak {'float32': -1"),
    ('"peak": {"float32": "1e11"}', "peak {'float32': '1e11'}"),
    ('"peak": {"float64": 1e11}', "peak {'float64'"),
    ('"bandwidth": "fast"', "bandwidth 'fast'"),
    ('"bandwidth": -1', "bandwidth -1"),
    ('"bandwidth": 0', "bandwidth 0"),
    ('"bandwidth": null', "bandwidth None"),
    ('"overhead": NaN', "overhead nan"),
    ('"overhead": -2e-6', "overhead -2e-06"),
    ('"threads": true', "threads True"),
    ('"units": 0', "units 0"),
    ('"units": 2.5', "units 2.5"),
    ('"kind": "tpu"', "kind 'tpu'"),
    ('"kind": "gpu"', "kind 'gpu' is not this device's ('cpu')"),  # made "cpu" a "cuda"
    ('"fingerprint": 7', "fingerprint 7"),
    ('"created": 20261201', "created 20261201"),
]


def _write(cache_dir, field_json: str | None = None, drop: str | None = None,
           text: str | None = None):
    """Write a calibration file in ``cache_dir``: the good one with ``field_json`` (one
    '"key": value' JSON pair) replacing its field, or without ``drop``, or ``text``."""
    path = calibration_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if text is None:
        data = _good()
        data.pop(drop, None)
        body = json.dumps(data)
        if field_json is not None:
            key = field_json.split(":")[0].strip().strip('"')
            data.pop(key)
            body = json.dumps(data)[:-1] + ", " + field_json + "}"
        text = body
    path.write_text(text)
    return path


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("field_json, says", CORRUPT)
def test_corrupt_calibration_is_one_warning_naming_the_file(tmp_path, caplog, field_json,
                                                             says):
    """load_calibration (compile and plot read it) and the "cpu" hardware: one warning line
    naming the file and the bad field, then the machine is treated as uncalibrated."""
    path = _write(tmp_path, field_json)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert load_calibration(tmp_path) is None
    [msg] = _warnings(caplog)
    assert str(path) in msg and says in msg and "\n" not in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert get_hardware("cpu", tmp_path) == CPU_DEFAULT
    [msg] = _warnings(caplog)
    assert str(path) in msg and says in msg and "CPU default" in msg and "\n" not in msg


@pytest.mark.parametrize("text, says", [
    ("{not json", "unreadable"), ("[1, 2]", "a JSON list, not an object"),
    ('"calibration"', "a JSON str, not an object"), (b"\xff\xfe{}", "unreadable"),
])
def test_calibration_file_that_is_no_calibration_is_one_warning(tmp_path, caplog, text,
                                                                says):
    path = _write(tmp_path, text="")
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert load_calibration(tmp_path) is None
    [msg] = _warnings(caplog)
    assert str(path) in msg and says in msg and "\n" not in msg


def test_calibration_without_a_required_field_names_it(tmp_path, caplog):
    path = _write(tmp_path, drop="bandwidth")
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert load_calibration(tmp_path) is None
    [msg] = _warnings(caplog)
    assert str(path) in msg and "no bandwidth" in msg


def test_calibration_without_an_optional_field_is_read(tmp_path, caplog):
    """``created`` has a default: a file without it is a calibration (it was refused)."""
    _write(tmp_path, drop="created")
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        cal = load_calibration(tmp_path)
        hw = get_hardware("cpu", tmp_path)
    assert cal is not None and cal.created == "" and not _warnings(caplog)
    assert (hw.peak_macs("float32"), hw.bandwidth, hw.launch_overhead) == (1.1e11, 4e10, 2.5e-6)


@pytest.mark.parametrize("change", [
    {"peak": []}, {"peak": {"float32": math.nan}}, {"bandwidth": "fast"},
    {"bandwidth": -1.0}, {"overhead": math.inf}, {"units": 0}, {"kind": "tpu"},
])
def test_calibration_refuses_bad_values_when_built(change):
    """A Calibration is checked when built, so ``to_hardware`` never meets a bad value
    (it raised AttributeError on a list peak, and passed NaN on)."""
    name = next(iter(change))
    with pytest.raises(ValueError, match=f"^{name} "):
        Calibration(**{**_good(), **change})


@pytest.mark.parametrize("field_json", ['"peak": []', '"bandwidth": "fast"',
                                        '"peak": {"float32": NaN}'])
def test_corrupt_calibration_is_ignored_by_the_cached_predictor(tmp_path, caplog,
                                                               field_json):
    """compile(tune="cached") and plot fit the predictor with ``fitted_predictor``: a
    corrupt calibration beside cached timings is reported once and no predictor is used
    (it crashed with AttributeError / TypeError, or predicted nan)."""
    cache = _record_timings(tmp_path)
    path = _write(tmp_path, field_json)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert fitted_predictor(cache, "cpu") is None
    [msg] = _warnings(caplog)
    assert str(path) in msg


def test_compile_cached_with_a_corrupt_calibration(tmp_path, caplog):
    """The reviewer's t_compile_badcal.py: it crashed with AttributeError."""
    import laudtriton
    from laudtriton.nn.block import LaudBottleneck

    blk = LaudBottleneck(64, 16, dyn_mode="spatial", granularity=2, feature_size=14).eval()
    x = torch.randn(1, 64, 14, 14)
    _record_timings(tmp_path)
    path = _write(tmp_path, '"peak": []')
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        cm = laudtriton.compile(blk, x, backend="cpu", tune="cached", cache_dir=tmp_path)
    assert [m for m in _warnings(caplog) if "calibration" in m] == [
        f"calibration file {path} is corrupt (peak [] is not a non-empty {{dtype: "
        "multiply-adds/s in (1e+06, 1e+17]} (dtypes: float32, float16, bfloat16)); ignoring it "
        "(`laudtriton calibrate` rewrites it)"]
    with torch.no_grad():
        assert_close(cm(x), blk(x))


@pytest.mark.parametrize("field_json", ['"peak": []', '"peak": {}', '"bandwidth": "fast"',
                                        '"bandwidth": -1', '"peak": {"float32": NaN}'])
def test_cli_predict_with_a_corrupt_calibration(tmp_path, capsys, caplog, field_json):
    """The reviewer's files: each gives one warning naming the file, then the table on
    the CPU default (no traceback, no error, no nan)."""
    path = _write(tmp_path, field_json)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        rc = main(["predict", "--model", "laud_resnet50", "--mode", "layer", "--rates", "0.5",
                   "--cache-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "nan" not in out.out and CPU_DEFAULT.describe() in out.out
    [msg] = _warnings(caplog)
    assert str(path) in msg


# -- sweep --prune-top: the predictor of its --cache-dir ----------------------------------

def test_make_prune_reads_calibration_and_fits_factors_in_cache_dir(tmp_path, monkeypatch,
                                                                    caplog):
    """make_prune("cpu", cache_dir=D) predicts as `predict --cache-dir D`: the
    calibration in D and factors fitted on D's timings, not the default directory's."""
    import laudtriton.predict.prune as prune_mod
    from laudtriton.ops.registry import get_variant
    from laudtriton.predict.calibration import predictor_for

    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path / "empty"))
    save_calibration(Calibration(**_good()), tmp_path / "c")
    cache = _record_timings(tmp_path / "c")
    seen = []
    real = prune_mod.config_time

    def spy(spec, rate, variant, config, hw, factors=None):
        seen.append((hw, factors))
        return real(spec, rate, variant, config, hw, factors)

    monkeypatch.setattr(prune_mod, "config_time", spy)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        hook = prune_mod.make_prune("cpu", 1, cache_dir=tmp_path / "c")
    assert not _warnings(caplog)  # no "no calibration of this machine found"
    cfgs = [{"block_m": 16, "block_n": 64}, {"block_m": 64, "block_n": 64}]
    assert len(hook(SPEC, 0.5, get_variant("gather"), cfgs)) == 1
    hw = Calibration(**_good()).to_hardware()
    assert seen and all(s == (hw, fit(cache.entries(), hw)) for s in seen)
    assert predictor_for("cpu", tmp_path / "c")[1] == seen[0][1]  # predict's own
    seen.clear()
    prune_mod.make_prune("cpu", 1, {}, cache_dir=tmp_path / "c")(SPEC, 0.5,
                                                                 get_variant("gather"), cfgs)
    assert all(s == (hw, {}) for s in seen)  # {}: the defaults, as `predict --no-fit`


def test_cli_sweep_prune_top_reads_the_calibration_of_its_cache_dir(tmp_path, monkeypatch,
                                                                     caplog, capsys):
    """The reviewer's repro: the calibration is in --cache-dir, $LAUDTRITON_CACHE_DIR
    holds none; the sweep warned "no calibration of this machine found"."""
    import laudtriton.tune.sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "MAX_REPS", 2)
    monkeypatch.setattr(sweep_mod, "MIN_REPS", 1)
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path / "empty"))
    save_calibration(Calibration(**_good()), tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        rc = main(["sweep", "--cache-dir", str(tmp_path / "c"), "--prune-top", "1",
                   "--mode", "layer", "--rates", "1.0", "--blocks", "layer4.2",
                   "--input-size", "64", "--no-progress", "--csv", str(tmp_path / "p.csv")])
    assert rc == 0, capsys.readouterr().err
    assert not [m for m in _warnings(caplog) if "calibration" in m]


# -- predict --validate takes only what it reads ------------------------------------------

@pytest.mark.parametrize("extra, named", [
    (["--model", "bogus"], "--model"), (["--model", "laud_resnet101"], "--model"),
    (["--mode", "layer"], "--mode"), (["--rates", "0.5"], "--rates"),
    (["--variants", "gather"], "--variants"), (["--variants", ","], "--variants"),
    (["--granularity", "2"], "--granularity"), (["--batch", "8"], "--batch"),
    (["--dtype", "float16"], "--dtype"), (["--input-size", "160"], "--input-size"),
    (["--channel-granularity", "2"], "--channel-granularity"), (["--no-fit"], "--no-fit"),
    (["--model", "laud_resnet50", "--rates", "0.5"], "--model, --rates"),
])
def test_cli_validate_refuses_the_table_options(tmp_path, capsys, extra, named):
    """--validate reads every cached timing of --hardware; an option of the table is
    refused, not ignored (``--model bogus`` was accepted)."""
    _record_timings(tmp_path)
    rc = main(["predict", "--validate", "--hardware", "cpu", "--cache-dir", str(tmp_path),
               *extra])
    out = capsys.readouterr()
    assert (rc, out.out) == (2, "")
    assert out.err == (f"laudtriton predict: error: {named}: not used by --validate, which "
                       "validates on every cached timing of --hardware; give only "
                       "--hardware, --cache-dir, --include-stale\n")


def test_cli_include_stale_needs_validate(tmp_path, capsys):
    rc = main(["predict", "--include-stale", "--hardware", "v100", "--cache-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert (rc, out.out) == (2, "")
    assert out.err == "laudtriton predict: error: --include-stale is used only with --validate\n"


def test_cli_predict_help_says_what_validate_takes(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "takes only --hardware, --cache-dir and --include-stale" in text


def test_cli_validate_with_the_cache_disabled_says_so(capsys, monkeypatch):
    """With LAUDTRITON_CACHE=0 nothing is read: the error said the cache file held no
    current timings and pointed at --include-stale."""
    monkeypatch.setenv("LAUDTRITON_CACHE", "0")
    assert main(["predict", "--validate"]) == 2
    err = capsys.readouterr().err
    assert err == ("laudtriton predict: error: --validate reads the autotune cache, which "
                   "LAUDTRITON_CACHE=0 disables\n")


# -- arguments of the predictor's Python API ---------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(eff_c=math.nan), "Factors.eff_c must be a finite number > 0, got nan"),
    (dict(eff_c=0.0, eff_m=0.0), "Factors.eff_c must be a finite number > 0, got 0.0"),
    (dict(eff_m=-0.5), "Factors.eff_m must be a finite number > 0"),
    (dict(eff_c="a"), "Factors.eff_c must be a finite number > 0, got 'a'"),
    (dict(overhead=-1e-6), "Factors.overhead must be >= 0"),
    (dict(overhead=math.inf), "Factors.overhead must be a finite number, got inf"),
    (dict(n=True), "Factors.n must be an int >= 0, got True"),
    (dict(n=-1), "Factors.n must be an int >= 0, got -1"),
])
def test_factors_refuse_values_no_fit_gives(kw, match):
    """A NaN eff_c predicted 0 s; zero ones raised ZeroDivisionError."""
    from laudtriton.predict.model import Factors

    with pytest.raises(ValueError, match=match):
        Factors(**kw)


@pytest.mark.parametrize("rate, match", [
    (1.1, r"rate 1.1 must be in \[0, 1\]"), (-0.1, r"rate -0.1 must be in \[0, 1\]"),
    (math.nan, "rate must be a finite number, got nan"),
    (True, "rate must be a finite number, got True")])
def test_predictor_functions_refuse_a_rate_outside_0_1(rate, match):
    """flops_ratio(spec, 1.1) gave 1.045 and config_time timed it; True counted as 1."""
    from laudtriton.predict import config_time, flops_ratio, predict_block, predict_expected

    hw = get_hardware("a100")
    for call in (lambda: flops_ratio(SPEC, rate),
                 lambda: predict_block(SPEC, rate, "dense", hw),
                 lambda: predict_expected(SPEC, rate, "dense", hw),
                 lambda: config_time(SPEC, rate, "dense", {}, hw)):
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("kw, match", [
    (dict(granularity=2.9), "--granularity 2.9 is malformed"),
    (dict(granularity=True), "--granularity True is malformed"),
    (dict(mode="channel", channel_granularity=2.7), "--channel-granularity 2.7 is malformed"),
    (dict(input_size=64.5), "input size 64.5 must be an int >= 32"),
    (dict(input_size=math.nan), "input size nan must be an int >= 32"),
    (dict(batch=True), "batch True must be an int >= 1"),
    (dict(granularity=math.inf), "--granularity inf is malformed"),
    (dict(granularity="4-4-2"), "--granularity '4-4-2' has 3 stages; LAUD-ResNet has 4"),
    (dict(mode=["spatial", "channel"]), "--mode .* has 2 stages; LAUD-ResNet has 4"),
])
def test_model_specs_refuses_what_the_model_refuses(kw, match):
    """A granularity of 2.9 was S=2 and True S=1 (the model refuses both); 64.5 was
    reported as BlockSpec.in_hw (16.0, 16.0)."""
    from laudtriton.predict import model_specs

    with pytest.raises(ValueError, match=match):
        model_specs("laud_resnet50", **{"input_size": 64, **kw})


def test_model_specs_takes_numpy_ints():
    """np.int64(2) was refused as a BlockSpec.batch."""
    import numpy as np

    from laudtriton.predict import model_specs

    specs = model_specs("laud_resnet50", "spatial", "2-2-2-1", np.int64(2), np.int64(64))
    assert specs == model_specs("laud_resnet50", "spatial", "2-2-2-1", 2, 64)


def test_fit_and_prune_refuse_counts_below_one():
    """fit(min_samples=0) fitted factors near 1000 on no timing; top_k=True kept 1."""
    from laudtriton.predict import make_prune

    with pytest.raises(ValueError, match="min_samples must be a positive int, got 0"):
        fit([], get_hardware("a100"), min_samples=0)
    import numpy as np

    assert fit([], get_hardware("a100"), min_samples=np.int64(4)) == {}
    with pytest.raises(ValueError, match="top_k must be a positive int, got True"):
        make_prune("a100", top_k=True)


@pytest.mark.parametrize("change", [dict(bandwidth=True), dict(launch_overhead=True),
                                    dict(peak=(("float32", True),)),
                                    dict(peak={"float32": 1e12}),
                                    dict(peak=(("float32", 1e12, 3),))])
def test_hardware_spec_refuses_bools_and_a_peak_of_another_form(change):
    """bandwidth=True was 1 B/s; a dict peak raised "too many values to unpack"."""
    import dataclasses

    with pytest.raises(ValueError, match="HardwareSpec 'a100': "):
        dataclasses.replace(get_hardware("a100"), **change)


def test_hardware_spec_keeps_a_peak_given_as_lists_as_tuples():
    """The spec is a key of the model's caches: a list peak made it unhashable."""
    import dataclasses

    hw = dataclasses.replace(get_hardware("a100"), peak=[["float32", 1e12]])
    assert hw.peak == (("float32", 1e12),)
    from laudtriton.predict import predict_block

    assert predict_block(SPEC, 0.5, "dense", hw) > 0


@pytest.mark.parametrize("device", ["gpu", None, "tpu"])
def test_cache_and_calibration_name_a_device_they_cannot_take(tmp_path, device):
    """Before: torch's "Expected one of cpu, cuda, ..." or a TypeError."""
    with pytest.raises(ValueError, match=f"device {device!r} is not supported; accepted"):
        TuneCache(tmp_path, device=device)
    with pytest.raises(ValueError, match=f"device {device!r} is not supported; accepted"):
        load_calibration(tmp_path, device=device)


@pytest.mark.parametrize("device", ["gpu", "tpu", None])
def test_calibrate_names_a_device_torch_does_not_know(device):
    """calibrate's docstring promises a ValueError; "gpu" raised torch's RuntimeError
    ("Expected one of cpu, cuda, ...") and None a TypeError, before anything was measured."""
    from laudtriton.predict.calibration import calibrate

    with pytest.raises(ValueError, match=f"device {device!r} unknown; accepted: 'cpu'"):
        calibrate(device, quick=True)


@pytest.mark.parametrize("cache_dir", [5, b"/tmp"])
def test_cache_dir_that_is_no_path_is_named(cache_dir):
    """An int gave a TypeError "expected str, bytes or os.PathLike"; bytes failed in
    startswith."""
    with pytest.raises(ValueError, match="cache_dir must be a directory path"):
        TuneCache(cache_dir)
    with pytest.raises(ValueError, match="cache_dir must be a directory path"):
        get_hardware("cpu", cache_dir=cache_dir)


def test_cache_record_refuses_what_it_could_never_read(tmp_path, caplog):
    """An unregistered variant's timings were written under no source hash, where no
    reader takes them: they are left out, said once, and the others recorded; a spec of
    None raised AttributeError."""
    cache = TuneCache(tmp_path, enabled=True)
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        for _ in range(2):
            cache.record(SPEC, 0.5, {"nosuch": {"{}": 1e-3}, "dense": {"{}": 2e-3}})
    said = [r.getMessage() for r in caplog.records if "nosuch" in r.getMessage()]
    assert said == ["variant 'nosuch' is not registered here; its timings are not cached"]
    assert TuneCache(tmp_path).lookup(SPEC, 0.5) == {"dense": {"{}": 2e-3}}
    for call, who in ((lambda: cache.record(None, 0.5, {"dense": {"{}": 1e-3}}), "record"),
                      (lambda: cache.lookup(None, 0.5), "lookup"),
                      (lambda: cache.annotate(None, 0.5, {}), "annotate")):
        with pytest.raises(ValueError, match=f"{who}: spec must be a BlockSpec, got NoneType"):
            call()


def test_predictor_takes_rates_and_factors_given_as_numpy_or_torch_scalars():
    """A 0-d numpy rate was refused by check_rate; a 0-d tensor factor made every
    predicted time a tensor."""
    import numpy as np

    from laudtriton.predict import flops_ratio, predict_block
    from laudtriton.predict.model import Factors

    assert flops_ratio(SPEC, np.array(0.5)) == flops_ratio(SPEC, 0.5)
    f = Factors(torch.tensor(0.5), np.float32(0.7), torch.tensor(1e-6))
    assert all(type(v) is float for v in (f.eff_c, f.eff_m, f.overhead))
    t = predict_block(SPEC, 0.5, "dense", get_hardware("a100"), {"*": f})
    assert type(t) is float and t > 0


def test_calibration_floor_is_exclusive_and_a_zero_overhead_is_kept():
    """The floor is exclusive, as the error says ("(1e+06, ..."): a peak or bandwidth of
    exactly FLOOR is refused. A dispatch overhead of 0 s is a measurement ("[0, ..."):
    it is accepted and reaches the hardware the calibration becomes."""
    from laudtriton.predict.calibration import FLOOR

    for change in ({"peak": {"float32": FLOOR}}, {"bandwidth": FLOOR}):
        name = next(iter(change))
        with pytest.raises(ValueError, match=rf"^{name} .* in \(1e\+06, 1e\+17\]"):
            Calibration(**{**_good(), **change})
    cal = Calibration(**{**_good(), "peak": {"float32": 2 * FLOOR}, "bandwidth": 2 * FLOOR,
                         "overhead": 0.0})
    hw = cal.to_hardware()
    assert (hw.peak_macs("float32"), hw.bandwidth, hw.launch_overhead) == (
        2 * FLOOR, 2 * FLOOR, 0.0)


def test_calibration_hardware_counts_its_units_not_its_threads():
    """A calibration's units (SMs on a GPU, threads on a CPU) become the hardware's
    compute units; the torch thread count is recorded apart (on a GPU they differ)."""
    hw = Calibration(**{**_good(), "kind": "gpu", "threads": 4, "units": 132}).to_hardware()
    assert (hw.name, hw.kind, hw.compute_units) == ("cuda", "gpu", 132)


def test_the_cached_predictor_fits_on_current_timings_only(tmp_path):
    """``fitted_predictor`` (compile's tune="cached", plot) fits on the timings of the
    current versions only: with nothing but another torch version's timings cached
    there is no predictor, and with current ones beside them the fit is the fit of the
    current ones alone."""
    from laudtriton.tune import cache as cache_mod

    old = dict(cache_mod.current_versions(), torch="1.0.0")
    stale = TuneCache(tmp_path, device="cpu", versions=old)
    for b in (0.25, 0.5, 0.75):
        stale.record(SPEC, b, {"dense": {"{}": 9e-3}, "gather": {"{}": 9e-3}})
    _write(tmp_path)
    cache = TuneCache(tmp_path, device="cpu")
    assert cache.entries() == [] and cache.entries(include_stale=True)
    assert fitted_predictor(cache, "cpu") is None
    cache = _record_timings(tmp_path)
    hw, factors = fitted_predictor(cache, "cpu")
    want = fit(cache.entries(), hw)
    assert factors.keys() == want.keys() and all(factors[k] == want[k] for k in want)


def test_a_calibrated_gpu_is_measured_here_and_a_preset_is_not():
    """The hardware of a GPU calibration ("cuda") reads its calibration and timings, as
    "cpu" does: ``predict --validate`` and fitted factors take it; a preset does not."""
    from laudtriton.predict.calibration import measured_here

    gpu = Calibration(**{**_good(), "kind": "gpu", "units": 132}).to_hardware()
    assert gpu.name == "cuda" and measured_here(gpu)
    assert measured_here(Calibration(**_good()).to_hardware())
    assert not measured_here(get_hardware("h100"))


@pytest.mark.parametrize("change", [dict(compute_units=0), dict(peak=(("float32", 0.0),)),
                                    dict(peak=(("float32", 1e12), ("float16", 0.0)))])
def test_hardware_spec_refuses_no_units_and_a_zero_peak(change):
    """Compute units must be an int >= 1 and every peak rate > 0: a machine of no units,
    or a dtype at 0 multiply-adds/s (a time of work / 0), is refused when built."""
    import dataclasses

    with pytest.raises(ValueError, match="HardwareSpec 'a100': "):
        dataclasses.replace(get_hardware("a100"), **change)


def test_hardware_description_gives_the_bandwidth_in_gb_per_s():
    """The ``predict`` and ``design`` header line gives the bandwidth in GB/s (1e9 B/s)
    and the launch overhead in us: the V100 preset's 900 GB/s and 5 us."""
    line = get_hardware("v100").describe()
    assert line.startswith("v100 (gpu, 80 units): ")
    assert line.endswith("; 900 GB/s; launch 5 us")


def test_cpu_hardware_warns_only_when_asked(tmp_path, caplog):
    """With no calibration in the cache directory, cpu_hardware falls back on CPU_DEFAULT
    with one warning; warn=False falls back in silence."""
    from laudtriton.predict.hardware import cpu_hardware

    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert cpu_hardware(tmp_path, warn=False) is CPU_DEFAULT
    assert _warnings(caplog) == []
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        assert cpu_hardware(tmp_path) is CPU_DEFAULT
    (said,) = _warnings(caplog)
    assert said.startswith("no calibration of this machine found; using the conservative")


def test_hardware_spec_refuses_an_unknown_kind_and_peak_an_unknown_dtype():
    import dataclasses

    with pytest.raises(ValueError, match=r"^HardwareSpec kind 'tpu' unknown; accepted: "):
        dataclasses.replace(CPU_DEFAULT, kind="tpu")
    f32_only = dataclasses.replace(CPU_DEFAULT, peak=(("float32", 3e10),))
    assert f32_only.peak_macs("bfloat16") == 3e10  # no entry of its own: float32's rate
    with pytest.raises(ValueError, match=r"^dtype 'float64' unknown; accepted: float32, "):
        CPU_DEFAULT.peak_macs("float64")


@pytest.mark.parametrize("mode", ["dense", "spatial-channel-layer-dense"])
def test_model_specs_names_an_unknown_mode(mode):
    from laudtriton.predict import model_specs

    with pytest.raises(ValueError, match=rf"^--mode {mode!r}: 'dense' unknown; accepted: "
                                         r"spatial, channel, layer, both$"):
        model_specs("laud_resnet50", mode=mode, input_size=64)


@pytest.mark.parametrize("error", [ZeroDivisionError("no width"), KeyError("S")])
def test_a_cost_that_fails_is_a_missing_latency_model(error):
    """A variant whose Cost cannot handle a spec (an error of any kind from its model) is
    named with the spec and rate; a MemoryError is not disguised."""
    import dataclasses

    from laudtriton.ops.registry import get_variant
    from laudtriton.predict.model import terms

    def cost(spec, rate):
        raise error

    def out_of_memory(spec, rate):
        raise MemoryError

    broken = dataclasses.replace(get_variant("gather"), name="broken", cost=cost)
    with pytest.raises(ValueError, match=rf"^variant 'broken' has no latency model for "
                                         rf".* at rate 0\.25: {error}"):
        terms(SPEC, 0.25, broken, CPU_DEFAULT)
    with pytest.raises(MemoryError):
        terms(SPEC, 0.25, dataclasses.replace(broken, cost=out_of_memory), CPU_DEFAULT)

