"""Long commands under Ctrl-C and SIGTERM, audited (session 63): ``laudtriton bench``,
``plot`` and ``demo`` say what they kept, a SIGTERM stops them (and bench's child
processes, ``--processes``) as Ctrl-C does, their temporary files removed, and a figure
whose write is cut short leaves the old PNG."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import laudtriton.bench as bench_mod
from laudtriton.cli import main


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("old", [True, False])
def test_interrupted_bench_says_its_csv_was_not_written(old, tmp_path, monkeypatch, capsys):
    """Ctrl-C in bench printed 'interrupted' alone: not that --csv was left as it was
    (the CSV is written at the end only), nor where the rates finished are."""
    csv = tmp_path / "b.csv"
    if old:
        csv.write_text("old\n")
    monkeypatch.setattr(bench_mod, "bench", _interrupt)
    assert main(["bench", "--tune", "off", "--rates", "0.5", "--csv", str(csv)]) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"laudtriton bench: interrupted: --csv {str(csv)!r} not written ("
                       + ("left as it was" if old else "no file made")
                       + "); the tables above hold the rates finished")
    assert (csv.read_text() == "old\n") if old else not csv.exists()
    assert list(tmp_path.iterdir()) == ([csv] if old else [])


def test_interrupted_bench_without_csv_says_where_its_rows_are(monkeypatch, capsys):
    """Without --csv the line says the tables printed hold what was finished."""
    monkeypatch.setattr(bench_mod, "bench", _interrupt)
    assert main(["bench", "--tune", "off", "--rates", "0.5", "--reps", "20"]) == 130
    assert capsys.readouterr().err == (
        "laudtriton bench: interrupted: no --csv asked for; the tables above hold the "
        "rates finished\n")


def _running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, exited but not reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_sigterm_stops_bench_and_its_child_processes(tmp_path):
    """SIGTERM killed ``bench --processes`` at once, without a word, while its child
    went on timing for minutes (reparented) and its temporary folder stayed in /tmp.
    Now it stops as on Ctrl-C: the child is stopped, the folder removed, exit 130 with
    one line and no traceback. (The children here are a stand-in that sleeps.)"""
    pidfile = tmp_path / "child.pid"
    fake = tmp_path / "fake_python.sh"
    fake.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 120\n")
    fake.chmod(0o755)
    script = textwrap.dedent(f"""
        import sys
        import laudtriton.bench_report as r
        real = r.run_processes
        r.run_processes = lambda argv, n, **k: real(argv, n, python={str(fake)!r}, **k)
        from laudtriton.cli import main
        sys.exit(main(["bench", "--tune", "off", "--rates", "0.5", "--model-only",
                       "--processes", "2", "--reps", "20", "--no-progress"]))
    """)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmpdir)})
    child = None
    try:
        deadline = time.monotonic() + 120
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        child = int(pidfile.read_text())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        time.sleep(0.5)
        assert not _running(child)
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert err.splitlines()[-1] == ("laudtriton bench: interrupted: no --csv asked for; "
                                        "the tables above hold the rates finished")
        assert list(tmpdir.iterdir()) == []  # the children's CSV folder removed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child is not None and _running(child):
            os.kill(child, signal.SIGKILL)


def test_interrupted_plot_removes_the_out_folder_it_made(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the figures were drawn left the --out folder plot had made, empty,
    and said only 'interrupted'; now the folder is removed (as on a refusal) and the
    line says so. (A folder that existed is kept.)"""
    import laudtriton.plot_command as pc

    csv = tmp_path / "s.csv"
    csv.write_text("model,block,spec,S,rate,variant,config,seconds\n"
                   "laud_resnet50,layer4.0,x,1,0.5,dense,{},0.01\n")
    monkeypatch.setattr(pc, "plot_latency_vs_rate", _interrupt)
    monkeypatch.setattr(pc, "check_measured", lambda rows, src: None)
    out = tmp_path / "new" / "figs"
    assert main(["plot", "--from", str(csv), "--out", str(out), "--no-predicted"]) == 130
    assert not (tmp_path / "new").exists()
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"laudtriton plot: interrupted: --out {str(out)!r} not made")
    kept = tmp_path / "kept"
    kept.mkdir()
    assert main(["plot", "--from", str(csv), "--out", str(kept), "--no-predicted"]) == 130
    assert kept.is_dir()
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"laudtriton plot: interrupted: --out {str(kept)!r} may hold some of the figures")


@pytest.mark.parametrize("tune, cache, kept", [
    ("off", "1", ""), ("quick", "0", ""),
    ("quick", "1", "; the blocks timed so far are in the autotune cache")])
def test_sigterm_stops_demo_as_ctrl_c(tune, cache, kept, sigterm_guard, monkeypatch,
                                      capsys, tmp_path):
    """A SIGTERM ended ``demo`` at once, without a word (and a cache file's write cut
    short left its temp file); now it stops as on Ctrl-C: exit 130, one line (the cache
    named only where compile writes to it), the handler before it back after."""
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("LAUDTRITON_CACHE", cache)

    def build(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal is taken at the next Python instruction
    monkeypatch.setattr(bench_mod, "build_model", build)
    assert main(["demo", "--tune", tune]) == 130
    assert capsys.readouterr().err == f"laudtriton demo: interrupted{kept}\n"
    with pytest.raises(sigterm_guard):  # the handler before it (the guard's) is back
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)


def test_a_figure_write_cut_short_leaves_the_old_png(tmp_path, monkeypatch):
    """``plot`` wrote each PNG straight to its path: an interrupt inside the write left a
    truncated PNG there (the audit's simulated cut: 244 bytes). It is written whole, to a
    temporary file moved into place, so the old figure stays."""
    from matplotlib.figure import Figure

    from laudtriton.ops import BlockSpec
    from laudtriton.plot import plot_latency_vs_rate

    spec = BlockSpec(16, 8, 16, 1, False, (8, 8), "spatial", 2)
    rows = [{"model": "tinynet", "block": "layer1.0", "spec": spec.short(), "S": 2,
             "rate": rate, "variant": v, "config": "{}", "seconds": t,
             "flops_ratio": rate, "spec_key": spec.key(), "device": "cpu",
             "asked_rate": rate}
            for rate in (0.25, 0.5) for v, t in (("dense", 1e-3), ("v", 0.5e-3 + rate * 1e-3))]
    first = plot_latency_vs_rate(rows, tmp_path)
    assert first
    before = {p: p.read_bytes() for p in first}
    real = Figure.savefig

    def cut_short(fig, fname, *args, **kwargs):  # a few bytes written, then Ctrl-C
        real(fig, fname, *args, **kwargs)
        if hasattr(fname, "truncate"):
            fname.truncate(200)
        else:
            with open(fname, "r+b") as fh:
                fh.truncate(200)
        raise KeyboardInterrupt
    monkeypatch.setattr(Figure, "savefig", cut_short)
    with pytest.raises(KeyboardInterrupt):
        plot_latency_vs_rate(rows, tmp_path)
    assert {p: p.read_bytes() for p in first} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in first)
