"""Review s65f of ``laudtriton bench`` and ``demo``: the progress display off a terminal,
and ``bench``'s allocator checked before any work."""

import sys
import types

import pytest

from laudtriton import bench as bench_mod
from laudtriton import progress as progress_mod
from laudtriton import runtime
from laudtriton.bench import bench
from laudtriton.progress import Progress


class FakeTqdm:
    """Stands in for tqdm's bar: records that it was made and what it was shown."""

    made: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.n, self.initial, self.last_print_n = kwargs, 0, 0, 0
        FakeTqdm.made.append(self)

    def set_postfix_str(self, s, refresh=True):
        pass

    def update(self, n=1):
        self.n += n

    def close(self):
        pass


def test_off_a_terminal_tqdm_is_not_used_and_whole_lines_are_written(capsys, monkeypatch):
    """With tqdm installed (the test extras install it) and stderr not a terminal (a log
    file, CI, ``2> log``), the display was tqdm's bar, which redraws itself with carriage
    returns there too: the log got one line of '\\r'-joined redraws, where README says
    whole lines are printed when stderr is piped. Off a terminal the whole-line display
    is used whether tqdm is importable or not."""
    FakeTqdm.made = []
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeTqdm))
    monkeypatch.setattr(progress_mod, "_is_tty", lambda: False)
    bar = Progress(2, True, desc="bench rate 0.50", unit="block")
    bar.update("layer1.0")
    bar.update("whole model")
    bar.close()
    err = capsys.readouterr().err
    assert FakeTqdm.made == [] and bar.bar is None
    assert "\r" not in err
    assert err.splitlines()[0].startswith("bench rate 0.50 1/2 ")
    assert err.splitlines()[-1].startswith("bench rate 0.50 2/2 ")


def test_on_a_terminal_tqdm_is_still_used(monkeypatch):
    """The fix above keeps tqdm's bar where stderr is a terminal."""
    FakeTqdm.made = []
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeTqdm))
    monkeypatch.setattr(progress_mod, "_is_tty", lambda: True)
    bar = Progress(3, True, desc="sweep", unit="item")
    bar.update("a")
    bar.close()
    assert len(FakeTqdm.made) == 1 and FakeTqdm.made[0].n == 1


class Built(Exception):
    """Raised by the stand-in for bench's model build: the arguments passed their checks."""


@pytest.mark.parametrize("allocator, retained, says", [
    ("bogus", "default", "allocator must be 'retain' or 'default', got 'bogus'"),
    ("default", "retain", "allocator 'default' asked, but this process already retains"),
])
def test_bench_checks_its_allocator_before_building_the_model(allocator, retained, says,
                                                              monkeypatch):
    """``bench`` promises that an unknown allocator, or "default" once the process
    retains freed memory, is refused before anything is built; it was checked after the
    first model's build (seconds for ResNet-101, wasted on an argument error)."""
    def built(*a, **k):
        raise Built
    monkeypatch.setattr(bench_mod, "_seeded_model", built)
    monkeypatch.setattr(runtime, "allocator_setting", lambda: retained)
    logs = []
    with pytest.raises(ValueError, match=says):
        bench("laud_resnet50", "spatial", "4-4-2-1", [0.5], tune="off", reps=1,
              allocator=allocator, log=logs.append, progress=False)
    assert logs == []


def test_csv_whose_temp_file_name_is_too_long_is_refused_before_the_run(tmp_path, capsys,
                                                                       monkeypatch):
    """--csv is written at the end through a temp file beside it named after it (24
    characters longer); a name that fits but whose temp name does not (240 characters)
    passed the checks, the whole benchmark ran (minutes), and only then did the write
    fail ("File name too long"). Refused now before anything runs, one line, exit 2."""
    import laudtriton.bench_command as command_mod
    from laudtriton.cli import main

    ran = []
    monkeypatch.setattr(command_mod, "_run", lambda args, rates: ran.append(rates) or [])
    path = tmp_path / ("a" * 240 + ".csv")
    assert main(["bench", "--rates", "0.5", "--tune", "off", "--no-progress",
                 "--csv", str(path)]) == 2
    err = capsys.readouterr().err
    assert ran == [] and "--csv" in err and "too long" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_every_output_path_check_tries_the_writers_temp_name(tmp_path):
    """The too-long temp name was first checked in bench alone; ``check_output_path``,
    which sweep's --csv and cache merge's --out use too, tried an unnamed temp file and
    let such a name through. It now makes the temp file the writer makes (and removes
    it)."""
    from laudtriton.tune.paths import check_output_path

    long_name = str(tmp_path / ("a" * 236 + ".csv"))
    with pytest.raises(ValueError, match=r"^--csv .* cannot be written \(File name too long\)"):
        check_output_path(long_name, "--csv")
    check_output_path(str(tmp_path / "fine.csv"), "--csv")  # a usual name still passes
    assert list(tmp_path.iterdir()) == []
