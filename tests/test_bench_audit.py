"""laudtriton bench, audited: ``bench``'s arguments checked before any work or any
process-wide change, and the CSV written in its place atomically."""

import csv
import math
import os

import pytest
import torch

from laudtriton import bench as bench_mod
from laudtriton import runtime
from laudtriton.bench import bench
from laudtriton.bench_report import BenchRow, read_csv, write_csv


class Built(Exception):
    """Raised by the stand-in for ``build_model``: the arguments passed their checks."""


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
    monkeypatch.setattr(bench_mod, "build_model", built)
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
    with torch.random.fork_rng():  # (build_model seeds torch's generator)
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
