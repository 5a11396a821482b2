"""Latency-vs-rate plots from a tiny CSV, from rows and from the cache."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import pytest

from laudtriton.ops import BlockSpec
from laudtriton.ops.synthetic import synthetic_masks
from laudtriton.plot import _natural, plot_latency_vs_rate
from laudtriton.plot_command import add_plot_parser
from laudtriton.plot_rows import group_rows, rows_from_cache, spec_curves
from laudtriton.tune.cache import TuneCache
from laudtriton.tune.sweep_blocks import ideal_flops_ratio
from laudtriton.tune.sweep_csv import read_csv, write_csv

SPECS = [BlockSpec(24, 6, 24, 1, False, (10, 10), "spatial", 2),
         BlockSpec(24, 12, 48, 2, True, (10, 10), "spatial", 1)]
BLOCKS = [("layer1.0", 0), ("layer1.1", 0), ("layer2.0", 1)]


def _rows(with_ratio: bool = True) -> list[dict]:
    rows = []
    for name, i in BLOCKS:
        spec = SPECS[i]
        for rate in (0.2, 0.5, 0.9):
            dense = 1e-3 * (i + 1)
            for variant, t in (("dense", dense), ("v_fast", dense * (0.2 + rate)),
                               ("v_slow", dense * 1.3)):
                for cfg, k in (("{}", 1.0), ('{"B":2}', 1.1)):
                    rows.append({"model": "tinynet", "block": name, "spec": spec.short(),
                                 "S": spec.granularity, "rate": rate, "variant": variant,
                                 "config": cfg, "seconds": t * k, "dense_seconds": dense,
                                 "ratio": t * k / dense,
                                 "flops_ratio": rate if with_ratio else "",
                                 "spec_key": spec.key(), "device": "cpu"})
    return rows


@pytest.fixture(autouse=True)
def _own_cache_folder(tmp_path_factory, monkeypatch):
    """Every test's default cache folder is an empty one of its own: $LAUDTRITON_CACHE_DIR
    as the shell set it (a missing folder, which plot refuses by name) or the checkout's
    autotune_cache/ (what it holds for this machine) changed what the commands said."""
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def drawn(monkeypatch) -> list[dict]:
    """The curves of every panel drawn, in order (the whole-model figure's last)."""
    from laudtriton import plot as plot_mod

    out = []
    real = plot_mod._draw
    monkeypatch.setattr(plot_mod, "_draw", lambda ax, curves, colors: (
        out.append(curves), real(ax, curves, colors)))
    return out


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_plot_from_csv(tmp_path):
    csv = write_csv(_rows(), tmp_path / "s.csv")
    paths = plot_latency_vs_rate(csv, tmp_path / "png")
    assert [p.name for p in paths] == ["tinynet_spatial_b1_float32_blocks.png",
                                       "tinynet_spatial_b1_float32_model.png"]
    assert all(_is_png(p) for p in paths)


def test_plot_out_with_a_tilde_is_the_home_directory(tmp_path, monkeypatch, capsys):
    """'--out=~/pp' reaches the program unexpanded: checked as $HOME/pp, it was written
    into a directory literally named '~'."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    csv = write_csv(_rows(), tmp_path / "s.csv")
    assert _run(["plot", "--from", str(csv), "--out=~/pp", "--no-predicted"]) == 0
    paths = [Path(p) for p in capsys.readouterr().out.split()]
    assert paths and all(p.parent == tmp_path / "home" / "pp" and _is_png(p) for p in paths)
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("with_ratio", [True, False])
def test_curves(with_ratio):
    g = next(iter(group_rows(_rows(with_ratio)[::-1]).values()))
    assert set(g["blocks"]) == {"layer1.0", "layer1.1", "layer2.0"}
    assert sorted(g["blocks"], key=_natural) == ["layer1.0", "layer1.1", "layer2.0"]
    assert sorted(["layer2.10", "layer2.9", "layer10.0"], key=_natural) == \
        ["layer2.9", "layer2.10", "layer10.0"]
    sid = SPECS[0].key()
    pred = {SPECS[0].short(): {0.2: 5e-4, 0.9: 9e-4}}
    c = spec_curves(g, sid, pred)
    assert c["dense"] == {0.2: 1e-3, 0.5: 1e-3, 0.9: 1e-3}  # fastest config per rate
    assert c["v_fast"][0.5] == pytest.approx(0.7e-3)
    assert c["best"] == {r: min(c["dense"][r], c["v_fast"][r]) for r in (0.2, 0.5, 0.9)}
    assert c["predicted"] == {0.2: 5e-4, 0.9: 9e-4}
    assert sorted(c["ideal"]) == [0.2, 0.5, 0.9]
    for r, t in c["ideal"].items():  # dense x FLOPs ratio: the rows' own, else the ideal
        fr = r if with_ratio else ideal_flops_ratio(SPECS[0], synthetic_masks(SPECS[0], r))
        assert 0 < fr < 1 and t == pytest.approx(1e-3 * fr)
    if not with_ratio:  # S=2 on 10x10: 25 cells, round(25r) of them (a hand value)
        assert c["ideal"][0.2] < c["ideal"][0.5] < c["ideal"][0.9] < 1e-3


def test_plot_rows_with_predicted_and_failed(tmp_path, drawn):
    """A failed (inf) row draws no line; a prediction draws the "predicted" line of its
    spec's panel only."""
    rows = _rows()
    rows.append({**rows[0], "variant": "v_broken", "seconds": float("inf")})
    paths = plot_latency_vs_rate(rows, tmp_path, predicted={SPECS[1].key(): {0.5: 1e-3}})
    assert len(paths) == 2 and all(_is_png(p) for p in paths)
    panels, model = drawn[:-1], drawn[-1]
    assert len(panels) == 2 and not any("v_broken" in c for c in drawn)
    assert [c.get("predicted") for c in panels] == [None, {0.5: 1e-3}]
    assert set(model) >= {"dense", "v_fast", "v_slow"}


def test_plot_command_reads_the_failed_rows_sweep_writes(tmp_path, capsys):
    """A failed config scores inf seconds and a failed dense variant leaves nan dense
    seconds; sweep writes such rows, and the plot command skips them."""
    rows = _rows()
    rows.append({**rows[0], "variant": "v_broken", "seconds": float("inf"),
                 "dense_seconds": float("nan"), "ratio": float("nan")})
    csv = write_csv(rows, tmp_path / "failed.csv")
    assert _run(["plot", "--from", str(csv), "--out", str(tmp_path / "o"),
                 "--no-predicted"]) == 0
    assert all(_is_png(Path(p)) for p in capsys.readouterr().out.split())


def test_plot_command_says_when_it_leaves_out_the_predicted_line(tmp_path, capsys):
    """Without a calibration (or timings to fit it on) the figures have no predicted
    line; the command said nothing of it, though its help promises the line."""
    csv = write_csv(_rows(), tmp_path / "t.csv")
    (tmp_path / "empty").mkdir()
    argv = ["plot", "--from", str(csv), "--out", str(tmp_path / "o"), "--cache-dir",
            str(tmp_path / "empty")]
    assert _run(argv) == 0
    assert "laudtriton plot: no predicted line: " in capsys.readouterr().err
    assert _run(argv + ["--no-predicted"]) == 0
    assert capsys.readouterr().err == ""


def test_plot_command_checks_the_device_name_without_the_predicted_line(tmp_path, capsys):
    """A CSV plotted with --no-predicted reads no device, yet a --device that names none
    is refused there too ('gpu' went through); a CUDA device this machine lacks is not
    needed there, and accepted."""
    csv = write_csv(_rows(), tmp_path / "t.csv")
    argv = ["plot", "--from", str(csv), "--out", str(tmp_path / "o"), "--no-predicted"]
    assert _run(argv + ["--device", "gpu"]) == 2
    assert capsys.readouterr().err == ("laudtriton plot: error: --device 'gpu' unknown; "
                                       "accepted: 'cpu', 'cuda', 'cuda:N'\n")
    assert not (tmp_path / "o").exists()
    assert _run(argv + ["--device", "cuda:3"]) == 0
    assert all(_is_png(Path(p)) for p in capsys.readouterr().out.split())


def test_plot_rejects_empty(tmp_path):
    write_csv([], tmp_path / "e.csv")
    with pytest.raises(ValueError, match="no timings"):
        plot_latency_vs_rate(tmp_path / "e.csv", tmp_path)


def _failed(rows: list[dict]) -> list[dict]:
    """The rows as sweep writes them when every config failed."""
    return [dict(r, seconds=float("inf"), ratio=float("inf")) for r in rows]


@pytest.mark.parametrize("predicted", [False, True])
def test_plot_command_all_failed_csv_is_one_line(tmp_path, capsys, predicted):
    """Every seconds inf: one line naming the CSV (it was matplotlib's "number sections
    must be larger than 0.")."""
    csv = write_csv(_failed(_rows()), tmp_path / "allinf.csv")
    argv = ["plot", "--from", str(csv), "--out", str(tmp_path / "o")]
    assert _run(argv + ([] if predicted else ["--no-predicted"])) == 2
    assert capsys.readouterr().err == (
        f"laudtriton plot: error: --from {str(csv)!r}: nothing finite was measured: all "
        f"{len(_rows())} timings are inf or nan (every config failed)\n")
    assert not (tmp_path / "o").exists()


def test_plot_all_failed_rows_raise(tmp_path):
    rows = _failed(_rows())
    rows[0]["seconds"] = float("nan")
    with pytest.raises(ValueError, match="^the rows given: nothing finite was measured"):
        plot_latency_vs_rate(rows, tmp_path)


def test_plot_skips_a_model_whose_every_config_failed(tmp_path, caplog):
    rows = _rows() + [dict(r, model="failnet") for r in _failed(_rows())]
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        paths = plot_latency_vs_rate(rows, tmp_path)
    assert [p.name for p in paths] == ["tinynet_spatial_b1_float32_blocks.png",
                                       "tinynet_spatial_b1_float32_model.png"]
    assert "failnet_spatial_b1_float32: nothing finite was measured" in caplog.text


def test_plot_model_figure_without_a_common_rate(tmp_path, drawn, caplog):
    """Each block measured at other rates than the others: no rate has every block, so
    there is no whole-model figure, and a warning says why (it failed in matplotlib, then
    drew an empty figure, silently: a CSV without its asked_rate column did so)."""
    rows = [r for r in _rows() if (r["rate"] == 0.2) == (r["block"] == "layer2.0")]
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        paths = plot_latency_vs_rate(rows, tmp_path)
    assert [p.name for p in paths] == ["tinynet_spatial_b1_float32_blocks.png"]
    assert all(c for c in drawn) and not (tmp_path / "tinynet_spatial_b1_float32_model.png"
                                          ).exists()
    assert "no rate at which every block has a timing" in caplog.text


def test_plot_keeps_input_sizes_apart(tmp_path, drawn):
    """Sweeps of one model at two input sizes: the whole-model figure was refused (its
    blocks had "several specs") and a CSV at 64 wrote over the 224 figures' files."""
    small = {s.key(): dataclasses.replace(s, in_hw=(4, 4)) for s in SPECS}
    rows = [{**r, "input_size": 224} for r in _rows()]
    rows += [{**r, "input_size": 64, "spec": small[r["spec_key"]].short(),
              "spec_key": small[r["spec_key"]].key(), "seconds": r["seconds"] * 0.25,
              "dense_seconds": r["dense_seconds"] * 0.25} for r in _rows()]
    paths = plot_latency_vs_rate(write_csv(rows, tmp_path / "s.csv"), tmp_path / "png")
    assert sorted(p.name for p in paths) == sorted(
        f"tinynet_spatial_b1_float32{i}_{f}.png" for i in ("", "_i64")
        for f in ("blocks", "model"))
    # panels dense 1 and 2 ms, model 4 ms (1 + 1 + 2); at 64 a quarter of each
    assert sorted(c["dense"][0.5] for c in drawn) == pytest.approx(
        sorted(m * k * 1e-3 for k in (1.0, 0.25) for m in (1, 2, 4)))


def test_plot_two_granularities_of_one_model_draw_every_panel_and_no_mixed_sum(
        tmp_path, drawn, caplog):
    """Sweeps of one model at two granularities (a cache keeps both): layer1's blocks
    have two specs. Every spec gets its panel, and there is no whole-model figure, which
    summed one spec per block, possibly of different sweeps (only a warning said so)."""
    other = SPECS[0].with_(granularity=1)
    rows = _rows() + [dict(r, spec=other.short(), spec_key=other.key(), S=1,
                           seconds=r["seconds"] * 2)
                      for r in _rows() if r["block"].startswith("layer1")]
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        paths = plot_latency_vs_rate(rows, tmp_path)
    assert [p.name for p in paths] == ["tinynet_spatial_b1_float32_blocks.png"]
    assert len(drawn) == 3  # panels: SPECS[0], other, SPECS[1]; no model figure
    assert drawn[1]["dense"] == {r: pytest.approx(2e-3) for r in (0.2, 0.5, 0.9)}
    assert "layer1.0, layer1.1 have timings for several specs" in caplog.text


def test_model_figure_sums_blocks_at_the_asked_rate(tmp_path, monkeypatch):
    """The rates the masks realise differ between blocks (round(r·N)/N); the whole-model
    figure sums each block at the rate the sweep asked for (the CSV's asked_rate). By
    realised rate no rate had every block, and the figure was empty."""
    from laudtriton import plot as plot_mod

    realised = {0.2: 0.204, 0.5: 0.49, 0.9: 0.898}
    rows = []
    for r in _rows():
        r = dict(r, asked_rate=r["rate"])
        if r["block"] == "layer2.0":
            r["rate"] = realised[r["rate"]]
        rows.append(r)
    drawn = []
    real = plot_mod._draw
    monkeypatch.setattr(plot_mod, "_draw", lambda ax, curves, colors: (
        drawn.append(curves), real(ax, curves, colors)))
    plot_latency_vs_rate(write_csv(rows, tmp_path / "s.csv"), tmp_path / "png")
    model = drawn[-1]  # the whole-model figure is drawn last
    assert sorted(model["dense"]) == [0.2, 0.5, 0.9]
    assert model["dense"][0.5] == pytest.approx(1e-3 + 1e-3 + 2e-3)


def _run(argv):
    p = argparse.ArgumentParser()
    add_plot_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return args.func(args)


def test_plot_command_from_cache(tmp_path, capsys):
    c = TuneCache(tmp_path / "cache")
    c.dir.mkdir()  # empty (one that does not exist is refused: test_cli)
    assert _run(["plot", "--from", "cache", "--cache-dir", str(c.dir),
                 "--out", str(tmp_path / "o")]) == 2
    assert "no current timings" in capsys.readouterr().err
    for rate in (0.25, 0.75):
        c.record(SPECS[0], rate, {"dense": {"{}": 1e-3}},
                 meta={"models": {"tinynet": ["layer1.0", "layer1.1"]}, "flops_ratio": rate})
    assert _run(["plot", "--from", "cache", "--cache-dir", str(c.dir),
                 "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out.split()
    assert len(out) == 2 and all(_is_png(Path(p)) for p in out)


def test_model_figure_from_the_cache_counts_every_asked_rate(tmp_path, monkeypatch):
    """A realised rate may stand for several asked ones (a 2x2 grid realises 0.25 for
    0.3 and 0.5 alike... here 0 for 0.3 and 0.5): the cache entry lists them all
    (meta asked_rates) and the whole-model figure has a point at each, where blocks
    whose own rates differ are summed. An entry without asked rates (an older cache)
    counts at its own rate."""
    from laudtriton import plot as plot_mod
    from laudtriton.plot_rows import rows_from_cache

    c = TuneCache(tmp_path)
    meta = {"models": {"tinynet": ["layer1.0"]}}
    c.record(SPECS[0], 0.0, {"dense": {"{}": 1e-3}}, {**meta, "asked_rates": [0.3]})
    c.record(SPECS[0], 0.0, {"dense": {"{}": 1e-3}}, {**meta, "asked_rates": [0.5]})
    meta2 = {"models": {"tinynet": ["layer2.0"]}}
    for realised, asked in ((0.28, 0.3), (0.52, 0.5)):
        c.record(SPECS[1], realised, {"dense": {"{}": 2e-3}}, {**meta2, "asked_rates": [asked]})
    c.record(SPECS[1], 0.9, {"dense": {"{}": 2e-3}}, meta2)  # no asked rates
    rows = rows_from_cache(TuneCache(tmp_path))
    assert sorted((r["rate"], r["asked_rate"]) for r in rows if r["block"] == "layer1.0") \
        == [(0.0, 0.3), (0.0, 0.5)]
    drawn = []
    real = plot_mod._draw
    monkeypatch.setattr(plot_mod, "_draw", lambda ax, curves, colors: (
        drawn.append(curves), real(ax, curves, colors)))
    plot_latency_vs_rate(rows, tmp_path / "png")
    assert drawn[-1]["dense"] == {0.3: pytest.approx(3e-3), 0.5: pytest.approx(3e-3)}


def test_plot_command_missing_csv(tmp_path, capsys):
    assert _run(["plot", "--from", str(tmp_path / "nope.csv"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no such CSV" in err and "Traceback" not in err


def test_plot_draws_a_model_swept_with_a_mode_per_stage_as_one(tmp_path, drawn, caplog):
    """A sweep with a mode per stage was drawn as one partial "whole-model" figure per
    mode (each summing only its own blocks), without a word."""
    channel = SPECS[1].with_(mode="channel", granularity=1, channel_groups=6)
    rows = [dict(r, spec=channel.short(), spec_key=channel.key(), S=1)
            if r["block"] == "layer2.0" else r for r in _rows()]
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        paths = plot_latency_vs_rate(write_csv(rows, tmp_path / "s.csv"), tmp_path / "png")
    assert sorted(p.name for p in paths) == [
        f"tinynet_spatial-channel_b1_float32_{f}.png" for f in ("blocks", "model")]
    assert drawn[-1]["dense"][0.5] == pytest.approx(1e-3 + 1e-3 + 2e-3)  # every block
    assert "laudtriton" not in caplog.text
    # the same blocks swept once per mode (a cache that keeps both sweeps): a figure each
    both = _rows() + [dict(r, spec=channel.short(), spec_key=channel.key(), S=1)
                      for r in _rows()]
    names = sorted(p.name for p in plot_latency_vs_rate(both, tmp_path / "png2"))
    assert names == sorted(f"tinynet_{m}_b1_float32_{f}.png" for m in ("spatial", "channel")
                           for f in ("blocks", "model"))


def test_plot_leaves_out_the_rows_the_cache_does_not_keep(tmp_path, drawn):
    """Mode both: two asked rates realising one grid rate at two channel rates are two
    items; the plot kept the faster's time at that rate and the other's FLOPs ratio, and
    counted it for both asked rates. It draws the item the cache keeps (column
    dispatched), as a plot from the cache does."""
    rows = []
    for r in _rows():
        rows.append(dict(r, asked_rate=r["rate"], dispatched=True))
        rows.append(dict(r, asked_rate=min(1.0, r["rate"] + 0.05), dispatched=False,
                         seconds=r["seconds"] / 10, flops_ratio=0.01))
    csv = write_csv(rows, tmp_path / "s.csv")
    assert {r["dispatched"] for r in read_csv(csv)} == {True, False}
    plot_latency_vs_rate(csv, tmp_path / "png")
    assert drawn[0]["dense"] == {r: pytest.approx(1e-3) for r in (0.2, 0.5, 0.9)}
    assert drawn[0]["ideal"][0.5] == pytest.approx(0.5e-3)  # its own FLOPs ratio
    assert sorted(drawn[-1]["dense"]) == [0.2, 0.5, 0.9]  # asked rates of kept rows only


def test_read_csv_takes_old_csvs_and_a_byte_order_mark(tmp_path):
    """A CSV written before the dispatched column reads as every row kept; a CSV saved
    by a spreadsheet with a UTF-8 byte-order mark was refused ("missing columns
    ['model']")."""
    path = write_csv(_rows(), tmp_path / "s.csv")
    text = path.read_text()
    old = "\n".join(line.rsplit(",", 1)[0] for line in text.splitlines()) + "\n"
    assert old.splitlines()[0].endswith(",input_size")
    (tmp_path / "old.csv").write_text(old)
    rows = read_csv(tmp_path / "old.csv")
    assert len(rows) == len(_rows()) and all(r["dispatched"] is True for r in rows)
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert len(read_csv(tmp_path / "bom.csv")) == len(_rows())


def _bad_csv(tmp_path, row: int, column: str, value) -> Path:
    rows = _rows()
    rows[row][column] = value
    return write_csv(rows, tmp_path / "bad.csv")


# a valid BlockSpec on a map no sweep times (plot's predicted curve allocated 80 GB for it)
HUGE_KEY = BlockSpec(64, 64, 256, 1, True, (100000, 100000), "spatial", 4).key()


@pytest.mark.parametrize("column,value,says", [
    ("rate", "abc", "column 'rate': 'abc' is not a number"),
    ("seconds", "", "column 'seconds': '' is not a number"),
    ("flops_ratio", "x", "column 'flops_ratio': 'x' is not a number"),
    ("flops_ratio", "inf", "column 'flops_ratio': inf is not a finite ratio >= 0"),
    ("flops_ratio", -0.5, "column 'flops_ratio': -0.5 is not a finite ratio >= 0"),
    ("S", 0, "column 'S': '0' is not a patch size >= 1"),
    ("S", "-3", "column 'S': '-3' is not a patch size >= 1"),
    ("S", "2.5", "column 'S': '2.5' is not a patch size >= 1"),
    ("input_size", "-64", "column 'input_size': '-64' is not a positive int"),
    ("input_size", "x", "column 'input_size': 'x' is not a positive int"),
    ("rate", 1.5, "column 'rate': 1.5 is outside [0, 1]"),
    ("rate", -0.25, "column 'rate': -0.25 is outside [0, 1]"),
    ("seconds", -0.001, "column 'seconds': -0.001 is not a positive time (or inf, a "
     "failed config)"),
    ("seconds", 0.0, "column 'seconds': 0 is not a positive time (or inf, a failed config)"),
    ("seconds", "nan", "column 'seconds': nan is not a positive time (or inf, a failed "
     "config)"),
    ("dense_seconds", "-inf", "column 'dense_seconds': -inf is not a positive time (or nan, "
     "a failed dense variant)"),
    ("spec_key", "{}", "column 'spec_key': '{}' is not a block spec"),
    ("spec_key", "[1", "column 'spec_key': '[1' is not a block spec"),
    ("spec_key", '{"granularity": 0}', "column 'spec_key': '{\"granularity\": 0}' is not a "
     "block spec"),
    ("spec_key", HUGE_KEY, f"column 'spec_key': {HUGE_KEY[:80]!r} is a block larger than a "
     "sweep times (map sides up to 4096, batch up to 4096)"),
    ("model", "", "column 'model' is empty"),
    ("block", " ", "column 'block' is empty"),
    ("variant", "", "column 'variant' is empty"),
    ("dispatched", "maybe", "column 'dispatched': 'maybe' is not 0 or 1"),
])
def test_plot_command_names_file_row_and_column_of_a_bad_cell(tmp_path, capsys, column,
                                                              value, says):
    csv = _bad_csv(tmp_path, 4, column, value)
    assert _run(["plot", "--from", str(csv), "--out", str(tmp_path / "o"),
                 "--no-predicted"]) == 2
    assert capsys.readouterr().err == f"laudtriton plot: error: {csv}: row 5 (line 6), {says}\n"
    assert not (tmp_path / "o").exists()


def test_plot_command_header_only_csv_names_the_file(tmp_path, capsys):
    csv = write_csv([], tmp_path / "e.csv")
    assert _run(["plot", "--from", str(csv), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"laudtriton plot: error: --from {str(csv)!r}: the "
                                       "CSV holds no timing rows\n")


def test_plot_command_refuses_an_out_inside_a_file(tmp_path, capsys):
    """As gpucheck's --out and every --cache-dir (before, the figures failed to save)."""
    (tmp_path / "f").write_text("x")
    out = str(tmp_path / "f" / "o")
    assert _run(["plot", "--from", "cache", "--out", out]) == 2
    assert capsys.readouterr().err == (f"laudtriton plot: error: --out {out!r} is not a "
                                       f"directory (it lies inside the file "
                                       f"{str(tmp_path / 'f')!r})\n")


@pytest.mark.parametrize("argv,says", [
    (["--from", "cache", "--out", ""], "--out '' is empty"),
    (["--from", "", "--out", "o"], "--from '' is empty"),
    (["--from", "cache", "--out", "o", "--cache-dir", ""], "--cache-dir '' is empty"),
])
def test_plot_command_refuses_empty_paths(tmp_path, capsys, monkeypatch, argv, says):
    monkeypatch.chdir(tmp_path)
    assert _run(["plot", *argv]) == 2
    assert capsys.readouterr().err.startswith(f"laudtriton plot: error: {says}")
    assert list(tmp_path.iterdir()) == []  # nothing written in the cwd


def test_predicted_curves_need_a_calibration_and_follow_the_rows(tmp_path, capsys):
    import torch

    from laudtriton.ops import BlockSpec
    from laudtriton.plot_command import predicted_curves
    from laudtriton.predict.calibration import Calibration, save_calibration
    from laudtriton.tune.cache import TuneCache
    from laudtriton.tune.keys import device_fingerprint

    spec = BlockSpec(64, 16, 64, 1, False, (14, 14), "spatial", 2, 0, 1)
    rows = [{"model": "m", "block": "layer1.0", "spec": spec.short(), "spec_key": spec.key(),
             "rate": r, "variant": v, "seconds": 1e-3} for r in (0.2, 0.6)
            for v in ("dense", "gather")]
    assert predicted_curves(rows, tmp_path) is None  # not calibrated, no cache
    cache = TuneCache(tmp_path, device="cpu")
    for b in (0.2, 0.6):
        cache.record(spec, b, {"dense": {"{}": 2e-3}, "gather": {"{}": 1e-3 + b * 1e-3}})
    save_calibration(Calibration(device_fingerprint("cpu"), "cpu", {"float32": 5e10}, 1e10,
                                 2e-6, torch.get_num_threads(), 2), tmp_path)
    pred = predicted_curves(rows, tmp_path)
    assert set(pred) == {spec.key()} and set(pred[spec.key()]) == {0.2, 0.6}
    assert 0 < pred[spec.key()][0.2] <= pred[spec.key()][0.6]
    # a variant with no latency model (a CSV of an older version): left out, with a note
    old = rows + [dict(rows[0], variant="retired")]
    assert predicted_curves(old, tmp_path) == pred
    assert "no latency model for variant(s) retired" in capsys.readouterr().err
    # float64 rows (compile(dtype=torch.float64) writes such timings into the cache):
    # the latency model has no peak rate for them, and predict_block's ValueError ended
    # the whole plot; now left out, with a note, as rows without a spec_key (an older CSV)
    wide = dataclasses.replace(spec, dtype="float64")
    f64 = [dict(r, spec=wide.short(), spec_key=wide.key()) for r in rows]
    keyless = [{k: v for k, v in r.items() if k != "spec_key"} for r in rows]
    assert predicted_curves(rows + f64 + keyless, tmp_path) == pred
    err = capsys.readouterr().err
    assert "4 row(s) of a dtype the latency model has no peak rate for" in err
    assert "4 row(s) without a spec_key (a CSV of an older version)" in err


def test_plot_command_no_predicted_line_for_another_device(tmp_path, capsys):
    """Rows timed on a GPU, plotted here (--device cpu): the CPU predictor's line would
    describe another machine, so it is left out, with a note."""
    rows = [dict(r, device="NVIDIA H200") for r in _rows()]
    csv = write_csv(rows, tmp_path / "g.csv")
    assert _run(["plot", "--from", str(csv), "--out", str(tmp_path / "o")]) == 0
    assert "timed on NVIDIA H200" in capsys.readouterr().err


def test_plot_command_no_predicted_needs_no_device(tmp_path, capsys):
    """A CSV plotted with --no-predicted never reads --device (a GPU sweep plotted on a
    machine without one)."""
    csv = write_csv([dict(r, device="NVIDIA H200") for r in _rows()], tmp_path / "g.csv")
    assert _run(["plot", "--from", str(csv), "--out", str(tmp_path / "o"),
                 "--device", "cuda", "--no-predicted"]) == 0
    assert capsys.readouterr().err == ""


def test_a_panel_named_by_its_spec_shows_it_once(tmp_path, monkeypatch):
    """Cache entries without block names (a compile's quick tuning) are named by their
    spec, which the panel title printed twice."""
    from laudtriton import plot as plot_mod
    from laudtriton.plot_rows import rows_from_cache

    c = TuneCache(tmp_path)
    c.record(SPECS[0], 0.5, {"dense": {"{}": 1e-3}}, {"asked_rates": [0.5]})
    c.record(SPECS[1], 0.5, {"dense": {"{}": 2e-3}},
             {"models": {"tinynet": ["layer2.0"]}, "asked_rates": [0.5]})
    titles = []
    real = plot_mod._draw
    monkeypatch.setattr(plot_mod, "_draw", lambda ax, curves, colors: (
        titles.append(ax), real(ax, curves, colors)))
    plot_latency_vs_rate(rows_from_cache(TuneCache(tmp_path)), tmp_path / "o")
    got = {ax.get_title() for ax in titles}
    assert SPECS[0].short() in got and f"layer2.0\n{SPECS[1].short()}" in got
    assert f"{SPECS[0].short()}\n{SPECS[0].short()}" not in got


@pytest.mark.parametrize("predicted", [False, True])
def test_plot_out_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch,
                                                     predicted):
    """An --out the figures cannot be written to (here under /proc) is one error line
    naming it (timings from a CSV: the shipped cache holds none for an unknown machine),
    said before the predicted line is fitted (it was said after)."""
    from laudtriton import plot_command
    from laudtriton.cli import main

    fitted = []
    monkeypatch.setattr(plot_command, "predicted_curves", lambda *a: fitted.append(a))
    csv = write_csv(_rows(), tmp_path / "s.csv")
    assert main(["plot", "--from", str(csv), "--out", "/proc/laudtriton-plots"]
                + ([] if predicted else ["--no-predicted"])) == 2
    assert fitted == []
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("laudtriton plot: error:")
    assert "--out '/proc/laudtriton-plots' cannot be made or written" in err
    assert "Traceback" not in err


def test_plot_out_folder_that_exists_but_cannot_be_written_is_refused_first(
        tmp_path, capsys, monkeypatch):
    """An existing --out where no file can be written (a read-only folder: root writes
    anywhere, so the write is made to fail) is refused before the predicted line is
    fitted, as sweep and gpucheck refuse theirs; it was refused only once the figures
    were written. The folder stays."""
    import errno

    from laudtriton import plot_command
    from laudtriton.cli import main
    from laudtriton.tune import paths

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    fitted = []
    monkeypatch.setattr(plot_command, "predicted_curves", lambda *a: fitted.append(a))
    monkeypatch.setattr(paths.tempfile, "TemporaryFile", refuse)
    csv = write_csv(_rows(), tmp_path / "s.csv")
    out = tmp_path / "figs"
    out.mkdir()
    assert main(["plot", "--from", str(csv), "--out", str(out)]) == 2
    assert fitted == [] and out.is_dir()
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"laudtriton plot: error: --out {str(out)!r} cannot be made or written (Permission "
        "denied)")


def test_plot_refused_after_making_its_folder_removes_it(tmp_path, capsys, monkeypatch):
    """An error after --out was made (here the predicted line's) left the new, empty
    folders behind; an --out that existed stays."""
    from laudtriton import plot_command

    def fails(*args):
        raise ValueError("the predicted line fails")

    monkeypatch.setattr(plot_command, "predicted_curves", fails)
    csv = write_csv(_rows(), tmp_path / "s.csv")
    assert _run(["plot", "--from", str(csv), "--out", str(tmp_path / "a" / "b")]) == 2
    assert "the predicted line fails" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    (tmp_path / "kept").mkdir()
    assert _run(["plot", "--from", str(csv), "--out", str(tmp_path / "kept")]) == 2
    assert (tmp_path / "kept").is_dir()


def test_plot_command_refuses_a_bad_cache_variable_before_making_its_folder(
        tmp_path, capsys, monkeypatch):
    """A bad $LAUDTRITON_CACHE was refused only after the folder was made and the
    predicted line announced; sweep and design refuse it first."""
    csv = write_csv(_rows(), tmp_path / "s.csv")
    monkeypatch.setenv("LAUDTRITON_CACHE", "maybe")
    assert _run(["plot", "--from", str(csv), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == ("laudtriton plot: error: LAUDTRITON_CACHE='maybe': "
                                       "accepted 0, false, off, no (the cache disabled) or 1, "
                                       "true, on, yes (enabled)\n")
    assert not (tmp_path / "o").exists()
    # a CSV plotted without the predicted line reads no cache: neither the variable nor
    # the cache folder is read
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path / "missing"))
    assert _run(["plot", "--from", str(csv), "--out", str(tmp_path / "o"),
                 "--no-predicted", "--cache-dir", str(tmp_path / "missing too")]) == 0


def test_plot_draws_a_figure_per_mode_of_the_cache_s_unnamed_entries(tmp_path):
    """Entries no sweep named (compile's timings, model UNNAMED, a "block" per spec) are
    of no one network: two modes of them are two figures, not one per-stage model."""
    channel = SPECS[1].with_(mode="channel", granularity=1, channel_groups=6)
    cache = TuneCache(tmp_path / "c")
    cache.record(SPECS[0], 0.5, {"dense": {"{}": 1e-3}}, {"asked_rates": [0.5]})
    cache.record(channel, 0.5, {"dense": {"{}": 2e-3}}, {"asked_rates": [0.5]})
    rows = rows_from_cache(TuneCache(tmp_path / "c"))
    names = sorted(p.name for p in plot_latency_vs_rate(rows, tmp_path / "png"))
    assert names == ["cache_channel_b1_float32_blocks.png", "cache_spatial_b1_float32_blocks.png"]


def test_plot_splits_figures_by_device_and_mask_kind(tmp_path, drawn):
    """One CSV holding two machines' sweeps and a clustered one: each gets its own
    figures. Before, every point of a panel was the fastest over all three (here all
    from the clustered run, at 0.3x the scattered times) and nothing was said."""
    rows = []
    for device, clustered, k in (("cpu A", 0, 1.0), ("cpu B", 0, 0.5), ("cpu A", 1, 0.3)):
        rows += [{**r, "device": device, "clustered": clustered, "seconds": r["seconds"] * k}
                 for r in _rows()]
    paths = plot_latency_vs_rate(write_csv(rows, tmp_path / "s.csv"), tmp_path / "png")
    names = sorted(p.name for p in paths)
    assert names == sorted(f"tinynet_spatial_b1_float32_cpu_{d}{c}_{f}.png"
                           for d, c in (("A", ""), ("B", ""), ("A", "_clustered"))
                           for f in ("blocks", "model"))
    # per figure: the panels of SPECS[0] and SPECS[1] (dense 1 and 2 ms x k) and the
    # model (layer1.0 + layer1.1 + layer2.0: 4 ms x k), k the figure's own run only
    assert sorted(c["dense"][0.5] for c in drawn) == pytest.approx(sorted(
        m * k * 1e-3 for k in (1.0, 0.5, 0.3) for m in (1, 2, 4)))


def test_plot_file_names_never_collide_and_stay_short(tmp_path):
    """Models 'a/b' and 'a_b' both wrote a_b_..._blocks.png (the second overwrote the
    first, exit 0), and a 300-character model name gave a file name the file system
    refused, which plot blamed on --out."""
    from laudtriton.plot import MAX_STEM

    rows = [{**r, "model": m} for m in ("a/b", "a_b", "m" * 300) for r in _rows()]
    paths = plot_latency_vs_rate(write_csv(rows, tmp_path / "s.csv"), tmp_path / "png")
    assert len(paths) == 6 and len(set(paths)) == 6 and all(_is_png(p) for p in paths)
    assert all(len(p.name) <= MAX_STEM + len("_blocks.png") for p in paths)
    # named from the model still; a hash where the slugs meet or the name is cut
    assert sum(p.name.startswith("a_b_") for p in paths) == 4
    assert sum(p.name.startswith("m" * 100) for p in paths) == 2
    again = plot_latency_vs_rate(list(reversed(rows)), tmp_path / "again")
    assert sorted(p.name for p in again) == sorted(p.name for p in paths)  # order-free


def test_plot_draws_no_whole_model_of_unnamed_cache_entries(tmp_path, caplog):
    """Entries no sweep named (compile's timings) are shapes of no one network: panels,
    and no 'sum over blocks' figure, which summed them before."""
    from laudtriton.plot_rows import rows_from_cache

    c = TuneCache(tmp_path)
    for spec, t in zip(SPECS, (1e-3, 2e-3)):
        c.record(spec, 0.5, {"dense": {"{}": t}}, {"asked_rates": [0.5]})
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        paths = plot_latency_vs_rate(rows_from_cache(TuneCache(tmp_path)), tmp_path / "o")
    assert [p.name for p in paths] == ["cache_spatial_b1_float32_blocks.png"]
    assert "no whole-model figure" in caplog.text


def test_plot_command_from_a_disabled_cache_says_so(tmp_path, capsys, monkeypatch):
    c = TuneCache(tmp_path)
    c.record(SPECS[0], 0.5, {"dense": {"{}": 1e-3}}, {"models": {"t": ["layer1.0"]}})
    monkeypatch.setenv("LAUDTRITON_CACHE", "0")
    assert _run(["plot", "--from", "cache", "--cache-dir", str(tmp_path),
                 "--out", str(tmp_path / "o"), "--no-predicted"]) == 2
    assert "the cache is disabled (LAUDTRITON_CACHE=0)" in capsys.readouterr().err


def test_one_panel_figure_is_wide_enough_for_its_title(tmp_path):
    from matplotlib.image import imread

    rows = [r for r in _rows() if r["block"] == "layer2.0"]
    (blocks, _) = plot_latency_vs_rate(rows, tmp_path / "o")
    assert imread(blocks).shape[1] >= 6.4 * 110


def test_plot_from_a_csv_with_a_tilde_is_in_the_home_directory(tmp_path, monkeypatch,
                                                                capsys):
    """'--from=~/x.csv' (no shell to expand it) said "no such CSV file"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    write_csv(_rows(), tmp_path / "s.csv")
    assert _run(["plot", "--from=~/s.csv", "--out", str(tmp_path / "png"),
                 "--no-predicted"]) == 0
    assert (tmp_path / "png" / "tinynet_spatial_b1_float32_model.png").is_file()


def _laud_rows(layout: str, blocks: set[str] | None = None) -> list[dict]:
    """Rows of a sweep of LAUD-ResNet-50 with the modes ``layout`` (one per stage), every
    block or those of ``blocks``: dense 1 ms a block, a variant at half of it."""
    from laudtriton.predict.network import model_specs

    rows = []
    for name, spec in model_specs("laud_resnet50", layout, 4, 1):
        if blocks is not None and name not in blocks:
            continue
        for variant, t in (("dense", 1e-3), ("v_fast", 0.5e-3)):
            rows.append({"model": "laud_resnet50", "block": name, "spec": spec.short(),
                         "S": spec.granularity, "rate": 0.5, "variant": variant,
                         "config": "{}", "seconds": t, "dense_seconds": 1e-3,
                         "ratio": t / 1e-3, "flops_ratio": 0.5, "spec_key": spec.key(),
                         "device": "cpu", "asked_rate": 0.5})
    return rows


@pytest.fixture
def titles(monkeypatch) -> list[str]:
    """The titles of every axes of the figures made, after they are saved."""
    from laudtriton import plot as plot_mod

    figs = []
    real = plot_mod._new_figure
    monkeypatch.setattr(plot_mod, "_new_figure", lambda **kw: figs.append(real(**kw))
                        or figs[-1])

    class Titles(list):
        def __call__(self) -> list[str]:
            return [ax.get_title() for f in figs for ax in f.axes]
    return Titles()


def test_a_laud_model_swept_with_a_mode_per_stage_is_one_figure(tmp_path, drawn, caplog):
    """Every block of LAUD-ResNet-50 in the stages' modes: one figure, summing all 16."""
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        paths = plot_latency_vs_rate(_laud_rows("spatial-channel-layer-spatial"), tmp_path)
    assert sorted(p.name for p in paths) == [
        f"laud_resnet50_spatial-channel-layer-spatial_b1_float32_{f}.png"
        for f in ("blocks", "model")]
    assert drawn[-1]["dense"][0.5] == pytest.approx(16e-3)
    assert "laudtriton" not in caplog.text


def test_separate_sweeps_in_other_modes_are_not_summed_as_one_model(tmp_path, drawn, caplog,
                                                                     titles):
    """Stage 1 swept in spatial mode and stage 2 in channel mode were summed into one
    'laud_resnet50_spatial-channel' figure, a configuration no sweep can run, over 5 of
    16 blocks, without a word; blocks of one stage in two modes (only two sweeps give
    that) too, under the modes sorted. Now each sweep gets its own figure, each saying
    it is partial."""
    rows = (_laud_rows("spatial", {"layer1.0", "layer1.1", "layer1.2"})
            + _laud_rows("channel", {"layer2.0", "layer2.1"}))
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        paths = plot_latency_vs_rate(rows, tmp_path / "a")
    assert sorted(p.name for p in paths) == sorted(
        f"laud_resnet50_{m}_b1_float32_{f}.png" for m in ("spatial", "channel")
        for f in ("blocks", "model"))
    assert "the rows hold 3 of the model's 16 blocks" in caplog.text
    assert "the rows hold 2 of the model's 16 blocks" in caplog.text
    model_titles = [t for t in titles() if "sum over" in t]
    assert [t.split(": ", 1)[1].split("\n")[0] for t in model_titles] == [
        "partial sweep, sum over 3 of the model's 16 blocks",
        "partial sweep, sum over 2 of the model's 16 blocks"]
    mixed_stage = [dict(r, model="tinynet") for r in
                   _laud_rows("spatial", {"layer1.0"}) + _laud_rows("channel", {"layer1.1"})
                   + _laud_rows("spatial", {"layer2.0"})]
    names = sorted(p.name for p in plot_latency_vs_rate(mixed_stage, tmp_path / "b"))
    assert names == sorted(f"tinynet_{m}_b1_float32_{f}.png" for m in ("spatial", "channel")
                           for f in ("blocks", "model"))


def test_no_whole_model_figure_names_the_blocks_that_failed(tmp_path, caplog):
    """A block whose every config failed left no rate for the sum, and the warning
    blamed a missing asked_rate column the rows had."""
    rows = [dict(r, seconds=float("inf")) if r["block"] == "layer1.0" else r
            for r in _laud_rows("spatial")]
    with caplog.at_level(logging.WARNING, logger="laudtriton"):
        paths = plot_latency_vs_rate(rows, tmp_path)
    assert [p.name for p in paths] == ["laud_resnet50_spatial_b1_float32_blocks.png"]
    assert "block(s) layer1.0 have no finite timing (every config failed)" in caplog.text
    assert "asked_rate" not in caplog.text


def test_plot_command_says_the_cache_is_disabled_when_no_predicted_line(tmp_path, capsys,
                                                                         monkeypatch):
    """With LAUDTRITON_CACHE=off the reason given was a missing calibration or timings,
    both of which the directory held."""
    csv = write_csv(_rows(), tmp_path / "t.csv")
    monkeypatch.setenv("LAUDTRITON_CACHE", "off")
    assert _run(["plot", "--from", str(csv), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "no predicted line: the cache is disabled (LAUDTRITON_CACHE=off)" in err
    assert "has no calibration" not in err


def test_spec_of_row_is_none_for_a_spec_key_this_version_cannot_build():
    """A spec_key BlockSpec.from_dict refuses (a field this version lacks: TypeError; not
    JSON: ValueError) or none at all gives no spec, rather than an exception."""
    import json

    from laudtriton.plot_rows import spec_of_row

    good = SPECS[0].key()
    assert spec_of_row({"spec_key": good}) == SPECS[0]
    newer = json.dumps({**json.loads(good), "a_later_field": 1})
    assert spec_of_row({"spec_key": newer}) is None
    assert spec_of_row({"spec_key": "{not json"}) is None
    assert spec_of_row({"spec_key": json.dumps({"mode": "spatial"})}) is None  # KeyError
    assert spec_of_row({"spec_key": ""}) is None and spec_of_row({}) is None


def test_rows_given_with_clustered_true_get_figures_of_their_own(tmp_path, drawn):
    """Rows passed as dicts may say clustered=True (a bool, not the CSV's 1): they are
    the clustered sweep's, and get '_clustered' figures apart from the scattered ones."""
    rows = _rows() + [{**r, "clustered": True, "seconds": r["seconds"] * 0.3}
                      for r in _rows()]
    rows = [{**r, "clustered": r.get("clustered", False)} for r in rows]
    paths = plot_latency_vs_rate(rows, tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        f"tinynet_spatial_b1_float32{c}_{f}.png" for c in ("", "_clustered")
        for f in ("blocks", "model"))
    assert sorted(c["dense"][0.5] for c in drawn) == pytest.approx(sorted(
        m * k * 1e-3 for k in (1.0, 0.3) for m in (1, 2, 4)))


@pytest.mark.parametrize("kept, dropped", [("1", "0"), ("true", " False"), (True, 0.0)])
def test_rows_given_with_dispatched_as_text_leave_out_the_zeros(tmp_path, drawn, kept,
                                                                dropped):
    """Rows as csv.DictReader gives them (dispatched '0' or '1', or 'false'/'true' as
    read_csv accepts, text) or as numbers: a 0 or false row is one the cache does not
    keep, left out as a False one is."""
    rows = []
    for r in _rows():
        rows.append(dict(r, dispatched=kept))
        rows.append(dict(r, dispatched=dropped, seconds=r["seconds"] / 10))
    plot_latency_vs_rate(rows, tmp_path)
    assert drawn[0]["dense"] == {r: pytest.approx(1e-3) for r in (0.2, 0.5, 0.9)}


def test_figures_draw_seconds_as_milliseconds(tmp_path, monkeypatch):
    """The y axes say 'latency (ms)': a block's 1e-3 s is drawn at 1.0, the whole
    model's sum (1 + 1 + 2 ms) at 4.0."""
    from laudtriton import plot as plot_mod

    figs = []
    real = plot_mod._new_figure
    monkeypatch.setattr(plot_mod, "_new_figure", lambda **kw: figs.append(real(**kw))
                        or figs[-1])
    plot_latency_vs_rate(_rows(), tmp_path)
    panel, model = figs[0].axes[0], figs[1].axes[0]

    def ydata(ax, label):
        return list(next(ln for ln in ax.get_lines() if ln.get_label() == label).get_ydata())

    assert panel.get_ylabel() == "latency (ms)"
    assert ydata(panel, "dense") == pytest.approx([1.0, 1.0, 1.0])
    assert model.get_ylabel().startswith("latency (ms)")
    assert ydata(model, "dense") == pytest.approx([4.0, 4.0, 4.0])
    assert ydata(model, "best per block") == pytest.approx(
        [1e3 * (2 * 1e-3 * min(1.0, 0.2 + r) + 2e-3 * min(1.0, 0.2 + r))
         for r in (0.2, 0.5, 0.9)])


def test_few_names_at_most_four_then_counts_them():
    """Warnings list up to four names; past four, the first four and how many in all."""
    from laudtriton.plot import _few

    assert _few(["a", "b", "c", "d"]) == "a, b, c, d"
    assert _few(["a", "b", "c", "d", "e"]) == "a, b, c, d, ... (5 in all)"


def test_a_file_name_of_max_stem_characters_is_kept_whole(tmp_path):
    """A group key whose slug is exactly MAX_STEM characters long is its own file name;
    one character more and it is cut short with a hash."""
    from laudtriton.plot import MAX_STEM

    suffix = "_spatial_b1_float32"
    fits, over = "m" * (MAX_STEM - len(suffix)), "n" * (MAX_STEM - len(suffix) + 1)
    rows = [{**r, "model": m} for m in (fits, over) for r in _rows()]
    names = {p.name for p in plot_latency_vs_rate(rows, tmp_path)}
    assert f"{fits}{suffix}_blocks.png" in names and f"{fits}{suffix}_model.png" in names
    assert not any(n.startswith(over + suffix) for n in names)
    cut = [n.rsplit("_", 1)[0] for n in names if n.startswith(over)]  # less the ending
    assert len(cut) == 2 and all(len(n) == MAX_STEM for n in cut)


def test_predicted_line_is_the_fastest_variant_at_each_rate(tmp_path, monkeypatch):
    """The predicted line of a block spec gives, at each rate of the rows, the predicted
    time of the fastest variant its rows hold (the least over them), not the slowest."""
    import laudtriton.ops  # noqa: F401  (registers every variant)
    from laudtriton.plot_command import predicted_curves
    from laudtriton.predict import calibration
    from laudtriton.predict.hardware import CPU_DEFAULT
    from laudtriton.predict.model import predict_block

    monkeypatch.setattr(calibration, "fitted_predictor", lambda cache, device: (CPU_DEFAULT, {}))
    rows = [r for r in _rows() if r["variant"] == "dense"]
    rows += [dict(r, variant="gather") for r in rows]
    got = predicted_curves(rows, tmp_path)
    assert set(got) == {s.key() for s in SPECS}
    for spec in SPECS:
        times = {rate: [predict_block(spec, rate, v, CPU_DEFAULT, {})
                        for v in ("dense", "gather")] for rate in (0.2, 0.5, 0.9)}
        assert any(a != b for a, b in times.values())  # the two variants' times differ
        assert got[spec.key()] == pytest.approx({r: min(t) for r, t in times.items()})


def test_plot_command_csv_of_rows_the_cache_does_not_keep_is_one_line(tmp_path, capsys):
    """A CSV whose rows all have dispatched 0 (a mode-both sweep whose every item is at
    another channel rate than the cache's entry of its grid rate): the figures leave
    such rows out, and plot exited 0 with no figure and no word, leaving an empty --out.
    Now refused in one line naming the CSV and the column."""
    csv = write_csv([dict(r, dispatched=False) for r in _rows()], tmp_path / "d0.csv")
    for extra in ([], ["--no-predicted"]):
        assert _run(["plot", "--from", str(csv), "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"laudtriton plot: error: --from {str(csv)!r}: all "
                              f"{len(_rows())} rows have dispatched 0")
        assert err.count("\n") == 1 and "nothing to plot" in err
        assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="rows have dispatched 0"):
        plot_latency_vs_rate(csv, tmp_path / "png")
    # the rows drawn all failed, those left out did not: "nothing finite" of the drawn
    rows = [dict(r, dispatched=False) for r in _rows()] + [
        dict(r, dispatched=True) for r in _failed(_rows())]
    with pytest.raises(ValueError, match=f"all {len(_rows())} timings drawn .dispatched 1. "
                                         "are inf or nan"):
        plot_latency_vs_rate(rows, tmp_path / "png")


def test_no_predicted_line_in_a_figure_of_clustered_masks(tmp_path, drawn, capsys,
                                                          monkeypatch):
    """The latency model predicts scattered masks (the cache it is fitted on holds only
    those); a CSV holding a clustered sweep got that prediction drawn in its clustered
    figure as if it were the prediction of what was measured there."""
    from laudtriton.plot_command import predicted_curves
    from laudtriton.predict import calibration
    from laudtriton.predict.hardware import CPU_DEFAULT

    monkeypatch.setattr(calibration, "fitted_predictor", lambda cache, device: (CPU_DEFAULT, {}))
    scattered = [dict(r, variant="gather" if r["variant"] == "v_fast" else r["variant"])
                 for r in _rows() if r["variant"] != "v_slow"]
    clustered = [dict(r, clustered=1, seconds=r["seconds"] * 0.3) for r in scattered]
    pred = predicted_curves(clustered, tmp_path)
    assert pred == {}
    assert f"{len(clustered)} row(s) on clustered masks" in capsys.readouterr().err
    pred = predicted_curves(scattered + clustered, tmp_path)
    assert set(pred) == {s.key() for s in SPECS}
    paths = plot_latency_vs_rate(write_csv(scattered + clustered, tmp_path / "s.csv"),
                                 tmp_path / "png", pred)
    assert sorted(p.name for p in paths) == sorted(
        f"tinynet_spatial_b1_float32{c}_{f}.png" for c in ("", "_clustered")
        for f in ("blocks", "model"))
    # drawn: the scattered figure's 2 panels and model, then the clustered figure's
    assert ["predicted" in c for c in drawn] == [True] * 3 + [False] * 3
