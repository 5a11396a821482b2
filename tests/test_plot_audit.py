"""Audit of ``laudtriton plot``: flag and size cells of rows the figures must not misread,
and the error of a figure path that cannot be written."""

from __future__ import annotations

import argparse
import math
import re

import pytest

from laudtriton.ops import BlockSpec
from laudtriton.plot import plot_latency_vs_rate
from laudtriton.plot_command import add_plot_parser
from laudtriton.plot_rows import group_rows
from laudtriton.tune.sweep_csv import write_csv

SPEC = BlockSpec(24, 6, 24, 1, False, (10, 10), "spatial", 2)


def _rows(**extra) -> list[dict]:
    """A one-block sweep of model 'tinynet': dense and one variant at two rates."""
    return [{"model": "tinynet", "block": "layer1.0", "spec": SPEC.short(), "S": 2,
             "rate": rate, "variant": v, "config": "{}", "seconds": t,
             "flops_ratio": rate, "spec_key": SPEC.key(), "device": "cpu",
             "asked_rate": rate, **extra}
            for rate in (0.25, 0.5) for v, t in (("dense", 1e-3), ("v", 0.5e-3 + rate * 1e-3))]


def _run(argv: list[str]) -> int:
    """``laudtriton plot`` on argv, without cli.main's logging set-up (no global state)."""
    p = argparse.ArgumentParser()
    add_plot_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["plot", *argv])
    return args.func(args)


@pytest.mark.parametrize("cell", ["1.0", "yes", "2"])
def test_plot_command_refuses_a_clustered_cell_neither_0_nor_1(tmp_path, capsys, cell):
    """A clustered sweep's rows whose 'clustered' cell reads '1.0' (a CSV rewritten by
    pandas), 'yes' or '2' were taken for scattered ones, silently: drawn in the scattered
    figure, its best line the faster of the two mask kinds, the predicted line over
    them. Now one error line naming the row and the column; no --out folder is made."""
    rows = _rows(clustered=0) + _rows(clustered=cell, seconds=0.1e-3)
    csv = write_csv(rows, tmp_path / "s.csv")
    out = tmp_path / "o"
    assert _run(["--from", str(csv), "--out", str(out), "--no-predicted"]) == 2
    err = capsys.readouterr().err
    assert err == (f"laudtriton plot: error: --from {str(csv)!r}: row 5, column "
                   f"'clustered': {cell!r} is not 0 or 1 (nor true, false or empty)\n")
    assert not out.exists()


def test_rows_given_with_clustered_as_a_float_get_figures_of_their_own(tmp_path):
    """clustered=1.0 (a float column, as pandas gives one with a gap in it) was read as
    scattered: str(1.0) is '1.0', not '1'."""
    rows = _rows(clustered=0.0) + _rows(clustered=1.0)
    paths = plot_latency_vs_rate(rows, tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        f"tinynet_spatial_b1_float32{c}_{f}.png" for c in ("", "_clustered")
        for f in ("blocks", "model"))


MISSING = object()  # the cell's column left out of the row


@pytest.mark.parametrize("column,cell,says", [
    ("dispatched", "0.0", "'0.0' is not 0 or 1"), ("dispatched", 2, "2 is not 0 or 1"),
    ("clustered", float("nan"), "nan is not 0 or 1"),
    ("input_size", "big", "'big' is not a positive int"),
    ("input_size", 64.5, "64.5 is not a positive int"),
    ("rate", 5, "5 is outside [0, 1]"), ("rate", float("nan"), "nan is outside [0, 1]"),
    ("asked_rate", -0.5, "-0.5 is outside [0, 1]"), ("rate", "abc", "'abc' is not a number"),
    ("seconds", -1e-3, "-0.001 is not a positive time"),
    ("seconds", None, "None is not a number"),
    ("flops_ratio", "x", "'x' is not a number"),
    ("flops_ratio", float("inf"), "inf is not a finite ratio >= 0"),
    ("seconds", MISSING, None), ("block", MISSING, None),
])
def test_rows_given_with_a_bad_cell_are_refused(tmp_path, column, cell, says):
    """Rows given to plot_latency_vs_rate were drawn unchecked (read_csv checks a CSV's):
    a dispatched '0.0' kept the row and 2 counted as 1, a clustered nan was scattered, a
    rate 5, a nan rate or seconds -1 were drawn as they were, a missing column was a
    KeyError, 'abc' or None Python's float() error, an input_size 'big' its int() one.
    Now a ValueError naming the row, the column and the value; nothing is written."""
    rows = _rows()
    rows[2] = {k: v for k, v in rows[2].items() if k != column}
    if cell is not MISSING:
        rows[2][column] = cell
    says = f"no column {column!r}" if says is None else f"column {column!r}: {says}"
    with pytest.raises(ValueError, match=re.escape(f"the rows given: row 3, {says}")):
        plot_latency_vs_rate(rows, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("column,cell", [("model", ""), ("model", None), ("block", None),
                                         ("block", " "), ("variant", ""), ("variant", None)])
def test_rows_given_with_an_empty_name_are_refused(tmp_path, column, cell):
    """A row given with block None failed in re.split (a TypeError), and an empty or None
    model or variant was drawn: figures '_spatial_...png' and 'None_...png', a line with no
    name. read_csv refuses these cells of a CSV ('is empty'); so does the rows' check."""
    rows = _rows()
    rows[2][column] = cell
    with pytest.raises(ValueError, match=re.escape(f"the rows given: row 3, column {column!r} "
                                                   "is empty")):
        plot_latency_vs_rate(rows, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_rows_given_with_a_failed_config_as_nan_or_inf_are_drawn_without_it(tmp_path):
    """nan and inf seconds (a failed config) are not refused: that config is left out."""
    rows = _rows() + [dict(r, seconds=t) for r in _rows()[:2] for t in (math.nan, math.inf)]
    assert len(plot_latency_vs_rate(rows, tmp_path)) == 2


def test_rows_given_with_input_size_as_text_are_named_as_numbers():
    """input_size '224' (text, as csv.DictReader gives it) made figures '..._i224', which
    a 224 leaves out; '64' and 64 made two figures of one sweep."""
    assert sorted(group_rows(_rows(input_size="224"))) == ["tinynet_spatial_b1_float32"]
    mixed = _rows(input_size="64")[:2] + _rows(input_size=64)[2:]
    assert sorted(group_rows(mixed)) == ["tinynet_spatial_b1_float32_i64"]


def test_plot_command_names_the_figure_path_it_cannot_write(tmp_path, capsys):
    """A folder where a figure goes said "--out 'o' cannot be written (Is a directory)",
    of --out, which is a directory: the message names the figure's path now."""
    csv = write_csv(_rows(), tmp_path / "s.csv")
    blocked = tmp_path / "o" / "tinynet_spatial_b1_float32_blocks.png"
    blocked.mkdir(parents=True)
    assert _run(["--from", str(csv), "--out", str(tmp_path / "o"),
                 "--no-predicted"]) == 2
    assert capsys.readouterr().err == (
        f"laudtriton plot: error: --out {str(tmp_path / 'o')!r} cannot be written "
        f"({blocked}: Is a directory)\n")
