"""Review s66k: the docs walked through as a new user (README, docs/*.md) and the
``laudtriton plot`` command; regressions for what it found."""

from __future__ import annotations

import json

import pytest

from laudtriton.ops.spec import BlockSpec
from laudtriton.plot_rows import check_measured


def _row(**over: object) -> dict:
    """One sweep row as a caller of ``plot_latency_vs_rate`` may give it (a CSV's columns)."""
    spec = BlockSpec(in_channels=64, width=16, out_channels=64, in_hw=(8, 8), stride=1,
                     downsample=False, mode="spatial", granularity=2)
    row = {"model": "m", "block": "layer1.0", "spec": spec.short(), "rate": 1.0,
           "variant": "dense", "seconds": 1e-3, "spec_key": spec.key()}
    row.update(over)
    return row


def test_rows_given_refuse_a_spec_key_that_is_no_block_spec() -> None:
    """Rows given to the plots (``check_measured``, which ``plot_latency_vs_rate`` runs)
    were not held to read_csv's spec_key rule, which the check says it shares: a spec_key
    that is no BlockSpec's JSON was drawn silently under a figure name without mode, batch
    or dtype, and one given as a dict (JSON already parsed) raised TypeError (unhashable)
    in the middle of the drawing."""
    check_measured([_row()], "the rows given")  # a valid key passes
    check_measured([_row(spec_key="")], "the rows given")  # empty: an older CSV, passes
    with pytest.raises(ValueError, match=r"row 1, column 'spec_key'.*not a block spec"):
        check_measured([_row(spec_key="nope")], "the rows given")
    parsed = json.loads(_row()["spec_key"])
    with pytest.raises(ValueError, match=r"row 1, column 'spec_key'.*not a block spec"):
        check_measured([_row(spec_key=parsed)], "the rows given")


def test_rows_given_refuse_a_spec_key_larger_than_a_sweep_times() -> None:
    """read_csv refuses a spec_key whose map or batch is past what a sweep can time (the
    ideal line's masks of a 100000 x 100000 map took 80 GB); rows given to the plots
    passed, and the whole-model figure's ideal line then built masks of that size."""
    d = json.loads(_row()["spec_key"])
    d["in_hw"] = [100000, 100000]
    with pytest.raises(ValueError, match=r"column 'spec_key'.*larger than a sweep times"):
        check_measured([_row(spec_key=json.dumps(d))], "the rows given")


def test_plot_from_a_directory_says_it_is_one(tmp_path, capsys):
    """``plot --from .`` said "no such CSV file" of a directory that exists."""
    from laudtriton.cli import main

    assert main(["plot", "--from", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "a directory, not a CSV file" in err and "no such" not in err
    assert not (tmp_path / "o").exists()
