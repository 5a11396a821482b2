"""The sweep's CSV and its rates, audited: a row longer than its header refused, a rate
that the rounding would take to 0 or 1 refused, and a bench CSV given to plot named."""

import re

import pytest

from laudtriton.bench_report import BenchRow
from laudtriton.bench_report import write_csv as write_bench_csv
from laudtriton.cli import main
from laudtriton.tune.options import check_rates, parse_rates
from laudtriton.tune.sweep_csv import read_csv, write_csv


def _sweep_csv(path):
    row = dict(model="laud_resnet50", block="layer1.0", spec="s", S=1, rate=0.5,
               variant="dense", config="c", seconds=1e-3, dense_seconds=1e-3, ratio=1.0,
               flops_ratio=0.5, spec_key="", device="cpu", clustered=0, asked_rate=0.5,
               input_size=224, dispatched=True)
    return write_csv([row, {**row, "variant": "gather"}], path)


@pytest.mark.parametrize("extra, more", [(",9", 1), (",9,", 2), (',"a,b"', 1)])
def test_read_csv_refuses_a_row_longer_than_its_header(tmp_path, extra, more):
    """A row with more cells than the header has columns (a hand edit, two files pasted
    together) was read with its extra cells dropped; refused, naming the file and line,
    as a row with a bad cell is."""
    path = _sweep_csv(tmp_path / "s.csv")
    lines = path.read_text().splitlines()
    assert len(read_csv(path)) == 2
    lines[2] += extra
    path.write_text("\n".join(lines) + "\n")
    n = len(lines[0].split(","))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: row 2 \(line 3\) has "
                       rf"{n + more} cells, "
                       rf"more than the {n} columns of its header$"):
        read_csv(path)


@pytest.mark.parametrize("text", ["1e-7", "0.25,0.0000004", "0.9999999", "0.5,0.99999951",
                                  "1e-7:0.5:0.1", "0.4999999:1:0.5"])
def test_parse_rates_refuses_a_rate_the_rounding_takes_to_0_or_1(text):
    """--rates 1e-7 was rounded to 6 decimals, to 0, and 0.9999999 to 1: a rate inside
    (0, 1) measured as all-off or all-on masks. Refused, as a step below the rounding is."""
    with pytest.raises(ValueError, match=rf"^--rates {re.escape(repr(text))}: rate "
                       r"\S+ rounds to [01] \(rates are rounded to 6 decimals\); give 0 or "
                       r"1, or a rate in \[1e-06, 0\.999999\]$"):
        parse_rates(text)


@pytest.mark.parametrize("text, rates", [
    ("0,1", [0.0, 1.0]), ("0.000001,0.999999", [1e-6, 0.999999]),
    ("0.0000006,0.9999994", [1e-6, 0.999999]),  # rounded, but not to an end
    ("0.1234567", [0.123457]), ("0:1:0.1", [round(0.1 * i, 6) for i in range(11)]),
    ("0.7:1:0.1", [0.7, 0.8, 0.9, 1.0]),  # 0.7 + 3 x 0.1 is 0.9999999999999999: 1
])
def test_parse_rates_rounds_ordinary_rates_as_before(text, rates):
    assert parse_rates(text) == rates


def test_check_rates_refuses_a_rate_the_rounding_takes_to_0_or_1():
    """sweep's and bench's rates in Python (``check_rates``) are rounded the same way: 1e-7
    became 0. A computed rate off an end by a float's error alone is the end."""
    with pytest.raises(ValueError, match=r"^rates \[0\.5, 1e-07\]: rate 1e-07 rounds to 0 "):
        check_rates([0.5, 1e-7])
    with pytest.raises(ValueError, match=r"^rates \[0\.9999999\]: rate 0\.9999999 rounds to 1 "):
        check_rates([0.9999999])
    assert check_rates([0.7 + 3 * 0.1, 1e-17, 0.5]) == [0.0, 0.5, 1.0]


def test_plot_names_a_bench_csv_given_for_a_sweep_csv(tmp_path, monkeypatch, capsys):
    """`laudtriton plot --from <a bench CSV>` said only "missing columns ['seconds']"; it
    says what the file is and what plot takes."""
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "bench.csv"
    write_bench_csv([BenchRow(model="laud_resnet50", mode="spatial", granularity="4-4-2-1",
                              batch=1, rate=0.5, block="model", spec="dense=nchw",
                              variant="compiled", dense_ms=10.0, sparse_ms=9.0, ratio=0.9,
                              flops_ratio=0.6, efficiency=0.67)], path)
    says = (f"{path}: a `laudtriton bench --csv` file (columns dense_ms, sparse_ms, ratio), "
            "not a sweep CSV: the plots take a sweep CSV (`laudtriton sweep --csv`) or "
            "the autotune cache (`--from cache`)")
    with pytest.raises(ValueError, match=f"^{re.escape(says)}$"):
        read_csv(path)
    assert main(["plot", "--from", str(path), "--no-predicted",
                 "--out", str(tmp_path / "png")]) == 2
    assert capsys.readouterr().err.strip() == f"laudtriton plot: error: {says}"
    assert not (tmp_path / "png").exists()


@pytest.mark.parametrize("column, cell, shown", [
    ("rate", "1.0000001", "1.0000001"), ("asked_rate", "1.0000004", "1.0000004"),
    ("flops_ratio", "-0.0000001234567", "-1.234567e-07"), ("rate", "1.5", "1.5")])
def test_read_csv_names_a_number_as_read(tmp_path, column, cell, shown):
    """A rate cell 1.0000001 was refused as "1 is outside [0, 1]" (the number shown as
    ``{:g}``, 6 digits): the value named was not the one read, and is inside [0, 1]."""
    path = _sweep_csv(tmp_path / "s.csv")
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[2].split(",")
    cells[header.index(column)] = cell
    path.write_text("\n".join([*lines[:2], ",".join(cells)]) + "\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: row 2 \(line 3\), column "
                       rf"'{column}': {re.escape(shown)} is (outside|not a finite)"):
        read_csv(path)


GIVEN_ONLY = "given only"  # a cell the rows given take and read_csv refuses
# (column, cell, outcome): the same text in a sweep CSV (read_csv) and in a row given to
# the plots (check_measured) is taken by both ("ok") or refused by both ("refused"), but
# where the two differ on purpose: rows given take nan seconds (a failed config), and a
# blank input_size or dispatched cell as an empty one; a clustered cell read_csv does not
# check (``check_measured`` refuses it in the plots).
CELLS = [
    ("rate", "0.5", "ok"), ("rate", " 0.5 ", "ok"), ("rate", "-0", "ok"),
    ("rate", "1.0000001", "refused"), ("rate", "nan", "refused"), ("rate", "inf", "refused"),
    ("rate", " ", "refused"), ("rate", "", "refused"), ("rate", "x", "refused"),
    ("asked_rate", "", "ok"), ("asked_rate", "1.5", "refused"), ("asked_rate", " ", "refused"),
    ("asked_rate", "nan", "refused"),
    ("seconds", "inf", "ok"), ("seconds", "1e-3", "ok"), ("seconds", "nan", GIVEN_ONLY),
    ("seconds", "-inf", "refused"), ("seconds", "0", "refused"), ("seconds", " ", "refused"),
    ("flops_ratio", "", "ok"), ("flops_ratio", "-0.0", "ok"), ("flops_ratio", " ", "refused"),
    ("flops_ratio", "nan", "refused"), ("flops_ratio", "1e400", "refused"),
    ("flops_ratio", "-0.5", "refused"),
    ("dispatched", "", "ok"), ("dispatched", " 1 ", "ok"), ("dispatched", "TRUE", "ok"),
    ("dispatched", " ", GIVEN_ONLY), ("dispatched", "1.0", "refused"),
    ("dispatched", "maybe", "refused"),
    ("input_size", "", "ok"), ("input_size", " 64 ", "ok"), ("input_size", "+64", "ok"),
    ("input_size", " ", GIVEN_ONLY), ("input_size", "64.0", "refused"),
    ("input_size", "0", "refused"), ("input_size", "x", "refused"),
    ("clustered", "", "ok"), ("clustered", " ", "ok"), ("clustered", "TRUE", "ok"),
    ("model", "", "refused"), ("model", " ", "refused"), ("block", "", "refused"),
    ("variant", "", "refused"),
]


@pytest.mark.parametrize("column, cell, outcome", CELLS)
def test_read_csv_and_rows_given_take_the_same_cells(tmp_path, column, cell, outcome):
    """read_csv and the plots' check of rows given (``plot_rows.check_measured``) keep one
    rule a cell: a rule changed in one and not in the other fails here."""
    from laudtriton.plot_rows import check_measured

    row = dict(model="m", block="layer1.0", spec="s", S=1, rate=0.5, variant="dense",
               config="c", seconds=1e-3, flops_ratio=0.5, asked_rate=0.5, input_size=224,
               clustered=0, dispatched=1)
    rows = [row, {**row, "variant": "v", column: cell}]

    def takes(read) -> bool:
        try:
            read()
        except ValueError as e:
            assert f"column {column!r}" in str(e)  # refused for this cell, not another
            return False
        return True

    path = write_csv(rows, tmp_path / "s.csv")
    by_csv, given = takes(lambda: read_csv(path)), takes(lambda: check_measured(rows, "x"))
    assert (by_csv, given) == {"ok": (True, True), "refused": (False, False),
                               GIVEN_ONLY: (False, True)}[outcome]
