"""Audit of laudtriton/gpureport.py and benchmarks/gpu_overhead.py (host side, no GPU):
failed dense timings in the report, the plot written in its place, and an earlier run's
outputs in gpu_overhead's --out."""

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest

from laudtriton import gpureport
from laudtriton.gpucheck import record

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_overhead.py"
MEMBERS = json.dumps({"laud_resnet50": ["layer1.0"]})


def _row(key: str, variant: str, seconds: float, rate: float = 0.5) -> dict:
    return {"mode": "spatial", "spec": key, "spec_key": key, "batch": 1, "rate": rate,
            "models": MEMBERS, "variant": variant, "dtype": "float16", "config": "{}",
            "seconds": seconds, "ratio": seconds / 2.0}


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0])
def test_a_block_without_a_usable_dense_timing_is_left_out_not_a_0x_ratio(tmp_path, bad):
    """A block whose dense timing is NaN/inf made the dense sum inf and printed best
    "0.00x" (a variant infinitely faster); a dense timing of 0 raised ZeroDivisionError
    in ``table`` (gpucheck's last step). Such a block is now left out of the sums and
    counted as untimed (``partial``)."""
    rows = [_row("k0", "dense", 2.0), _row("k0", "gather", 1.0),
            _row("k1", "dense", bad), _row("k1", "gather", 1.0)]
    c = gpureport.model_curves(rows, "laud_resnet50")[("spatial", 1)]
    assert c["dense"] == {0.5: 2.0} and c["gather"] == {0.5: 1.0}
    assert c["best"] == {0.5: 1.0}
    assert gpureport.coverage(rows, "laud_resnet50") == {("spatial", 1): {0.5: 1}}
    r = record.Run(tmp_path, 10, "cpu")
    r.rows = rows
    line = next(ln for ln in gpureport.table(r, ["laud_resnet50"]).splitlines()
                if ln.startswith("laud_resnet50"))
    assert line.split()[3:5] == ["2000.00", "nanx"] and line.split()[5] == "0.50x"
    assert "inf" not in line and "0.00x" not in line


def test_no_dense_timing_at_all_gives_no_row_and_no_plot(tmp_path):
    rows = [_row("k0", "gather", 1.0), _row("k0", "dense", math.nan)]
    assert gpureport.model_curves(rows, "laud_resnet50") == {}
    r = record.Run(tmp_path, 10, "cpu")
    r.rows = rows
    assert not [ln for ln in gpureport.table(r, ["laud_resnet50"]).splitlines()
                if ln.startswith("laud_resnet50")]
    assert not gpureport.plot(rows, "laud_resnet50", tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_plot_replaces_the_file_atomically(tmp_path, monkeypatch):
    """A run killed while the PNG was written left a truncated image where the last
    whole one was; the plot is now drawn into a temp file beside it, then renamed."""
    from matplotlib.figure import Figure

    path = tmp_path / "latency.png"
    path.write_bytes(b"the last whole plot")
    rows = [_row("k0", "dense", 2.0), _row("k0", "gather", 1.0)]

    real_savefig = Figure.savefig

    def savefig(fig, fname, **kw):  # the old code's write in its place, cut short
        if isinstance(fname, (str, Path)):
            Path(fname).write_bytes(b"\x89PNG half")
            raise KeyboardInterrupt("killed while saving")
        return real_savefig(fig, fname, **kw)

    def killed(fd):  # the new code's: the temp file written, not yet renamed
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(Figure, "savefig", savefig)
    monkeypatch.setattr(os, "fsync", killed)  # undone before the next write
    with pytest.raises(KeyboardInterrupt):
        gpureport.plot(rows, "laud_resnet50", path)
    assert path.read_bytes() == b"the last whole plot"
    assert [p.name for p in tmp_path.iterdir()] == ["latency.png"]  # no temp file left
    monkeypatch.undo()
    assert gpureport.plot(rows, "laud_resnet50", path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["latency.png"]
    assert gpureport.plot(rows, "laud_resnet50", tmp_path / "l.svg")  # format: suffix
    assert b"<svg" in (tmp_path / "l.svg").read_bytes()[:500]


def test_gpu_overhead_removes_an_earlier_runs_outputs(tmp_path):
    """A second run in the same --out appended to the first run's overhead.log and left
    its kernels.txt (part 6 not asked for, or not reached) as if this run's; its
    overhead.csv/json stood until this run's first write."""
    spec = importlib.util.spec_from_file_location("gpu_overhead", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    names = ("overhead.log", "overhead.csv", "overhead.json", "kernels.txt")
    for n in names:
        (tmp_path / n).write_text("STALE from an earlier run\n")
    (tmp_path / "mine.txt").write_text("kept")
    assert mod.main(["--out", str(tmp_path), "--device", "cpu", "--parts", "1",
                     "--budget", "3600"]) == 0
    assert not (tmp_path / "kernels.txt").exists()
    for n in names[:3]:
        assert "STALE" not in (tmp_path / n).read_text()
    assert (tmp_path / "mine.txt").read_text() == "kept"


def test_gpu_overhead_out_that_cannot_be_made_exits_2_not_a_traceback(tmp_path, capsys):
    """An --out that check_dir lets pass but that cannot be made (here: below a folder
    without write permission; /proc/x on the GPU machine) raised an OSError traceback
    from mkdir; it is now an argparse error naming --out, before any work."""
    import os

    if os.geteuid() == 0:
        out = "/proc/laudtriton_no_such/out"  # not even root makes a folder there
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = str(locked / "out")
    spec = importlib.util.spec_from_file_location("gpu_overhead", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit) as e:
        mod.main(["--out", out, "--device", "cpu", "--parts", "1"])
    assert e.value.code == 2
    assert f"--out {out!r} cannot be made or written" in capsys.readouterr().err
