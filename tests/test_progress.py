"""laudtriton.progress: the stderr display of long commands (sweep, bench)."""

import sys

from laudtriton.progress import Progress


def test_the_progress_eta_counts_measured_items_only(capsys, monkeypatch):
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


def test_a_step_can_count_as_several_items(capsys, monkeypatch):
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
