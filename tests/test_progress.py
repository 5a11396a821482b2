"""laudtriton.progress: the stderr display of long commands (sweep, bench)."""

import sys

import pytest

from laudtriton import progress as progress_mod
from laudtriton.progress import Progress


@pytest.fixture
def terminal(monkeypatch):
    """stderr taken for a terminal (pytest's capture is not one): the line rewritten."""
    monkeypatch.setattr(progress_mod, "_is_tty", lambda: True)


def test_the_progress_eta_counts_measured_items_only(capsys, monkeypatch, terminal):
    """Items found cached took no time but counted in the rate: a resumed sweep's ETA
    read 1 s for a 17 s run. No ETA before one item is measured."""
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the stderr line (tqdm is optional)
    bar = Progress(4, True, desc="sweep", unit="item")
    assert bar.bar is None
    bar.update("a", timed=False)
    assert "sweep 1/4 " in capsys.readouterr().err.split("\r")[-1]
    bar.update("b", timed=False)
    assert "ETA ? " in capsys.readouterr().err
    bar.t0 -= 10.0  # 10 s so far, all of it on the one item measured next
    bar.update("c", timed=True)
    assert "ETA 10s" in capsys.readouterr().err  # 1 item left at 10 s a measured item
    bar.close()
    bar.close()  # once only
    assert capsys.readouterr().err == "\n"


def test_a_step_can_count_as_several_items(capsys, monkeypatch, terminal):
    """bench's whole-model steps take as long as all the blocks' rows together: counted
    as that many, the ETA after the blocks is not the blocks' time alone."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    bar = Progress(10, True, desc="bench rate 0.50", unit="block")
    bar.t0 -= 2.0  # 2 s for the first two items
    bar.update("layer1.0")
    bar.update("layer1.1")
    assert "bench rate 0.50 2/10 2s elapsed, ETA 8s" in capsys.readouterr().err
    bar.update("whole model", n=8)
    bar.close()
    assert "10/10" in capsys.readouterr().err
    bar = Progress(3, False, desc="x", unit="item")  # disabled: counted, not shown
    bar.update(n=2)
    assert bar.done == 2 and capsys.readouterr().err == ""


def test_off_a_terminal_whole_lines_are_written_now_and_then(capsys, monkeypatch):
    """A log file or CI got a carriage-return line per item: one unreadable line of
    every update. Off a terminal: a whole line at the first item, then at most every
    LOG_EVERY_S seconds, and at the last; close adds nothing."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    bar = Progress(4, True, desc="sweep", unit="item")
    assert not bar.tty  # pytest's captured stderr
    bar.update("a")
    assert capsys.readouterr().err.startswith("sweep 1/4 ")
    bar.update("b")  # within LOG_EVERY_S of the last line: not shown
    assert capsys.readouterr().err == ""
    bar.t0 -= progress_mod.LOG_EVERY_S  # as if that long had passed
    bar.update("c")
    err = capsys.readouterr().err
    assert err.startswith("sweep 3/4 ") and err.endswith(" c\n") and "\r" not in err
    bar.update("d")  # the last item: always shown
    assert capsys.readouterr().err.startswith("sweep 4/4 ")
    bar.close()
    assert capsys.readouterr().err == ""


def test_no_items_show_nothing(capsys, monkeypatch, terminal):
    """A command with nothing to do (every sweep item cached, total 0) shows no display:
    no empty bar, and on a terminal no blank line at close."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    bar = Progress(0, True, desc="sweep", unit="item")
    assert not bar.enabled and bar.bar is None
    bar.close()
    assert capsys.readouterr().err == ""
