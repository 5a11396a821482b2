"""laudtriton bench, audited: ``bench``'s arguments checked before any work or any
process-wide change, the caller's random generator left alone, the table's columns
aligned, and the CSV written in its place atomically."""

import csv
import math
import os
import re

import pytest
import torch

from laudtriton import bench as bench_mod
from laudtriton import runtime
from laudtriton.bench import bench, build_model
from laudtriton.bench_report import BenchRow, format_rows, process_summary, read_csv, write_csv


class Built(Exception):
    """Raised by the stand-in for bench's model build (``_seeded_model``): the arguments
    passed their checks."""


@pytest.mark.parametrize("kwargs, says", [
    (dict(rates=[0.25, 1.5]), r"rates \[0.25, 1.5\] must be non-empty and lie in \[0, 1\]"),
    (dict(rates=[math.nan]), r"rates \[nan\] must be non-empty"),
    (dict(rates=[]), r"rates \[\] must be non-empty"),
    (dict(rates=0.5), "rates 0.5 must be a sequence of numbers"),
    (dict(tune="bogus"), "tune 'bogus' unknown; accepted: cached, quick, full, off"),
    (dict(reps=2.5), "reps must be an int >= 1, got 2.5"),
    (dict(repeat=1.5), "repeat must be an int >= 1, got 1.5"),
    (dict(batch=1.0), "batch must be an int >= 1, got 1.0"),
    (dict(reps=True), "reps must be an int >= 1, got True"),
])
def test_bench_checks_its_arguments_before_any_work(kwargs, says, monkeypatch):
    """A bad rate, tune mode or count was found only where it was first used: a rate of
    1.5 after the whole run of the rates before it (and their rows lost) and after the
    allocator changed process-wide; a tune mode at compile; reps=2.5 after the model's
    build, calibration and compile; repeat=1.5 after every block was timed."""
    def built(*a, **k):
        raise Built
    monkeypatch.setattr(bench_mod, "_seeded_model", built)
    before, logs = runtime.allocator_setting(), []
    args = dict(rates=[0.5], tune="off") | kwargs
    rates = args.pop("rates")
    with pytest.raises(ValueError, match=says):
        bench("laud_resnet50", "spatial", "4-4-2-1", rates, allocator="retain",
              log=logs.append, progress=False, **args)
    assert logs == [] and runtime.allocator_setting() == before


def test_bench_rates_are_floats_each_timed_once_in_order(monkeypatch):
    """Rates given as a tensor reached the rows (and the CSV: 'tensor(0.5000)'); a rate
    given twice was timed twice and its second table printed the first run's rows too."""
    calibrated, logs = [], []

    def calibrate(model, x, rate):
        calibrated.append(rate)
        return [rate] * len(list(model.blocks()))

    class Compiled:
        blocks = []

    def model_rows(model, cm, dense, x, meta, reps, bar=None, run=""):
        return [BenchRow(**meta, block="model", spec="dense=nchw", variant="compiled",
                         dense_ms=1.0, sparse_ms=1.0, ratio=1.0, flops_ratio=1.0,
                         efficiency=1.0)]

    monkeypatch.setattr(bench_mod, "calibrate_rates", calibrate)
    monkeypatch.setattr(bench_mod, "compile", lambda *a, **k: Compiled())
    monkeypatch.setattr(bench_mod, "_check_logits", lambda *a: None)
    monkeypatch.setattr(bench_mod, "dense_forms", lambda model: {})
    monkeypatch.setattr(bench_mod, "_model_rows", model_rows)
    with torch.random.fork_rng():  # (bench's tests seed nothing: kept as it was)
        rows = bench("laud_resnet50", "spatial", "4-4-2-1", torch.tensor([0.5, 0.25, 0.5]),
                     reps=1, tune="off", blocks=False, log=logs.append, progress=False,
                     allocator=runtime.allocator_setting())  # (as it is: process-wide)
    assert calibrated == [0.25, 0.5] and all(type(r) is float for r in calibrated)
    assert [r.rate for r in rows] == [0.25, 0.5]
    assert all(type(r.rate) is float for r in rows)
    tables = [s for s in logs if s.lstrip().startswith("rate ")]
    assert [len(t.splitlines()) for t in tables] == [3, 3]  # header, rule, its own row


def _row(ratio: float) -> BenchRow:
    return BenchRow(model="laud_resnet50", mode="spatial", granularity="4-4-2-1", batch=1,
                    rate=0.5, block="model", spec="dense=nchw", variant="compiled",
                    dense_ms=10.0, sparse_ms=10.0 * ratio, ratio=ratio, flops_ratio=0.6,
                    efficiency=0.6 / ratio)


def test_csv_write_that_fails_keeps_the_file_it_would_replace(tmp_path, monkeypatch):
    """write_csv opened the file for writing in place: a write cut short (a full disk,
    Ctrl-C) left the last run's CSV truncated, its rows lost, where every other command's
    CSV is written beside it and moved over it."""
    path = tmp_path / "bench.csv"
    write_csv([_row(0.9)], path)
    old = path.read_bytes()
    real = csv.DictWriter.writerow
    written = []

    def full_disk(self, rowdict):
        if written:
            raise OSError(28, "No space left on device")
        written.append(rowdict)
        return real(self, rowdict)

    monkeypatch.setattr(csv.DictWriter, "writerow", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_csv([_row(0.8), _row(0.7)], path)
    monkeypatch.undo()
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["bench.csv"]
    write_csv([_row(0.8), _row(0.7)], path)
    assert [r.ratio for r in read_csv(path)] == [0.8, 0.7]


def _stub_timings(monkeypatch, seen: list) -> None:
    """bench's calibration, compile and whole-model rows replaced by stand-ins that record
    the input (``seen``) and draw from torch's generator where the real ones may."""
    def calibrate(model, x, rate):
        seen.append(x.clone())
        return [rate] * len(list(model.blocks()))

    class Compiled:
        blocks = []

    def compile_(*a, **k):
        torch.rand(1)
        return Compiled()

    def model_rows(model, cm, dense, x, meta, reps, bar=None, run=""):
        seen.append(torch.randn(3))  # as _fresh_row's new inputs
        return [BenchRow(**meta, block="model", spec="dense=nchw", variant="compiled",
                         dense_ms=1.0, sparse_ms=1.0, ratio=1.0, flops_ratio=1.0,
                         efficiency=1.0)]

    monkeypatch.setattr(bench_mod, "calibrate_rates", calibrate)
    monkeypatch.setattr(bench_mod, "compile", compile_)
    monkeypatch.setattr(bench_mod, "_check_logits", lambda *a: None)
    monkeypatch.setattr(bench_mod, "dense_forms", lambda model: {})
    monkeypatch.setattr(bench_mod, "_model_rows", model_rows)


def test_build_model_and_bench_leave_the_callers_generator_alone(monkeypatch):
    """build_model reseeded torch's global generator (torch.manual_seed(seed)): a caller's
    random numbers after it were the same whatever it had seeded, and so after bench. Both
    now leave the generator as they found it; the model is the same whatever the caller's
    state, and so are bench's inputs (seeded, as before)."""
    with torch.random.fork_rng():
        torch.manual_seed(123)
        state = torch.get_rng_state()
        model = build_model("laud_resnet50", "spatial", "4-4-2-1")
        assert torch.equal(torch.get_rng_state(), state)
        torch.manual_seed(7)
        again = build_model("laud_resnet50", "spatial", "4-4-2-1").state_dict()
        assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())
        other = build_model("laud_resnet50", "spatial", "4-4-2-1", seed=1).state_dict()
        assert not torch.equal(other["conv1.weight"], again["conv1.weight"])
        _stub_timings(monkeypatch, seen := [])
        inputs = []
        for seed in (5, 6):
            torch.manual_seed(seed)
            state = torch.get_rng_state()
            seen.clear()
            bench("laud_resnet50", "spatial", "4-4-2-1", [0.25, 0.5], reps=1, tune="off",
                  blocks=False, log=lambda s: None, progress=False,
                  allocator=runtime.allocator_setting())
            assert torch.equal(torch.get_rng_state(), state)
            inputs.append(seen[:])
        assert len(inputs[0]) == 4 and torch.equal(inputs[0][0], inputs[0][2])
        assert all(torch.equal(a, b) for a, b in zip(*inputs, strict=True))


def test_bench_refuses_reps_whose_fresh_inputs_would_fill_the_memory(monkeypatch):
    """The CLI refused --reps x --batch whose new-input row would fill the memory
    (``check_fresh_inputs``), the Python API did not: it built, calibrated and compiled
    the model and timed every block before the allocation failed. Refused before the
    build, naming the arguments (not the CLI's flags)."""
    def built(*a, **k):
        raise Built
    monkeypatch.setattr(bench_mod, "_seeded_model", built)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    reps = 10000
    batch = total // (2 * reps * 3 * 224 * 224 * 4) + 1
    before, logs = runtime.allocator_setting(), []
    with pytest.raises(ValueError) as e:
        bench("laud_resnet50", "spatial", "4-4-2-1", [0.5], reps=reps, batch=batch,
              tune="off", allocator="retain", log=logs.append, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"reps {reps} with batch {batch}: the row on a new input every ")
    assert msg.endswith("give fewer reps") and "--" not in msg
    assert logs == [] and runtime.allocator_setting() == before
    with pytest.raises(ValueError, match=r"^--reps 10000 with --batch .*give fewer --reps$"):
        bench_mod.check_fresh_inputs(batch, reps)  # the CLI's wording, as it was


def _at_rate(rate: float) -> BenchRow:
    return BenchRow(**{**vars(_row(0.9)), "rate": rate, "runs": (0.9, 0.91)})


def test_bench_table_rate_column_fits_its_rates():
    """The rate column was 5 characters wide: a rate such as 0.123457 (as rate_text prints
    it) pushed the rest of its line to the right. The column fits the widest rate, in the
    table and in the summary of several processes; the CSV keeps every digit."""
    rows = [_at_rate(0.5), _at_rate(0.123457), _at_rate(1.0)]
    table, summary = format_rows(rows).splitlines(), process_summary(rows).splitlines()
    for lines in (table[:1] + table[2:], summary[1:]):  # column titles, a line per rate
        assert len(lines) == 4
        second = {re.match(r"\s*\S+\s", s).end() for s in lines}  # where "block" starts
        assert len(second) == 1, "\n".join(lines)
        assert [s.split()[0] for s in lines] == ["rate", "0.50", "0.123457", "1.00"]
    narrow = format_rows([_at_rate(0.5)]).splitlines()  # as wide as before for such rates
    assert narrow[0].startswith(" rate block ") and narrow[2].startswith(" 0.50 model ")


def test_csv_keeps_a_rate_the_table_prints_to_its_width(tmp_path):
    """The table's rate column is the only thing fitted to the rates: the CSV holds each
    rate in full."""
    write_csv([_at_rate(0.123457), _at_rate(1 / 3)], tmp_path / "b.csv")
    assert [r.rate for r in read_csv(tmp_path / "b.csv")] == [0.123457, 1 / 3]
