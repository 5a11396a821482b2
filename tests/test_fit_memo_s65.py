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
    first = fit(_timings(), CPU_DEFAULT)
    again = fit(list(reversed(_timings()))[::-1], CPU_DEFAULT)
    assert again == first and len(counted) == 1
    assert first["*"].eff_c == pytest.approx(0.3, rel=0.05)


def test_other_timings_machine_or_min_samples_are_fitted_again(counted):
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
    first = fit(_timings(), CPU_DEFAULT)
    first["*"] = Factors(9.0, 9.0)
    first.pop("gather")
    again = fit(_timings(), CPU_DEFAULT)
    assert again["*"].eff_c == pytest.approx(0.3, rel=0.05) and "gather" in again
    assert len(counted) == 1


def test_the_implausible_warning_is_given_on_every_call(counted, caplog):
    equal = [dataclasses.replace(s, seconds=1e-9) for s in _timings()]
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        fit(equal, CPU_DEFAULT)
        fit(equal, CPU_DEFAULT)
    said = [r for r in caplog.records if "implausible" in r.getMessage()]
    assert len(said) == 2 and len(counted) == 1


def test_the_memo_keeps_only_the_latest_fits(counted, monkeypatch):
    monkeypatch.setattr(fit_module, "_FITTED_MAX", 2)
    for eff_c in (0.2, 0.3, 0.4):
        fit(_timings(eff_c), CPU_DEFAULT)
    assert len(fit_module._FITTED) == 2
    fit(_timings(0.2), CPU_DEFAULT)  # pushed out: searched again
    fit(_timings(0.4), CPU_DEFAULT)  # kept
    assert len(counted) == 4
