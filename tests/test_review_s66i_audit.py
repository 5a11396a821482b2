"""Review of the latency predictor (session 66, helper i): ``fit.Sample``'s variant,
``rate_for_flops_ratio``'s errors from Python, and what ``--threads 0`` says it does."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from laudtriton.cli import build_parser
from laudtriton.ops.registry import get_variant
from laudtriton.ops.spec import BlockSpec
from laudtriton.predict.fit import Sample, fit, samples
from laudtriton.predict.hardware import CPU_DEFAULT
from laudtriton.predict.model import predict_block, predict_expected, predict_timings
from laudtriton.predict.network import model_specs, rate_for_flops_ratio

SPEC = sorted({s for _, s in model_specs("laud_resnet50", "spatial", "4-4-2-1", 1)},
              key=BlockSpec.key)[0]


# -- item 1: Sample's variant ------------------------------------------------------------

@pytest.mark.parametrize("variant, said", [
    ("nosuch", "'nosuch': variant 'nosuch' has no latency model"),  # nothing registers it
    (None, r"must be a variant's name \(a str\), got NoneType None"),
    # a Variant, not its name: fitted under the Variant as the factors' key
    (get_variant("dense"), r"must be a variant's name \(a str\), got Variant$"),
    ("channel_gemm", "'channel_gemm' does not run .* not 'spatial'"),  # no spatial block
    ("patch", r"'patch' does not run .* \(its supports\(\) refuses"),  # S=1: no patch
])
def test_sample_refuses_a_variant_that_is_no_registered_name_running_its_block(variant,
                                                                              said):
    """``Sample`` checked spec, rate and seconds but not variant: an unknown name, None,
    a Variant object or a variant that does not run the block (``channel_gemm`` on a
    spatial block: ``samples`` skips such cache entries) was accepted, and ``fit``
    then fitted on it (a Variant became a dict key of the factors) or failed later
    without naming the sample."""
    with pytest.raises(ValueError, match=f"Sample.variant {said}"):
        Sample(SPEC.with_(granularity=1) if variant == "patch" else SPEC, 0.5, variant,
               1e-3)


def test_sample_takes_a_registered_variant_name_that_runs_its_block():
    """The check refuses only what it must: dense and gather on a spatial block pass,
    and fit takes them."""
    data = [Sample(SPEC, r, v, 1e-3 * (1 + r)) for r in (0.25, 0.5, 1.0)
            for v in ("dense", "gather")]
    assert {s.variant for s in data} == {"dense", "gather"}
    assert "*" in fit(data, CPU_DEFAULT, min_samples=2)


def test_samples_still_skips_a_cached_variant_no_longer_registered(caplog):
    """A cache written before a variant was renamed names a variant not registered here:
    ``samples`` must keep skipping it with a warning (the Sample check must not turn an
    old cache into a crash), and keep the entries of registered variants."""
    entries = [SimpleNamespace(spec=SPEC, rate_bucket=0.5, variant=v, seconds=1e-3, meta={})
               for v in ("old_name", "dense")]
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        got = samples(entries)
    assert [s.variant for s in got] == ["dense"]
    assert any("old_name" in r.getMessage() for r in caplog.records)


# -- item 2: rate_for_flops_ratio's errors name its argument --------------------------

@pytest.mark.parametrize("target", [0.0, 1.5, float("nan"), "0.5", True, None])
def test_rate_for_flops_ratio_names_its_own_argument(target):
    """Called from Python, a bad target raised '--target-rate 0.0 must be in (0, 1]' or
    '--target-rate must be a finite number': a CLI option the caller never gave. The
    error now starts with the argument, ``target``."""
    with pytest.raises(ValueError) as e:
        rate_for_flops_ratio(SPEC, target)
    assert str(e.value).startswith(f"target {target!r} must be")
    assert "(0, 1]" in str(e.value)


def test_design_target_rate_still_names_the_option(capsys):
    """``laudtriton design --target-rate 1.5`` keeps naming ``--target-rate``."""
    from laudtriton.cli import main

    assert main(["design", "--model", "laud_resnet50", "--hardware", "v100",
                 "--target-rate", "1.5"]) == 2
    assert "--target-rate 1.5 must be in (0, 1]" in capsys.readouterr().err


# -- item 3: what --threads 0 does ------------------------------------------------------

def _option_help(command: list[str], flag: str) -> str:
    """The help text of ``flag`` of the subcommand ``command`` (e.g. ["cache", "ls"])."""
    parser = build_parser()
    for word in command:
        sub = next(a for a in parser._actions if a.dest in ("command", "cmd", "cache_cmd")
                   or a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[word]
    return next(a.help for a in parser._actions if flag in a.option_strings)


def test_bench_threads_help_says_what_0_does():
    """``bench --threads`` said "0 (torch's default)", but 0 leaves the count this
    process has (``torch_threads``): a script calling ``main`` after
    ``torch.set_num_threads(1)`` benched at 1 thread, not torch's default; only a fresh
    process (the CLI, each child of --processes) starts at torch's default."""
    text = " ".join(_option_help(["bench"], "--threads").split())
    assert "0 (torch's default)" not in text
    assert "this process" in text and "--processes" in text


def test_bench_threads_range_error_says_what_0_does(capsys):
    """The range error of ``bench --threads`` said "(0: torch's default; ...)" after the
    help had been corrected to say 0 keeps this process's count."""
    from laudtriton.cli import main

    assert main(["bench", "--threads", "100000"]) == 2
    err = capsys.readouterr().err
    assert "--threads must be in [0, " in err and "0: keep this process's count" in err
    assert "torch's default" not in err


def test_cache_threads_help_says_what_0_does():
    """``cache ls --threads`` already said the truth (0: this process's count); kept."""
    assert "this process's count" in " ".join(_option_help(["cache", "ls"],
                                                           "--threads").split())


def test_bench_api_docstring_says_how_to_set_threads():
    """``bench.bench`` has no threads argument (``threads=0`` is a TypeError) and its
    docstring said nothing of threads: it runs at the count torch has (each row records
    it), which ``torch.set_num_threads`` sets before the call."""
    from laudtriton.bench import bench

    doc = " ".join(bench.__doc__.split())
    assert "torch.set_num_threads" in doc and "no threads argument" in doc


# -- review: predict's note on too few timings -----------------------------------------

def test_predictor_note_does_not_say_no_timings_when_there_are_too_few(tmp_path,
                                                                        monkeypatch):
    """With 2 timings in the cache (fewer than the 4 a fit needs) ``predict`` and
    ``design`` said "default factors (...) (no cached timings to fit on)": the user saw
    the cache as empty, and the timings as lost. The note now counts them ("1 cache
    entry" for one)."""
    from laudtriton.predict.calibration import predictor_for
    from laudtriton.tune.cache import TuneCache

    monkeypatch.delenv("LAUDTRITON_CACHE", raising=False)
    cache = TuneCache(str(tmp_path), enabled=True)
    specs = [s for _, s in model_specs("laud_resnet50")][:2]
    for i, (spec, says) in enumerate(zip(specs, ("1 cache entry,", "2 cache entries,"))):
        cache.record(spec, 0.5, {"dense": {"{}": 1e-3 * (i + 1)}})
        _, factors, note = predictor_for("cpu", str(tmp_path))  # (uncalibrated: it warns)
        assert factors is None
        assert "no cached timings" not in note
        assert says in note and "too few" in note


# -- review: a prediction of a run that cannot happen ---------------------------------

@pytest.mark.parametrize("call", [
    lambda: predict_block(SPEC, 0.5, "channel_gemm", CPU_DEFAULT),
    lambda: predict_expected(SPEC, 0.5, "compact", CPU_DEFAULT),
    lambda: predict_timings(SPEC.with_(mode="channel", granularity=1, channel_groups=64),
                            0.5, ["dense", "gather"], CPU_DEFAULT),
], ids=["channel_gemm-on-spatial", "compact-on-spatial", "gather-on-channel"])
def test_predicting_a_variant_on_a_block_it_does_not_run_is_a_valueerror(call):
    """``predict_block`` (and ``predict_expected``, ``predict_timings``) priced any
    registered variant on a block of any mode: ``channel_gemm`` or ``compact`` on a
    spatial block, ``gather`` on a channel one, each a number for a run that cannot
    happen, where ``fit``'s ``samples`` and ``variants_for`` refuse the pair. (A
    variant of the block's mode that its ``supports`` refuses, ``patch`` at S = 1, is
    still priced: tests/test_predict_math_audit.py checks its envelope.)"""
    with pytest.raises(ValueError, match="does not run"):
        call()
