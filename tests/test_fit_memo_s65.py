"""``predict.fit.fit`` remembers its result for the same timings, machine and
``min_samples`` (a compile with ``tune="cached"`` fitted the whole cache again each time),
without letting one caller's changes or another input reach a later call."""

from __future__ import annotations

import dataclasses
import importlib
import logging

import pytest

from laudtriton.ops.spec import BlockSpec
from laudtriton.predict import model
from laudtriton.predict.fit import Sample, fit
from laudtriton.predict.hardware import CPU_DEFAULT
from laudtriton.predict.model import Factors, latency_from_terms, terms
from laudtriton.predict.network import model_specs

fit_module = importlib.import_module("laudtriton.predict.fit")  # (predict.fit: the function)
SPECS = sorted({s for _, s in model_specs("laud_resnet50", "spatial", "4-4-2-1", 1)},
               key=BlockSpec.key)[:5]


def _timings(eff_c: float = 0.3) -> list[Sample]:
    true = Factors(eff_c, 0.4, 2e-5)
    return [Sample(s, r, v, latency_from_terms(terms(s, r, v, CPU_DEFAULT), true, CPU_DEFAULT))
            for s in SPECS for r in (0.25, 0.5, 0.75) for v in ("dense", "gather")]


@pytest.fixture
def counted(monkeypatch):
    """The number of searches ``fit`` runs, on an empty memo (restored after)."""
    monkeypatch.setattr(fit_module, "_FITTED", {})
    calls = []
    search = fit_module._fit_all
    monkeypatch.setattr(fit_module, "_fit_all", lambda *a: calls.append(1) or search(*a))
    return calls


def test_the_same_timings_are_fitted_once_and_give_the_same_factors(counted):
    """A new list of equal Samples (not the same objects) finds the first fit: a cached
    compile fitted the whole cache again each time (~1 s for a shipped CPU cache)."""
    first = fit(_timings(), CPU_DEFAULT)
    again = fit(list(reversed(_timings()))[::-1], CPU_DEFAULT)
    assert again == first and len(counted) == 1
    assert first["*"].eff_c == pytest.approx(0.3, rel=0.05)


def test_other_timings_machine_or_min_samples_are_fitted_again(counted):
    """Other seconds, another machine (a doubled peak) or another min_samples are each
    searched again, not answered with the first fit."""
    base = fit(_timings(), CPU_DEFAULT)
    slower = fit(_timings(eff_c=0.15), CPU_DEFAULT)
    assert slower["*"].eff_c == pytest.approx(0.15, rel=0.05) != base["*"].eff_c
    other = dataclasses.replace(CPU_DEFAULT, peak=tuple((d, 2 * r) for d, r in
                                                        CPU_DEFAULT.peak))
    assert fit(_timings(), other)["*"].eff_c == pytest.approx(0.15, rel=0.05)
    few = fit(_timings(), CPU_DEFAULT, min_samples=16)  # 15 per variant: none of its own
    assert set(few) == {"*"} and set(base) > {"*"}
    assert len(counted) == 4


def test_another_prior_is_fitted_again(counted, monkeypatch):
    """The defaults the search starts from are part of what is remembered: a test (or a
    user) that changes them gets a fit from the new ones."""
    fit(_timings(), CPU_DEFAULT)
    monkeypatch.setitem(model.DEFAULT_FACTORS, "cpu", Factors(0.9, 0.9, 1e-5))
    fit(_timings(), CPU_DEFAULT)
    assert len(counted) == 2


def test_a_caller_changing_its_dict_does_not_change_the_next_result(counted):
    """The remembered result is not the dict returned: a caller that edits its dict
    (replacing "*", dropping a variant) leaves the next call's result as fitted."""
    first = fit(_timings(), CPU_DEFAULT)
    first["*"] = Factors(9.0, 9.0)
    first.pop("gather")
    again = fit(_timings(), CPU_DEFAULT)
    assert again["*"].eff_c == pytest.approx(0.3, rel=0.05) and "gather" in again
    assert len(counted) == 1


def test_the_implausible_warning_is_given_on_every_call(counted, caplog):
    """The implausible-eff_c warning is said on a remembered result too, not only when
    searched (equal timings fit eff_c far above the peak)."""
    equal = [dataclasses.replace(s, seconds=1e-9) for s in _timings()]
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        fit(equal, CPU_DEFAULT)
        fit(equal, CPU_DEFAULT)
    said = [r for r in caplog.records if "implausible" in r.getMessage()]
    assert len(said) == 2 and len(counted) == 1


def test_the_memo_keeps_only_the_latest_fits(counted, monkeypatch):
    """At most ``_FITTED_MAX`` results are held, the oldest dropped first: a dropped fit
    is searched again, a kept one is not."""
    monkeypatch.setattr(fit_module, "_FITTED_MAX", 2)
    for eff_c in (0.2, 0.3, 0.4):
        fit(_timings(eff_c), CPU_DEFAULT)
    assert len(fit_module._FITTED) == 2
    fit(_timings(0.2), CPU_DEFAULT)  # pushed out: searched again
    fit(_timings(0.4), CPU_DEFAULT)  # kept
    assert len(counted) == 4


def test_a_remembered_fit_is_what_a_fresh_search_of_equal_samples_gives(counted):
    """Samples that compare equal but are not the same floats (a rate of -0.0 against
    0.0: equal, and hashed alike) find the fit of the first; on them the search gives
    that same fit (``masked``'s compute term is -0.0 there, which the search's max()
    passes over), so the memo returns nothing a fresh fit would not."""
    spec = SPECS[0]
    true = Factors(0.3, 0.4, 2e-5)

    def data(zero: float) -> list[Sample]:
        return [Sample(spec, r, v, latency_from_terms(terms(spec, abs(r), v, CPU_DEFAULT),
                                                      true, CPU_DEFAULT))
                for r in (zero, 0.25, 0.5, 0.75, 1.0) for v in ("dense", "gather", "masked")]

    first = fit(data(0.0), CPU_DEFAULT)
    again = fit(data(-0.0), CPU_DEFAULT)
    assert again == first and len(counted) == 1
    fresh = fit_module._fit_all(data(-0.0), CPU_DEFAULT, 4, model.DEFAULT_FACTORS["cpu"])
    assert fresh == first and len(counted) == 2


def test_a_fit_used_again_is_kept_over_one_used_before_it(counted, monkeypatch):
    """The memo dropped the fit made first even when it was the one just used again
    (first in, first out): ``validate``'s folds then pushed a compile's whole-cache fit
    out. It now drops the fit used least recently."""
    monkeypatch.setattr(fit_module, "_FITTED_MAX", 2)
    for eff_c in (0.2, 0.3, 0.2, 0.4, 0.2):  # the third and fifth: found
        fit(_timings(eff_c), CPU_DEFAULT)
    assert len(counted) == 3 and len(fit_module._FITTED) == 2
