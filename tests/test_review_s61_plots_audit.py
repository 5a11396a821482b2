"""Review of a4044d0/adde4df (the plots' "dense" line is the fastest timing at rate 1) and
e715a73 (one per-cell rule for read_csv and rows given to the plots): where the new dense
line is not the dense block, and what it must keep doing."""

from __future__ import annotations

import math

import pytest

from laudtriton.ops import BlockSpec
from laudtriton.plot import plot_latency_vs_rate
from laudtriton.plot_rows import group_rows, spec_curves
from laudtriton.tune.sweep_csv import read_csv, write_csv

A = BlockSpec(32, 8, 32, 1, False, (7, 7), "channel", 1, channel_groups=4)
B = BlockSpec(64, 16, 64, 1, False, (7, 7), "channel", 1, channel_groups=4)
MASKED = 10e-3  # the dense variant (masks applied, unpacked convolutions)
SLICE = {0.25: 1.5e-3, 0.5: 2.5e-3, 1.0: 4e-3}  # slice; at rate 1 the dense block


def _row(block: str, spec: BlockSpec, rate: float, variant: str, seconds: float,
         **extra) -> dict:
    return dict(model="tinynet", block=block, spec=spec.short(), S=1, rate=rate,
                variant=variant, config="{}", seconds=seconds, flops_ratio=rate * rate,
                spec_key=spec.key(), device="cpu", **extra)


def _two_blocks(b_at_rate_one: str) -> list[dict]:
    """layer1.0 timed at 0.25, 0.5 and 1; layer1.1 (another spec) with every config at
    rate 1 failed (inf), or with no rate 1 at all (its masks never realised 1)."""
    rows = []
    for block, spec in (("layer1.0", A), ("layer1.1", B)):
        for rate in SLICE:
            for variant, t in (("dense", MASKED), ("slice", SLICE[rate])):
                if block == "layer1.1" and rate == 1.0:
                    if b_at_rate_one == "absent":
                        continue
                    t = math.inf
                rows.append(_row(block, spec, rate, variant, t))
    return rows


@pytest.mark.parametrize("b_at_rate_one", ["failed", "absent"])
def test_model_dense_line_does_not_sum_a_dense_block_with_a_masked_dense_line(
        tmp_path, monkeypatch, b_at_rate_one):
    """layer1.0's "dense" is its dense block (4 ms, rate 1's fastest), layer1.1's falls
    back to the dense variant's masked 10 ms (no finite rate 1): the whole-model "dense"
    line summed the two (14 ms), a number of neither definition, and "masked dense"
    (which layer1.1 does not name) had no point at all."""
    from laudtriton import plot as plot_mod

    drawn: list[dict] = []
    real = plot_mod._draw

    def spy(ax, curves, colors):
        real(ax, curves, colors)
        drawn.append(curves)

    monkeypatch.setattr(plot_mod, "_draw", spy)
    paths = plot_latency_vs_rate(_two_blocks(b_at_rate_one), tmp_path)
    assert paths[-1].name.endswith("_model.png")
    mixed = SLICE[1.0] + MASKED
    dense = drawn[-1].get("dense", {})
    assert not any(t == pytest.approx(mixed) for t in dense.values()), dense
    # the fix: one spec lacks its dense block, so the whole group falls back to the
    # dense variant's line (2 x 10 ms), as before a4044d0
    assert dense == {r: pytest.approx(2 * MASKED) for r in (0.25, 0.5)}
    assert "masked dense" not in drawn[-1]


BOTH = BlockSpec(256, 128, 512, 2, True, (4, 4), "both", 2, channel_groups=64)


def _both_rows() -> list[dict]:
    """Mode both, a 1x1 grid (tests/test_sweep.py's both_mode_net, layer4.0): a sweep at
    rates 0.3 and 0.6 (no 1.0) realises grid rates 0 and 1, the grid rate 1 item at channel
    rate 0.59 (FLOPs ratio 0.631); it is the one the cache keeps (dispatched 1)."""
    rows = []
    for rate, fr, asked, times in ((0.0, 0.276, 0.3, {"dense": 4e-4, "gather": 1e-4}),
                                   (1.0, 0.631, 0.6, {"dense": 4e-4, "gather": 2e-4})):
        for variant, t in times.items():
            rows.append(dict(_row("layer4.0", BOTH, rate, variant, t), flops_ratio=fr,
                             asked_rate=asked, dispatched=True))
    return rows


def test_both_mode_grid_rate_one_at_a_lower_channel_rate_is_not_the_dense_block():
    """The dense line (and the sweep summary's "dense ms") was the fastest timing at grid
    rate 1, here gather on 59% of the channels (FLOPs ratio 0.631): not the dense block
    "where every variant computes the whole block" that spec_curves documents, and every
    speedup of the figure was measured against 0.2 ms, not the dense variant's 0.4 ms."""
    g = next(iter(group_rows(_both_rows()).values()))
    c = spec_curves(g, BOTH.key(), None)
    assert c["dense"][0.0] != pytest.approx(2e-4), c["dense"]
    assert c["dense"] == {0.0: 4e-4, 1.0: 4e-4}  # the fix: the dense variant's line


def test_both_mode_summary_dense_is_not_a_lower_channel_rate_item(capsys):
    """The sweep summary's "dense ms" is the same fastest timing at grid rate 1 (0.200 ms,
    gather at channel rate 0.59), so rate 0's "x dense" read 0.50, not <= 0.25."""
    from laudtriton.tune.commands import _print_summary

    rows = _both_rows()
    _print_summary(rows)
    lines = capsys.readouterr().out.splitlines()[1:]
    dense_ms = {float(ln.split()[-5]): ln.split()[-2] for ln in lines}
    assert dense_ms[0.0] != "0.200", lines
    assert dense_ms == {0.0: "0.400", 1.0: "0.400"}  # the fix: the dense variant's


@pytest.mark.parametrize("cell", ["1.0", "0.9999999", "1"])
def test_rate_one_written_to_a_csv_as_text_keeps_the_dense_block_line(tmp_path, cell):
    """Pins (passes now): rate 1 as a CSV holds it ("1.0", "1", or 0.9999999, which the
    rows' 6-decimal key reads as 1) is rate 1 for the dense line, as the rows in memory."""
    rows = [_row("layer1.0", A, rate, v, t) for rate in SLICE
            for v, t in (("dense", MASKED), ("slice", SLICE[rate]))]
    path = write_csv(rows, tmp_path / "s.csv")
    text = path.read_text().replace(",1.0,dense,", f",{cell},dense,").replace(
        ",1.0,slice,", f",{cell},slice,")
    assert text.count(f",{cell},") >= 2
    path.write_text(text)
    g = next(iter(group_rows(read_csv(path)).values()))
    c = spec_curves(g, A.key(), None)
    assert c["dense"] == {r: pytest.approx(SLICE[1.0]) for r in SLICE}
    assert c["masked dense"] == {r: MASKED for r in SLICE}
