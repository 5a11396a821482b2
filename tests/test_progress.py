"""laudtriton.progress: the stderr display of long commands (sweep, bench)."""

from laudtriton.progress import Progress


def test_the_progress_eta_counts_measured_items_only(capsys):
    """Items found cached took no time but counted in the rate: a resumed sweep's ETA
    read 1 s for a 17 s run. No ETA before one item is measured."""
    bar = Progress(4, True, desc="sweep", unit="item")
    bar.bar = None  # the stderr line (no tqdm)
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
