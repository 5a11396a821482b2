"""Review of 9018dc0 and 8fe3a97 (session 63): ``laudtriton plot`` under SIGTERM before
its figures are drawn, and the path a figure's failed write is named by."""

import os
import signal
import time

import pytest

from laudtriton.cli import main


def _rows() -> list[dict]:
    """A tiny sweep's rows: one block, two variants, two rates."""
    from laudtriton.ops import BlockSpec

    spec = BlockSpec(16, 8, 16, 1, False, (8, 8), "spatial", 2)
    return [{"model": "tinynet", "block": "layer1.0", "spec": spec.short(), "S": 2,
             "rate": rate, "variant": v, "config": "{}", "seconds": t,
             "flops_ratio": rate, "spec_key": spec.key(), "device": "cpu",
             "asked_rate": rate}
            for rate in (0.25, 0.5) for v, t in (("dense", 1e-3), ("v", 0.5e-3 + rate * 1e-3))]


def test_sigterm_while_plot_fits_its_line_removes_the_out_folder(
        sigterm_guard, tmp_path, monkeypatch, capsys):
    """SIGTERM was turned into Ctrl-C only while the figures were drawn: one that came
    after --out was made (the predicted line fitted, up to seconds) killed plot, exit
    -15, the empty folder left. Now it stops as Ctrl-C: 130, the folder removed, one
    line, the handler before it back after."""
    import laudtriton.plot_command as pc
    from laudtriton.tune.sweep_csv import write_csv

    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    csv = write_csv(_rows(), tmp_path / "s.csv")

    def fit(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal is taken at the next Python instruction
    monkeypatch.setattr(pc, "predicted_curves", fit)
    out = tmp_path / "new" / "figs"
    assert main(["plot", "--from", str(csv), "--out", str(out), "--device", "cpu"]) == 130
    assert not (tmp_path / "new").exists()
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"laudtriton plot: interrupted: --out {str(out)!r} not made")
    with pytest.raises(sigterm_guard):  # the handler before it (the guard's) is back
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)


def test_a_figure_that_cannot_be_written_is_named_not_its_temp_file(tmp_path, capsys):
    """8fe3a97 wrote each PNG through a temp file: a figure path that cannot be written
    (here a link into a missing folder) was named by the temp file's path,
    '<target>.laudtriton-<random>.tmp', where a plain write named the figure."""
    from laudtriton.plot import plot_latency_vs_rate
    from laudtriton.tune.sweep_csv import write_csv

    out = tmp_path / "out"
    out.mkdir()
    fig = out / "tinynet_spatial_b1_float32_blocks.png"
    fig.symlink_to(tmp_path / "missing" / "x.png")
    with pytest.raises(FileNotFoundError) as e:
        plot_latency_vs_rate(_rows(), out)
    assert e.value.filename == str(fig)
    csv = write_csv(_rows(), tmp_path / "s.csv")
    assert main(["plot", "--from", str(csv), "--out", str(out), "--no-predicted"]) == 2
    assert capsys.readouterr().err == (
        f"laudtriton plot: error: --out {str(out)!r} cannot be written ({fig}: No such "
        "file or directory)\n")
    assert sorted(p.name for p in out.iterdir()) == [fig.name]
    assert not (tmp_path / "missing").exists()
