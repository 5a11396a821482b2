"""Audit of the autotune cache: a TuneCache whose device fingerprint changed after it was
made (``torch.set_num_threads``) neither files timings under the old fingerprint nor
serves them as the new one's; its read methods check their arguments as ``record`` does."""

from __future__ import annotations

import json

import pytest
import torch

from laudtriton.ops import BlockSpec
from laudtriton.tune.cache import TuneCache
from laudtriton.tune.keys import device_fingerprint

SPEC = BlockSpec(48, 12, 48, 1, False, (13, 13), "spatial", 3)
TIMINGS = {"dense": {"{}": 1e-3}}


@pytest.fixture
def threads():
    """torch's intra-op thread count, restored after the test."""
    before = torch.get_num_threads()
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def test_a_cache_refuses_timings_taken_after_the_thread_count_changed(tmp_path, threads):
    cache = TuneCache(tmp_path)
    made_for = cache.device
    torch.set_num_threads(threads + 1)
    now = device_fingerprint("cpu")
    assert now != made_for
    with pytest.raises(ValueError) as e:
        cache.record(SPEC, 0.5, TIMINGS)
    assert made_for in str(e.value) and now in str(e.value)
    assert not cache.path.exists() and not cache._memory  # filed nowhere
    with pytest.raises(ValueError, match="set_num_threads"):
        cache.lookup(SPEC, 0.5)
    with pytest.raises(ValueError, match="fingerprint"):
        cache.annotate(SPEC, 0.5, {"asked_rates": [0.5]})
    # the cache made after setting the threads files them under their own fingerprint
    fresh = TuneCache(tmp_path)
    fresh.record(SPEC, 0.5, TIMINGS)
    assert json.loads(fresh.path.read_text())["device"] == now
    # back at the count it was made with, the first cache is right again
    torch.set_num_threads(threads)
    assert cache.lookup(SPEC, 0.5) is None  # the other count's file is not its own
    cache.record(SPEC, 0.5, TIMINGS)
    assert cache.lookup(SPEC, 0.5) == TIMINGS
    assert json.loads(cache.path.read_text())["device"] == made_for


def test_a_disabled_cache_refuses_too(tmp_path, threads):
    """Its records stay in memory, under its fingerprint (``device``): not the new one's."""
    cache = TuneCache(tmp_path, enabled=False)
    torch.set_num_threads(threads + 1)
    with pytest.raises(ValueError, match="fingerprint"):
        cache.record(SPEC, 0.5, TIMINGS)


def test_the_file_describing_methods_still_read_after_a_change(tmp_path, threads):
    """``entries`` and ``clear`` describe the file the cache was made for, labelled with
    its fingerprint (``device``): they are not refused."""
    cache = TuneCache(tmp_path)
    cache.record(SPEC, 0.5, TIMINGS)
    torch.set_num_threads(threads + 1)
    assert [e.seconds for e in cache.entries()] == [1e-3]
    assert cache.clear() == 1


@pytest.mark.parametrize("bad", [None, "0.5", 50, -0.1, float("nan"), True, [0.5]])
def test_reads_refuse_a_rate_that_is_not_one(tmp_path, bad):
    """lookup(spec, None) was a TypeError of float(); lookup(spec, 50) said "not cached"
    (None), and annotate blamed its spec or meta; record refuses them all."""
    cache = TuneCache(tmp_path)
    cache.record(SPEC, 0.5, TIMINGS)
    for name, call in (("lookup", lambda: cache.lookup(SPEC, bad)),
                       ("entry_meta", lambda: cache.entry_meta(SPEC, bad)),
                       ("annotate", lambda: cache.annotate(SPEC, bad, {"asked_rates": [0.5]}))):
        with pytest.raises(ValueError, match=rf"{name}: rate_bucket .* must be a number in "
                                             r"\[0, 1\]"):
            call()
    with pytest.raises(ValueError, match=r"record: rate_bucket"):  # as before
        cache.record(SPEC, bad, TIMINGS)


def test_rates_refuses_a_spec_that_is_not_a_blockspec(tmp_path):
    """rates("x") was an AttributeError ('str' object has no attribute 'key')."""
    with pytest.raises(ValueError, match="rates: spec must be a BlockSpec, got str"):
        TuneCache(tmp_path).rates("x")
