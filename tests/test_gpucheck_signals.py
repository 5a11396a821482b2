"""gpucheck's end of run: the autotune cache's lock file (kept, so that every writer locks
one inode), a SIGKILLed run's leftovers, and signals that arrive while a stopped run
reports what it gathered. On CPU, with the parts stubbed: no kernel runs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from laudtriton.gpucheck import command, record
from laudtriton.ops.spec import BlockSpec
from laudtriton.tune import cache_file

SPEC = BlockSpec(16, 4, 16, 1, False, (8, 8), "spatial", 2)
# a process that takes an flock on argv[1] (as file_lock does), says so, then sleeps
HOLDER = ("import fcntl, sys, time\n"
          "fh = open(sys.argv[1], 'a')\n"
          "fcntl.flock(fh, fcntl.LOCK_EX)\n"
          "print('held', flush=True)\n"
          "time.sleep(120)\n")


def _args(tmp_path):
    return command.add_parser(__import__("argparse").ArgumentParser().add_subparsers()
                               ).parse_args(["--out", str(tmp_path), "--device", "cpu"])


def _stub_parts(monkeypatch, part3=None, kernels=None):
    """Parts 1, 2 and 4 do nothing (part 2: ``kernels``, if given); part 3 is ``part3``
    (default: records one timing in the run's cache)."""
    def record_one(r, blocks_, batches, configs, end, cache):
        cache.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
        return batches

    monkeypatch.setattr(command, "machine", lambda r: None)
    monkeypatch.setattr(command, "kernel_checks", kernels or (lambda r, until=None: None))
    monkeypatch.setattr(command, "warm_compiles", lambda *a, **k: None)
    monkeypatch.setattr(command, "distinct_blocks", lambda models, size: {"x": None})
    monkeypatch.setattr(command, "time_blocks", part3 or record_one)
    monkeypatch.setattr(command, "whole_models", lambda *a: None)
    monkeypatch.setattr(command, "_options", lambda args: [1])


def _hold(path):
    """A process holding an flock on ``path`` (killed by the caller)."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _kill(p):
    p.kill()
    p.wait(timeout=30)


def test_the_end_of_a_run_keeps_the_lock_of_its_autotune_cache(tmp_path, monkeypatch):
    """The run unlinked the cache's lock file at its end ("one file fewer to fetch"):
    a writer that held it (a compile or sweep on the same cache) kept its lock on the
    unlinked file, and the next writer created a new one and locked that at once: two
    writers of one cache file at a time. The file stays, so the next writer waits."""
    holders = []

    def part3(r, blocks_, batches, configs, end, cache):
        cache.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
        holders.append(_hold(cache.lock_path))  # another writer, still busy at the end
        holders.extend([cache.lock_path, os.stat(cache.lock_path).st_ino])
        return batches

    _stub_parts(monkeypatch, part3)
    try:
        assert command.run(_args(tmp_path)) == 0
        _, lock, inode = holders
        monkeypatch.setattr(cache_file, "LOCK_TIMEOUT", 0.3)
        monkeypatch.setattr(cache_file, "LOCK_QUIET", 0.1)
        with pytest.raises(cache_file.LockTimeout), cache_file.file_lock(lock):
            pass  # taken while the other process holds it: the race
        assert os.stat(lock).st_ino == inode  # the very file the other writer locked
    finally:
        if holders:
            _kill(holders[0])
    with cache_file.file_lock(lock):  # free once that process is gone
        pass


def test_a_sigkilled_run_leaves_no_lock_that_blocks_the_next(tmp_path, monkeypatch):
    """A run killed outright (SIGKILL) while it held the cache's lock leaves the lock
    file, but no lock: the kernel drops an flock with its process. The next run into
    the same --out writes its cache without waiting."""
    from laudtriton.tune.cache import TuneCache

    _stub_parts(monkeypatch)
    lock = TuneCache(tmp_path / "autotune_cache", device="cpu").lock_path
    lock.parent.mkdir()
    _kill(_hold(lock))  # as a run SIGKILLed inside cache.record
    assert lock.exists()
    monkeypatch.setattr(cache_file, "LOCK_TIMEOUT", 5.0)
    t0 = time.perf_counter()
    assert command.run(_args(tmp_path)) == 0
    assert time.perf_counter() - t0 < 5.0
    assert "another process holds" not in (tmp_path / record.LOG_NAME).read_text()


def test_signals_while_a_stopped_run_reports_do_not_abort_it(tmp_path, monkeypatch, capsys):
    """A second SIGTERM (or the watchdog's SIGALRM) while the first one's ``Terminated``
    was handled raised out of ``run``: no final summary.json, plots or table. After the
    first stop, later signals are noted in gpucheck.log and the report goes on; the
    handlers in place before the run are back after it."""
    sent = []

    def send(what):
        for sig in (signal.SIGTERM, signal.SIGALRM):
            os.kill(os.getpid(), sig)
        sent.append(what)

    say = record.Run.say

    def say_and_signal(self, text):  # in the ``except Terminated`` clause
        say(self, text)
        if text.startswith("stopped: "):
            send("except")
    monkeypatch.setattr(record.Run, "say", say_and_signal)
    plot = command.plot

    def plot_and_signal(*a):  # after it, while the plots and the table are written
        send("plot")
        return plot(*a)
    monkeypatch.setattr(command, "plot", plot_and_signal)
    _stub_parts(monkeypatch, kernels=lambda r, until=None: r.check(
        "kernel", lambda: os.kill(os.getpid(), signal.SIGTERM)))

    def not_gpucheck(signum, frame):  # without gpucheck's own handler: fail, don't die
        raise RuntimeError(f"signal {signum} reached the handler outside gpucheck")
    previous = {s: signal.signal(s, not_gpucheck) for s in (signal.SIGTERM, signal.SIGALRM)}
    try:
        assert command.run(_args(tmp_path)) == 1
        assert all(signal.getsignal(s) is not_gpucheck for s in previous)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    assert sent == ["except", "plot", "plot"]  # one plot per model
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    checks = json.loads((tmp_path / "summary.json").read_text())["checks"]
    assert [c["check"] for c in checks] == [
        "gpucheck run", "part 3/4 completed", "part 4/4 completed"]
    assert checks[0]["error"].endswith(", during part 2/4 completed > kernel")
    out = capsys.readouterr().out
    assert "checks: 0/3 passed" in out and "gpucheck done in " in out  # the table
    log = (tmp_path / record.LOG_NAME).read_text()
    assert "gpucheck done in " in log
    assert log.count(f"signal {int(signal.SIGTERM)} ignored") == 3
    assert log.count(f"signal {int(signal.SIGALRM)} ignored") == 3
