"""Choosing a variant per block and rate (``schedule``, ``planning``, ``tune.measure``,
``tune.timing``): defects found by an audit, each with synthetic timings or stand-in
variants (no real timing)."""

import types

import pytest
import torch

from laudtriton.ops.registry import Cost, Variant


def _stub(calls: list, fails: bool = False) -> Variant:
    """A variant that counts its calls (and raises on each where ``fails``)."""
    def run(fb, x, masks, cfg):
        calls.append(cfg)
        if fails:
            raise RuntimeError("stub failure")
    return Variant("stub", ("spatial",), ("cpu", "cuda"), run=run,
                   cost=lambda spec, rate: Cost(0.0, 0.0, 1))


@pytest.mark.parametrize("warmup,reps", [(1, 0), (-1, 3), (1, 2.5), (1, True)])
def test_time_variants_refuses_bad_runs_before_running_a_variant(monkeypatch, warmup, reps):
    """On CUDA ``median_time``'s ValueError for reps=0 was caught as the config failing
    "while timed": every config scored inf (a plan then said every variant failed). On
    CPU, every config failing on its first call returned all-inf without a word. Now the
    arguments are refused first, naming them, before any variant runs."""
    from laudtriton.tune import measure

    class CudaInput:
        device = torch.device("cuda")

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(measure, "_check_shape", lambda spec, x, out: None)
    spec = types.SimpleNamespace(short=lambda: "stub block")
    for x, fails in ((CudaInput(), False), (torch.zeros(1, 1, 1, 1), True)):
        calls: list = []
        with pytest.raises(ValueError, match=r"reps must be >= 1 and warmup >= 0 .*got "
                                             rf"reps={reps!r}, warmup={warmup!r}"):
            measure.time_variants(None, spec, x, None, [_stub(calls, fails)],
                                  warmup=warmup, reps=reps)
        assert calls == []


@pytest.mark.parametrize("warmup,reps", [(1, 2.5), (1, "3"), (None, 3), (1, True),
                                         (1.0, 2)])
def test_timing_refuses_runs_that_are_not_ints(warmup, reps):
    """reps=2.5 raised a TypeError from ``range``, "3" or None one from the comparison,
    and True ran once as reps=1; ValueErrors now name them."""
    from laudtriton.tune.timing import interleaved_medians, median_time

    ran = []
    for call in (lambda: median_time(lambda: ran.append(1), "cpu", warmup=warmup, reps=reps),
                 lambda: interleaved_medians([lambda: ran.append(1)], warmup=warmup,
                                             reps=reps)):
        with pytest.raises(ValueError, match=rf"got reps={reps!r}, warmup={warmup!r}"):
            call()
    assert ran == []
    assert median_time(lambda: None, "cpu", warmup=0, reps=1) >= 0


@pytest.mark.parametrize("rate", ["0.5", None, True])
def test_choose_refuses_a_rate_that_is_not_a_number(rate):
    """``add`` refused a bool or non-number rate with a ValueError; ``choose`` raised a
    TypeError from the comparison for "0.5" or None, and read True as rate 1."""
    from laudtriton.schedule import DispatchTable

    table = DispatchTable()
    table.add(0.0, {"dense": {"{}": 1e-3}, "gather": {"{}": 1e-4}}, "measured")
    table.add(1.0, {"dense": {"{}": 1e-3}}, "measured")
    with pytest.raises(ValueError, match=r"rate .* must be in \[0, 1\]"):
        table.choose(rate)
    assert table.choose(1).variant == "dense" and table.choose(0).variant == "gather"


def test_median_time_on_cuda_makes_the_timed_device_current(monkeypatch):
    """``do_bench`` records its events and synchronises on the current device: timing a
    call on cuda:1 from cuda:0 (``laudtriton sweep --device cuda:1``, whose blocks and
    kernels run on cuda:1) measured cuda:0's idle stream, the launch time alone. The
    device is now made current around it ('cuda' alone: left as it is). (A stand-in
    device guard and do_bench: no GPU here.)"""
    import triton.testing

    from laudtriton.tune import timing

    current: list = [None]

    class Guard:
        def __init__(self, device):
            self.device, self.before = torch.device(device), None

        def __enter__(self):
            self.before, current[0] = current[0], self.device

        def __exit__(self, *exc):
            current[0] = self.before

    seen = []

    def do_bench(fn, warmup, rep, return_mode):
        fn()
        seen.append(current[0])
        return 2.0

    monkeypatch.setattr(torch.cuda, "device", Guard)
    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    assert timing.median_time(lambda: None, "cuda:1") == pytest.approx(2e-3)
    assert timing.median_time(lambda: None, torch.device("cuda", 0)) == pytest.approx(2e-3)
    assert timing.median_time(lambda: None, "cuda") == pytest.approx(2e-3)
    assert seen == [torch.device("cuda:1"), torch.device("cuda:0"), None]
    assert current == [None]


def test_rate_bucket_takes_numpy_floats_and_refuses_bools():
    """A numpy float32 rate was refused as "must be a number"; True passed as 1.0."""
    import numpy as np

    from laudtriton.tune.keys import rate_bucket

    assert rate_bucket(np.float32(0.47)) == 0.5 and rate_bucket(np.float64(0.25)) == 0.2
    for bad in (True, "0.5", None):
        with pytest.raises(ValueError, match="must be a number in"):
            rate_bucket(bad)


@pytest.mark.parametrize("timings, bad", [
    ({"dense": 1.0}, r"timings\['dense'\] is 1\.0"),
    ([("dense", {"{}": 1.0})], r"timings is a list"),
    ({1: {"{}": 1.0}}, r"timings has the key 1"),
    ({"dense": {1: 1.0}}, r"timings\['dense'\] has the key 1"),
    ({"dense": {"{}": "fast"}}, r"timings\['dense'\]\['\{\}'\] is 'fast'"),
    ({"dense": {"{}": None}}, r"timings\['dense'\]\['\{\}'\] is None"),
    ({"dense": {"{}": True}}, r"timings\['dense'\]\['\{\}'\] is True"),
])
def test_dispatch_table_add_refuses_malformed_timings(timings, bad):
    """A flat {variant: seconds} died with an AttributeError inside ``fastest``, a string
    time with a TypeError, and a bool time or a variant that is not a name was taken;
    a ValueError now names ``timings``, the bad entry and the shape expected."""
    from laudtriton.schedule import DispatchTable

    table = DispatchTable()
    with pytest.raises(ValueError, match=bad + r".*\{variant: \{config_key: seconds\}\}"):
        table.add(0.5, timings, "measured")
    assert table.entries == {}
    table.add(0.5, {"dense": {"{}": 2.0, "{\"a\": 1}": float("inf")}, "gather": {}},
              "measured")
    assert table.entries[0.5].variant == "dense"
