"""Audit of ``tune.timing``: the order of the interleaved rounds, the garbage collector
around timed calls, medians and warm-up, each defect with the call that showed it (no
real timing: stand-in callables and a stand-in clock)."""

import gc
import itertools

import pytest

from laudtriton.tune import timing
from laudtriton.tune.timing import interleaved_medians, median_time


@pytest.fixture
def collector():
    """The garbage collector's state, restored after the test."""
    was = gc.isenabled()
    try:
        yield
    finally:
        (gc.enable if was else gc.disable)()


def _calls_in_order(n: int, reps: int) -> list[list[int]]:
    """The timed rounds of interleaved_medians over n stand-ins: the indices, per round."""
    order: list[int] = []
    interleaved_medians([lambda i=i: order.append(i) for i in range(n)], warmup=0,
                        reps=reps)
    return [order[r * n:(r + 1) * n] for r in range(reps)]


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_every_fn_follows_every_other_equally_often_within_the_rounds(n):
    """Rounds rotated by one (fn0 fn1 fn2, fn1 fn2 fn0, fn2 fn0 fn1) kept the cyclic order:
    fn1 ran right after fn0 in 2 of 3 rounds, fn0 never after fn1, so with 3 or more
    candidates each one's median was its timing after its list neighbour (in the caches
    and freed memory that one left). Now every ordered pair is equally frequent over 2n
    rounds, and every fn takes every position equally often."""
    rounds = _calls_in_order(n, 2 * n)
    assert all(sorted(r) == list(range(n)) for r in rounds)  # each fn once a round
    pairs = [(r[k], r[k + 1]) for r in rounds for k in range(n - 1)]
    counts = {p: pairs.count(p) for p in itertools.permutations(range(n), 2)}
    assert len(set(counts.values())) == 1, counts
    for pos in range(n):
        assert sorted(r[pos] for r in rounds) == sorted(list(range(n)) * 2)


def test_a_fn_after_a_costly_neighbour_is_not_charged_its_cost(monkeypatch):
    """fn0 leaves a cost (1 s on a stand-in clock) to the call after it; fn1 and fn2 cost
    1 s each. Rotated rounds timed fn1 at 2 s (after fn0 in 4 of its 6 calls): the
    candidate after a costly one lost the comparison to its equal."""
    clock, dirty = [0.0], [False]

    def fn(i):
        def f():
            clock[0] += 1.0 + (1.0 if dirty[0] else 0.0)
            dirty[0] = i == 0
        return f

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    out = interleaved_medians([fn(0), fn(1), fn(2)], warmup=0, reps=6)
    assert out[1] == 1.0


def test_two_fns_keep_their_alternating_order():
    """Two candidates: fn0 fn1, fn1 fn0, ... as before (the sweep's tests rely on it)."""
    assert _calls_in_order(2, 4) == [[0, 1], [1, 0], [0, 1], [1, 0]]


def test_median_time_pauses_the_collector_while_timing_on_cpu(collector):
    """median_time's CPU calls ran with the collector on (interleaved_medians paused it):
    a collection inside a timed call (~0.1 s with torch loaded) was that call's time, the
    whole result at reps=1 (sweep's estimate of the reps) and a fifth of gpucheck's."""
    gc.enable()
    seen: list[bool] = []
    median_time(lambda: seen.append(gc.isenabled()), "cpu", warmup=1, reps=3)
    assert seen[1:] == [False, False, False] and gc.isenabled()


def test_median_time_has_no_collection_inside_a_timed_call(collector):
    """A call making cyclic garbage (past the first generation's threshold) triggered a
    collection while timed."""
    gc.enable()
    timed, collected = [False], []

    def watch(phase, info):
        if phase == "start" and timed[0]:
            collected.append(info["generation"])

    def call():
        timed[0] = True
        for _ in range(5 * gc.get_threshold()[0]):
            a: list = []
            a.append(a)
        timed[0] = False

    gc.callbacks.append(watch)
    try:
        median_time(call, "cpu", warmup=0, reps=3)
    finally:
        gc.callbacks.remove(watch)
    assert collected == []


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("which", ["median_time", "interleaved_medians"])
def test_a_timed_call_that_raises_leaves_the_collector_as_it_was(collector, enabled,
                                                                  which):
    """The collector is restored (on, or left off when it was off) when a call raises."""
    (gc.enable if enabled else gc.disable)()
    calls = [0]

    def flaky():
        calls[0] += 1
        if calls[0] == 3:  # the warm-up call passes, the second timed one raises
            raise RuntimeError("late")

    with pytest.raises(RuntimeError, match="late"):
        if which == "median_time":
            median_time(flaky, "cpu", warmup=1, reps=3)
        else:
            interleaved_medians([flaky], warmup=1, reps=3)
    assert gc.isenabled() == enabled


@pytest.mark.parametrize("which", ["median_time", "interleaved_medians"])
def test_an_even_count_gives_the_mean_of_the_two_middle_times(monkeypatch, which):
    """Not a defect, kept: warm-up excluded, and for an even reps the median is the mean
    of the two middle times (``statistics.median``), neither middle alone."""
    clock, durations = [0.0], [100.0, 1.0, 4.0, 2.0, 9.0]  # a warm-up call, then 4 timed

    def call():
        clock[0] += durations.pop(0)

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    if which == "median_time":
        got = median_time(call, "cpu", warmup=1, reps=4)
    else:
        got = interleaved_medians([call], warmup=1, reps=4)[0]
    assert got == 3.0 and durations == []


@pytest.mark.parametrize("warmup,reps", [(0, 0), (-1, 3), (1, -2), (True, 3), (1, 3.0)])
def test_bad_runs_are_refused_before_any_call(warmup, reps):
    """Not a defect, kept: 0 or negative reps, a negative warm-up, bools and floats are
    ValueErrors naming both, before any call."""
    ran: list = []
    with pytest.raises(ValueError, match=rf"got reps={reps!r}, warmup={warmup!r}"):
        interleaved_medians([lambda: ran.append(1)], warmup=warmup, reps=reps)
    with pytest.raises(ValueError, match=rf"got reps={reps!r}, warmup={warmup!r}"):
        median_time(lambda: ran.append(1), "cpu", warmup=warmup, reps=reps)
    assert ran == []
