"""gpucheck's host side, audited on CPU with its parts stubbed (no kernel runs): a console
that goes away mid-run, and an autotune cache folder the run cannot use, found before
anything is removed or run."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from laudtriton.gpucheck import command, record
from laudtriton.ops.spec import BlockSpec

ROOT = Path(__file__).resolve().parents[1]
SPEC = BlockSpec(16, 4, 16, 1, False, (8, 8), "spatial", 2)

# gpucheck with its parts stubbed: part 2 passes one check, then waits in a second one
# for the parent's SIGTERM (a time limit); part 3 records one timing in the run's cache
CHILD = """
import argparse, sys, time
from laudtriton.gpucheck import command
from laudtriton.ops.spec import BlockSpec

def kernels(r, until=None):
    r.check("kernel a", lambda: None)
    r.check("kernel waits", lambda: time.sleep(60))

def part3(r, blocks, batches, configs, end, cache):
    cache.record(BlockSpec(16, 4, 16, 1, False, (8, 8), "spatial", 2), 0.5,
                 {"dense": {"{}": 1e-3}})
    return batches

command.machine = lambda r: None
command.kernel_checks = kernels
command.warm_compiles = lambda *a, **k: None
command.distinct_blocks = lambda models, size: {"x": None}
command.time_blocks = part3
command.whole_models = lambda *a: None
command._options = lambda args: [1]
p = command.add_parser(argparse.ArgumentParser().add_subparsers())
sys.exit(command.run(p.parse_args(["--out", sys.argv[1], "--device", "cpu"])))
"""


def test_a_console_that_goes_away_does_not_cost_the_report(tmp_path):
    """The console's reader (``| tee``, a terminal) killed with the run: the first
    line printed after it raised BrokenPipeError, here the line of the SIGTERM's stop,
    so the stop was not recorded and no final summary.json, plots or table were
    written. The run now goes on without a console and writes them; its exit code is
    its own (not 120, Python's for a stdout that cannot be flushed at exit)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               LAUDTRITON_CACHE_DIR=str(tmp_path / "unused_cache"))
    env.pop("LAUDTRITON_CACHE", None)
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in p.stdout:  # until the check that waits has started
            if "PASS kernel a" in line:
                break
        p.stdout.close()  # the reader is gone
        log = out / record.LOG_NAME
        while "start kernel waits" not in log.read_text():
            assert p.poll() is None, p.stderr.read()
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=120)[1]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1, err  # a check did not pass: the stopped run
    assert "Traceback" not in err and "Exception ignored" not in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert [c["check"] for c in summary["checks"]] == [
        "kernel a", "gpucheck run", "part 3/4 completed", "part 4/4 completed"]
    assert summary["checks"][1]["error"].endswith("during part 2/4 completed > kernel waits")
    text = log.read_text()
    assert "stopped: Terminated: signal" in text and "gpucheck done in " in text


def _stub_parts(monkeypatch, ran):
    """Every part stubbed (each appends its number to ``ran``); ``_options`` kept."""
    monkeypatch.setattr(command, "machine", lambda r: ran.append(1))
    monkeypatch.setattr(command, "kernel_checks", lambda r, until=None: ran.append(2))
    monkeypatch.setattr(command, "warm_compiles", lambda *a, **k: None)
    monkeypatch.setattr(command, "distinct_blocks", lambda models, size: {"x": None})

    def part3(r, blocks, batches, configs, end, cache):
        ran.append(3)
        cache.record(SPEC, 0.5, {"dense": {"{}": 1e-3}})
        return batches
    monkeypatch.setattr(command, "time_blocks", part3)
    monkeypatch.setattr(command, "whole_models", lambda *a: ran.append(4))


@pytest.mark.parametrize("case,says", [
    ("file", "--out "),  # a file named autotune_cache in --out
    ("bad value", "LAUDTRITON_CACHE='maybe'"),
    ("off", "LAUDTRITON_CACHE='0'"),
])
def test_an_autotune_cache_the_run_cannot_write_is_refused_before_any_work(
        case, says, tmp_path, monkeypatch, capsys):
    """The run's cache folder was opened only after the earlier run's summary.json,
    timings.csv and log were removed and gpucheck.log's handler was added: a file named
    autotune_cache in --out, or a bad $LAUDTRITON_CACHE, then refused the run with a
    line naming ``cache_dir``, the earlier results gone and the handler left on the
    "laudtriton" logger. $LAUDTRITON_CACHE=0 ran the whole run and wrote no cache file
    (an output the run exists for; part 4 then tuned without part 3's timings), exit 0.
    Each is now one line naming --out or the variable, exit code 2, nothing removed and
    nothing run."""
    ran: list[int] = []
    _stub_parts(monkeypatch, ran)
    out = tmp_path / "o"
    out.mkdir()
    (out / "summary.json").write_text('{"earlier": "run"}')
    if case == "file":
        (out / "autotune_cache").write_text("not a folder")
    else:
        monkeypatch.setenv("LAUDTRITON_CACHE", "maybe" if case == "bad value" else "0")
    handlers = list(logging.getLogger("laudtriton").handlers)
    assert command.main(["--out", str(out), "--device", "cpu"]) == 2
    o, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert o == "" and len(lines) == 1, (o, err)
    assert lines[0].startswith("laudtriton gpucheck: error: ") and says in lines[0], lines[0]
    assert ran == []
    assert (out / "summary.json").read_text() == '{"earlier": "run"}'
    assert not (out / record.LOG_NAME).exists()
    assert logging.getLogger("laudtriton").handlers == handlers


def test_an_enabled_cache_still_runs_and_writes_its_file(tmp_path, monkeypatch, capsys):
    """The refusals above leave the ordinary run alone: "1" (as unset) runs every part
    and writes the cache file into --out."""
    ran: list[int] = []
    _stub_parts(monkeypatch, ran)
    monkeypatch.setenv("LAUDTRITON_CACHE", "1")
    assert command.main(["--out", str(tmp_path), "--device", "cpu", "--batches", "1"]) == 0
    assert ran == [1, 2, 3, 4]
    (cache_file,) = (tmp_path / "autotune_cache").glob("*.v1.json")
    assert f"autotune cache: {cache_file}" in capsys.readouterr().out


@pytest.mark.parametrize("name,redirected", [("EPIPE", True), ("EIO", True),
                                             ("EAGAIN", False)])
def test_console_points_stdout_at_devnull_only_where_it_has_gone(name, redirected,
                                                                 monkeypatch):
    """EPIPE (a closed pipe) and EIO (a hung-up terminal) send the rest to os.devnull;
    EAGAIN (a full non-blocking pipe) drops that line alone; neither raises."""
    import errno

    code = getattr(errno, name)

    class Gone:
        def write(self, text):
            raise OSError(code, os.strerror(code))

        def flush(self):
            pass

        def fileno(self):
            return 1

    dup2 = []
    monkeypatch.setattr(record.os, "dup2", lambda fd, to: dup2.append(to))
    monkeypatch.setattr(sys, "stdout", Gone())
    record.console("a line")
    assert dup2 == ([1] if redirected else [])


def test_a_stop_as_a_part_is_announced_records_that_part_as_not_run(tmp_path, monkeypatch):
    """A SIGTERM while a part's title was printed (after the part was counted as
    started, before its check began) left that part out of summary.json: neither
    completed, nor running, nor listed as not run."""
    ran: list[int] = []
    _stub_parts(monkeypatch, ran)
    monkeypatch.setattr(command, "_options", lambda args: [1])
    say = record.Run.say

    def say_and_stop(self, text):
        say(self, text)
        if text.startswith("3/4 "):
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(record.Run, "say", say_and_stop)
    args = command.add_parser(__import__("argparse").ArgumentParser().add_subparsers()
                               ).parse_args(["--out", str(tmp_path), "--device", "cpu"])
    assert command.run(args) == 1
    assert ran == [1, 2]
    checks = json.loads((tmp_path / "summary.json").read_text())["checks"]
    assert [(c["check"], c["error"]) for c in checks] == [
        ("gpucheck run", checks[0]["error"]),
        ("part 3/4 completed", "not run: the run was stopped before it"),
        ("part 4/4 completed", "not run: the run was stopped before it")]
