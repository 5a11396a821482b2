"""The plots' dense line is the dense block's time (the fastest timing at rate 1), not the
``dense`` variant's masked timing, which in channel mode runs unpacked convolutions at
1.1-2.8x the dense block and overstated every speedup in the channel figures."""

from __future__ import annotations

import pytest

from laudtriton.ops import BlockSpec
from laudtriton.plot import plot_latency_vs_rate
from laudtriton.plot_rows import group_rows, spec_curves

SPEC = BlockSpec(32, 8, 32, 1, False, (7, 7), "channel", 1, channel_groups=4)
RATES = (0.25, 0.5, 1.0)
MASKED = 10e-3  # the dense variant, masks applied (unpacked convolutions)
SLICE = {0.25: 1.5e-3, 0.5: 2.5e-3, 1.0: 4e-3}  # slice at rate 1: the packed dense block


def _rows(rates=RATES) -> list[dict]:
    rows = []
    for block in ("layer1.0", "layer1.1"):
        for rate in rates:
            for variant, t in (("dense", MASKED), ("slice", SLICE[rate])):
                rows.append({"model": "tinynet", "block": block, "spec": SPEC.short(),
                             "S": 1, "rate": rate, "variant": variant, "config": "{}",
                             "seconds": t, "flops_ratio": rate * rate,
                             "spec_key": SPEC.key(), "device": "cpu"})
    return rows


def test_dense_line_is_the_fastest_timing_at_rate_one():
    g = next(iter(group_rows(_rows()).values()))
    c = spec_curves(g, SPEC.key(), None)
    assert c["dense"] == {r: pytest.approx(SLICE[1.0]) for r in RATES}
    assert c["masked dense"] == {r: MASKED for r in RATES}  # still drawn, as a variant
    assert c["ideal"] == {r: pytest.approx(SLICE[1.0] * r * r) for r in RATES}
    assert c["best"] == SLICE  # the dense variant loses everywhere here


def test_without_rate_one_the_dense_variant_is_the_dense_line():
    rates = (0.25, 0.5)
    g = next(iter(group_rows(_rows(rates)).values()))
    c = spec_curves(g, SPEC.key(), None)
    assert c["dense"] == {r: MASKED for r in rates}
    assert "masked dense" not in c
    assert c["ideal"] == {r: pytest.approx(MASKED * r * r) for r in rates}


def test_figures_label_and_sum_the_dense_line(tmp_path, monkeypatch):
    from laudtriton import plot as plot_mod

    labels: list[list[str]] = []
    totals: list[dict] = []
    real = plot_mod._draw

    def spy(ax, curves, colors):
        real(ax, curves, colors)
        labels.append(ax.get_legend_handles_labels()[1])
        totals.append(curves)

    monkeypatch.setattr(plot_mod, "_draw", spy)
    paths = plot_latency_vs_rate(_rows(), tmp_path)
    assert [p.name for p in paths] == ["tinynet_channel_b1_float32_blocks.png",
                                       "tinynet_channel_b1_float32_model.png"]
    assert "dense" in labels[0] and "masked dense" in labels[0]
    assert totals[-1]["dense"] == {r: pytest.approx(2 * SLICE[1.0]) for r in RATES}
    assert totals[-1]["masked dense"] == {r: pytest.approx(2 * MASKED) for r in RATES}


def test_sweep_summary_measures_against_the_dense_block(capsys):
    """The sweep's summary put slice at 0.25x "dense" at rate 0.5 here, against the
    masked dense variant; against the dense block it is 0.625x."""
    from laudtriton.tune.commands import _print_summary

    rows = [r for r in _rows() if r["block"] == "layer1.0"]
    _print_summary(rows)
    lines = capsys.readouterr().out.splitlines()[1:]
    got = {float(ln.split()[-5]): ln.split()[-4:] for ln in lines}
    assert got[0.5] == ["slice", "2.500", "4.000", "0.62"]
    assert got[1.0] == ["slice", "4.000", "4.000", "1.00"]
    _print_summary([r for r in rows if r["rate"] != 1.0])  # no rate 1: the dense variant
    lines = capsys.readouterr().out.splitlines()[1:]
    got = {float(ln.split()[-5]): ln.split()[-4:] for ln in lines}
    assert got == {0.25: ["slice", "1.500", "10.000", "0.15"],
                   0.5: ["slice", "2.500", "10.000", "0.25"]}


def test_rows_given_with_numbers_for_names_are_drawn_as_a_csv_would_name_them(tmp_path):
    """A block or variant given as a number (3, 7) raised a TypeError inside plot.py's
    name sort; a CSV holds them as text, and rows given are read the same way."""
    rows = [dict(r, block=int(r["block"][-1]) + 3, variant=7 if r["variant"] == "slice"
                 else "dense") for r in _rows()]
    g = next(iter(group_rows(rows).values()))
    assert list(g["blocks"]) == ["3", "4"]
    c = spec_curves(g, SPEC.key(), None)
    assert c["7"] == SLICE and c["masked dense"] == {r: MASKED for r in RATES}
    paths = plot_latency_vs_rate(rows, tmp_path)
    assert [p.name for p in paths] == ["tinynet_channel_b1_float32_blocks.png",
                                       "tinynet_channel_b1_float32_model.png"]
