"""Ctrl-C and SIGTERM in every command (session 64): ``cli.main`` turns SIGTERM into
Ctrl-C around any command, not only around the four that took it before (demo, bench,
sweep, plot); an interrupted command prints one line; a bench child process stopped
alone is named as interrupted or killed, not as a failure with a bare status."""

import os
import signal
from types import SimpleNamespace

import pytest

import laudtriton.cli as cli_mod
import laudtriton.tune.sweep as sweep_mod
from laudtriton.bench_report import ProcessFailed, run_processes
from laudtriton.cli import main
from laudtriton.runtime import exit_text
from laudtriton.tune.cache import TuneCache


def test_sigterm_stops_any_command_as_ctrl_c(sigterm_self, sigterm_guard, monkeypatch,
                                             capsys):
    """``env`` (one of the commands with no handler of their own: predict, calibrate,
    cache, design, env) was ended by a SIGTERM's default action, without a word."""
    monkeypatch.setattr(cli_mod, "usable_cpus", sigterm_self)  # env's CPU count line
    assert main(["env"]) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "laudtriton env: interrupted"
    with pytest.raises(sigterm_guard):  # the handler before it (the guard's) is back
        sigterm_self()


def test_an_interrupted_sweep_command_prints_its_own_line_only(
        ctrl_c_at_second_item, tmp_path, monkeypatch, capsys):
    """After sweep's line (how far it got, where the CSV is), ``main`` printed
    "interrupted" too."""
    monkeypatch.setattr(sweep_mod, "MAX_REPS", 2)
    monkeypatch.setattr(sweep_mod, "MIN_REPS", 1)
    csv = tmp_path / "s.csv"
    assert main(["sweep", "--rates", "0.5,1", "--blocks", "layer4.2", "--cache-dir",
                 str(tmp_path / "c"), "--csv", str(csv), "--no-progress",
                 "--input-size", "64"]) == 130
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("sweep: interrupted after 1 of 2 item(s): its ")
    assert not any(line.endswith(": interrupted") or line == "interrupted"
                   for line in lines)
    assert csv.is_file()


def test_an_interrupted_sweep_raises_a_keyboard_interrupt(tmp_path, monkeypatch):
    """From Python, ``sweep`` still raises a KeyboardInterrupt (its subclass, which
    says the line was printed), chained to the one that stopped it."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt("first")
    monkeypatch.setattr(sweep_mod, "time_variants", interrupt)
    with pytest.raises(KeyboardInterrupt) as info:
        sweep_mod.sweep("laud_resnet50", rates=[0.5], blocks="layer4.2", input_size=64,
                        cache=TuneCache(tmp_path), progress=False)
    assert isinstance(info.value, sweep_mod.SweepInterrupted)
    assert str(info.value.__cause__) == "first"


@pytest.mark.parametrize("rc, says", [
    (130, "process 1 of 2 was interrupted (Ctrl-C or SIGTERM: status 130) (its output is "
          "above)"),
    (-9, "process 1 of 2 was killed by signal 9 (SIGKILL) (its output is above)"),
    (2, "process 1 of 2 exited with status 2 (its output is above)"),
])
def test_a_bench_child_stopped_alone_is_named_as_such(rc, says, monkeypatch):
    """A child that alone got SIGTERM (it prints nothing: its parent speaks for it) was
    reported as "exited with status 130"; one killed by a signal as a negative status."""
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: SimpleNamespace(returncode=rc))
    with pytest.raises(ProcessFailed) as info:
        run_processes(["--model-only"], 2, log=lambda s: None)
    assert str(info.value) == says


@pytest.mark.parametrize("code, text", [
    (-11, "signal 11 (SIGSEGV)"), (-200, "signal 200"), (0, "exit code 0"),
    (1, "exit code 1"),
])
def test_exit_text(code, text):
    assert exit_text(code) == text


def test_a_sigterm_ignored_from_the_start_stays_ignored(monkeypatch, capsys):
    """A command started with SIGTERM ignored (``trap '' TERM``, a supervisor's choice) was
    stopped by one: ``main`` replaced the ignore with its handler. Python keeps an ignored
    SIGINT ignored; SIGTERM is now kept so too, and the command runs to its end."""
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        def sigterm_then_count() -> int:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1_000_000):
                pass
            return 2
        monkeypatch.setattr(cli_mod, "usable_cpus", sigterm_then_count)
        assert main(["env"]) == 0
        assert "interrupted" not in capsys.readouterr().err
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError("no GEMM")])
def test_calibrate_stopped_removes_the_folder_it_made(stop, tmp_path, monkeypatch, capsys):
    """calibrate made its --cache-dir before measuring (the file is written at the end);
    stopped while measuring, it left that folder behind, empty."""
    import laudtriton.predict.calibration as calibration_mod

    def measure(*args, **kwargs):
        raise stop
    monkeypatch.setattr(calibration_mod, "calibrate", measure)
    folder = tmp_path / "new" / "c"
    if isinstance(stop, RuntimeError):
        with pytest.raises(RuntimeError, match="no GEMM"):
            main(["calibrate", "--cache-dir", str(folder)])
    else:
        assert main(["calibrate", "--cache-dir", str(folder)]) == 130
        assert capsys.readouterr().err.splitlines()[-1] == "laudtriton calibrate: interrupted"
    assert not (tmp_path / "new").exists()
    (tmp_path / "new" / "c").mkdir(parents=True)  # a folder that was there is kept
    with pytest.raises(KeyboardInterrupt if stop is KeyboardInterrupt else RuntimeError):
        from laudtriton.predict.commands import run_calibrate
        run_calibrate(cli_mod.build_parser().parse_args(["calibrate", "--cache-dir",
                                                         str(folder)]))
    assert folder.is_dir()
