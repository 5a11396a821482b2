"""laudtriton bench: the rows it reports (numbers from a short run, checked for shape and
consistency, not speed: performance targets live in BENCHMARKS.md)."""

import csv
import math
import sys
from dataclasses import fields, replace

import pytest
import torch

from laudtriton import bench as bench_mod
from laudtriton.baseline import NO_MASKS, DenseModel, nchw_dense_block
from laudtriton.bench import bench, build_model
from laudtriton.bench_report import (
    BenchRow,
    ProcessFailed,
    format_rows,
    process_summary,
    read_csv,
    run_processes,
    write_csv,
)
from laudtriton.cli import main
from laudtriton.ops import fold_block
from laudtriton.ops.dense import dense_block
from laudtriton.testing import assert_close


class RecordedProgress:
    """Stands in for ``laudtriton.progress.Progress`` in bench: records what it is shown."""

    made: list = []

    def __init__(self, total, enabled, desc, unit):
        self.total, self.enabled, self.desc, self.notes, self.closed = (total, enabled, desc,
                                                                        [], False)
        RecordedProgress.made.append(self)

    def update(self, note="", timed=True, n=1):
        self.notes.append((note, n))

    def close(self):
        self.closed = True


@pytest.fixture(scope="module")
def rows(two_blocks_patch):
    """bench's rows of LAUD-ResNet-50 with two blocks a stage (conftest's
    ``use_two_blocks_a_stage``: 8 blocks, each distinct block shape of the full model)."""
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_mod, "Progress", RecordedProgress)
        two_blocks_patch(mp)
        return bench("laud_resnet50", "channel", "4-4-2-1", [0.5], batch=1,
                     channel_granularity=2, reps=1, tune="off", repeat=3, log=lambda s: None)


def test_bench_shows_its_progress(rows):
    """One bar per rate over every timing: the blocks (8 here), then per repeat the
    interleaved whole-model rows and the new-input row, each weighing as much as the
    blocks together, which they take about as long as (before, minutes passed without
    a word)."""
    (bar,) = RecordedProgress.made
    blocks = [r.block for r in rows if r.block != "model"]
    assert len(blocks) == 8
    assert (bar.desc, bar.enabled, bar.closed) == ("bench rate 0.50", True, True)
    assert bar.notes == [(b, 1) for b in blocks] + [
        (f"{what} run {i} of 3", 8) for i in (1, 2, 3)
        for what in ("whole model", "new input every call")]
    assert bar.total == sum(n for _, n in bar.notes) == 8 + 6 * 8


def test_bench_validates_before_setting_the_allocator():
    from laudtriton import runtime
    before, logs = runtime.allocator_setting(), []
    with pytest.raises(ValueError, match="'spatal'"):
        bench("laud_resnet50", "spatal", "4-4-2-1", [0.5], allocator="retain", log=logs.append)
    assert logs == [] and runtime.allocator_setting() == before


def test_bench_rows(rows):
    blocks = [r for r in rows if r.block != "model"]
    model = [r for r in rows if r.block == "model"]
    assert [b.block for b in blocks] == [f"layer{s}.{i}" for s in (1, 2, 3, 4)
                                         for i in (0, 1)]
    assert all(b.variant in ("slice", "dense") for b in blocks)
    assert [(r.spec.split("=")[0], r.variant) for r in model] == [
        ("dense", "compiled"), ("masks given, no maskers run", "compiled"),
        ("fresh input every call", "compiled"), ("official masked-dense reference",
                                                   "reference")]
    for r in rows:
        assert r.dense_ms > 0 and r.sparse_ms > 0 and 0 < r.flops_ratio < 1
        assert r.ratio == pytest.approx(r.sparse_ms / r.dense_ms)
        assert r.efficiency == pytest.approx(r.flops_ratio / r.ratio)
        assert (r.model, r.mode, r.batch, r.rate) == ("laud_resnet50", "channel", 1, 0.5)
        assert r.allocator == "default"  # bench's own default: the process is left as is
    # 2 channels per group: every block's masks land within 1/32 of the asked rate
    for r in blocks + model[:2] + model[3:]:
        assert abs(r.realised_rate - 0.5) <= 1 / 32, r
    assert 0 <= model[2].realised_rate <= 1  # over the stream's inputs
    # the fresh-input row averages the FLOPs ratio over other inputs than the repeated one
    assert model[2].flops_ratio != model[0].flops_ratio
    # with the masks given no masker runs, and its FLOPs ratio leaves theirs out
    assert model[1].flops_ratio < model[0].flops_ratio == model[3].flops_ratio
    # repeat=3: every whole-model row is its median run, all three runs listed
    assert all(not b.runs for b in blocks)
    for r in model:
        assert len(r.runs) == 3 and r.ratio in r.runs
        assert r.ratio == sorted(r.runs)[1]


def test_bench_table_and_csv(rows, tmp_path):
    table = format_rows(rows).splitlines()
    assert len(table) == len(rows) + 2 and "eff" in table[0]
    path = tmp_path / "b.csv"
    write_csv(rows, path)
    with open(path) as f:
        back = list(csv.DictReader(f))
    assert [r["block"] for r in back] == [r.block for r in rows]
    assert float(back[-1]["sparse_ms"]) == pytest.approx(rows[-1].sparse_ms)
    runs = [float(v) for v in back[-1]["runs"].split(";")]
    assert runs == list(rows[-1].runs)  # every digit: the --processes summary reads them
    assert "runs" in table[-1] and back[0]["runs"] == ""
    long = replace(rows[0], spec="2048->512->2048 7x7/s1 both S=1 G=256 b1")
    assert " 2048->512->2048 7x7/s1 both S=1 G=256 b1 " in format_rows([long, *rows])
    # a rate two decimals would round is printed whole (0.125 read "0.12")
    assert format_rows([replace(rows[0], rate=0.125)]).splitlines()[2].startswith("0.125 ")
    assert table[2].startswith(" 0.50 ")


def test_csv_reads_back(rows, tmp_path):
    path = tmp_path / "b.csv"
    write_csv(rows, path)
    back = read_csv(path)
    assert [r.block for r in back] == [r.block for r in rows]
    for a, b in zip(back, rows):
        assert (a.model, a.batch, a.spec, a.variant, a.process) == (
            b.model, b.batch, b.spec, b.variant, 1)
        assert a.ratio == pytest.approx(b.ratio) and a.runs == b.runs
        # the run's settings: channel granularity as given, threads, tune mode
        assert (a.channel_granularity, a.threads, a.tune) == ("2", torch.get_num_threads(),
                                                               "off")


def test_csv_of_no_rows_is_the_header_alone(tmp_path):
    """The header came from the first row: no rows was an IndexError."""
    path = tmp_path / "empty.csv"
    write_csv([], path)
    assert path.read_text().splitlines() == [",".join(f.name for f in fields(BenchRow))]
    assert read_csv(path) == []


def test_csv_from_before_the_settings_columns_reads_back(rows, tmp_path):
    """A CSV without the process and settings columns reads them as their defaults."""
    path = tmp_path / "old.csv"
    write_csv(rows, path)
    with open(path, newline="") as f:
        recs = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:
        keep = [k for k in recs[0] if k not in ("process", "channel_granularity", "threads",
                                                 "tune", "realised_rate")]
        w = csv.DictWriter(f, fieldnames=keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(recs)
    back = read_csv(path)
    assert {(r.process, r.channel_granularity, r.threads, r.tune) for r in back} == {
        (1, "", 0, "")}
    assert all(math.isnan(r.realised_rate) for r in back)


def test_median_run_of_an_even_count_is_the_less_favourable():
    """--repeat 2 (or any even count) reports the upper middle run, not the best one."""
    from laudtriton.bench import _median_run

    def row(ratio):
        return BenchRow("m", "channel", "1", 1, 0.5, "model", "s", "compiled", 1.0, ratio,
                        ratio, 0.4, 0.4 / ratio)

    assert _median_run([row(0.9), row(1.1)]).ratio == 1.1
    assert _median_run([row(1.1), row(0.7), row(0.9), row(1.0)]).ratio == 1.0
    assert _median_run([row(1.1), row(0.7), row(0.9)]).ratio == 0.9
    assert _median_run([row(0.9), row(1.1)]).runs == (0.9, 1.1)


def test_block_rows_time_the_block_without_the_input_check(monkeypatch):
    """The per-block rows time the compiled block as the model runs it: without the
    finiteness test of its input that a block called on its own makes (and the dense
    block does not); only the recording forward of the whole model tests: its image,
    and (its hooks record the blocks' inputs) each block's input once."""
    import laudtriton
    import laudtriton.compiled as compiled_mod
    import laudtriton.compiled_block as block_mod
    from laudtriton.bench import _block_rows

    calls = []
    real = compiled_mod.nonfinite_samples  # from guards; the model and the blocks read it
    for mod in (compiled_mod, block_mod):  # under these names, at call time
        monkeypatch.setattr(mod, "nonfinite_samples",
                            lambda x: calls.append(tuple(x.shape)) or real(x))
    torch.manual_seed(0)
    model = build_model("laud_resnet50", "channel", "4-4-2-1", 2)
    x = torch.randn(1, 3, 64, 64)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    calls.clear()
    rows = _block_rows(model, cm, x, dict(model="m", mode="channel", granularity="1",
                                          batch=1, rate=0.5), reps=2)
    shapes = [(1, blk.spec.in_channels, *blk.spec.in_hw) for blk in cm.blocks]
    assert len(rows) == 16 and calls == [(1, 3, 64, 64), *shapes]  # none while timed
    # FLOPs ratio against the dense block without maskers, as the dense time is measured
    for r, s in zip(rows, model.last_stats.blocks):
        assert s.masker_flops > 0 and r.flops_ratio > float(s.flops_ratio)
        assert r.flops_ratio == pytest.approx(float(s.flops) / (s.dense_flops - s.masker_flops))


def _two_processes(model: list[BenchRow]) -> list[BenchRow]:
    """The model rows as two processes' runs: process 1's against channels_last, process
    2's against NCHW at twice the ratios. (The ``rows`` fixture's own dense form is
    whichever was faster in its run: on its 8-block network NCHW won at times, and the
    pooled label then read "dense=nchw", failing the tests below.)"""
    return [replace(r, process=1, spec=r.spec.replace("nchw", "channels_last"))
            for r in model] + [
        replace(r, process=2, spec=r.spec.replace("channels_last", "nchw"),
                ratio=r.ratio * 2, runs=tuple(v * 2 for v in r.runs)) for r in model]


def test_process_summary_pools_every_run(rows):
    model = [r for r in rows if r.block == "model"]
    two = _two_processes(model)
    lines = process_summary(two).splitlines()
    assert "over 2 processes" in lines[0] and len(lines) == 2 + len(model)
    first = lines[2].split()  # dense=<format> rows of both processes pooled
    every = sorted(model[0].runs + tuple(v * 2 for v in model[0].runs))
    assert first[:2] == ["0.50", "dense=channels_last/nchw"]  # each process's form (it
    # said channels_last alone, the first process's, of runs against nchw too)
    assert lines[3].split()[1:4] == ["masks", "given,", "no"]  # other rows as they are
    assert len(every) == 6  # even: the upper middle run, as one process reports (it was
    assert float(first[2]) == pytest.approx(every[3], abs=1e-3)  # the mean of the two)
    assert first[3] == f"({every[0]:.3f}-{every[-1]:.3f}," and first[4] == "6)"
    assert [float(v) for v in first[5:]] == pytest.approx(
        [model[0].ratio, model[0].ratio * 2], abs=1e-3)


def test_bench_in_several_processes(tmp_path, capfd):
    path = tmp_path / "p.csv"
    argv = ["bench", "--mode", "channel", "--channel-granularity", "2", "--rates", "0.5",
            "--reps", "1", "--processes", "2", "--allocator", "default", "--csv", str(path)]
    assert main(argv) == 0
    out = capfd.readouterr().out  # the children's output too (file descriptor 1)
    assert "over 2 processes" in out and "== process 2 of 2" in out
    assert out.count("wrote ") == 1 and f"wrote {path}" in out  # not the children's files
    back = read_csv(path)
    assert {r.process for r in back} == {1, 2}
    assert any(r.block != "model" for r in back if r.process == 1)
    assert all(r.block == "model" for r in back if r.process == 2)  # --model-only
    assert len([r for r in back if r.block == "model"]) == 8


@pytest.mark.parametrize("option,value,says", [
    ("--mode", "bogus", "mode 'bogus' unknown"),
    ("--granularity", "4-4-2", "granularity '4-4-2' has 3 stages"),
    ("--granularity", "-1", "--granularity '-1' is not a positive int"),
    ("--channel-granularity", "3", "--channel-granularity 3 must divide the stage 1 width"),
    ("--granularity", "100-4-2-1", "--granularity '100-4-2-1': S=100 in stage 1 must be in "
                                   "[1, 56]"),
])
def test_several_processes_refuse_a_bad_model_before_starting_one(option, value, says,
                                                                   capfd, monkeypatch):
    """A configuration the model refuses is one line from the parent, exit 2: no child
    process runs (each would print its own error, then the parent a second one, exit 1)."""
    import laudtriton.bench_report as report_mod

    started = []
    monkeypatch.setattr(report_mod, "run_processes", lambda *a, **k: started.append(a))
    argv = ["bench", "--processes", "2", "--rates", "0.5", "--model-only", option, value]
    if option == "--channel-granularity":
        argv += ["--mode", "channel"]  # 3 divides no stage width
    assert main(argv) == 2
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert started == [] and out == "" and len(lines) == 1
    assert lines[0].startswith("laudtriton bench: error: ") and says in lines[0]


def test_run_processes_rejects_and_reports_failures():
    with pytest.raises(ValueError, match="processes must be >= 1"):
        run_processes([], 0)
    with pytest.raises(ValueError, match="--csv"):
        run_processes(["--csv", "x.csv"], 2)
    with pytest.raises(ProcessFailed, match="process 1 of 2 exited with status 2"):
        run_processes(["--model", "resnet18"], 2, log=lambda s: None, python=sys.executable)


def test_run_processes_passes_verbose_to_its_children(monkeypatch, capfd):
    """`laudtriton -v bench --processes N`: every child logs at INFO level too."""
    import subprocess
    from types import SimpleNamespace

    import laudtriton.bench_report as report_mod

    cmds = []
    monkeypatch.setattr(subprocess, "run",
                        lambda cmd, **k: cmds.append(cmd) or SimpleNamespace(returncode=3))
    for verbose in (True, False):
        with pytest.raises(ProcessFailed):
            run_processes(["--model-only"], 2, log=lambda s: None, verbose=verbose)
    assert cmds[0][2:5] == ["laudtriton", "-v", "bench"]
    assert cmds[1][2:4] == ["laudtriton", "bench"]
    given = []

    def fake(argv, processes, **k):
        given.append(k)
        raise ProcessFailed("stop here")

    monkeypatch.setattr(report_mod, "run_processes", fake)
    assert main(["-v", "bench", "--processes", "2", "--rates", "0.5", "--model-only"]) == 1
    assert given == [{"verbose": True}]
    capfd.readouterr()


def test_bench_rejects_unknown_model():
    with pytest.raises(ValueError, match="model 'resnet18' unknown"):
        bench("resnet18", "channel", "4-4-2-1", [0.5])
    with pytest.raises(ValueError, match="repeat must be >= 1, got 0"):
        bench("laud_resnet50", "channel", "4-4-2-1", [0.5], repeat=0)


def test_dense_baselines_agree():
    """The two dense forms the baseline is the faster of (NCHW through F.conv2d, channels_last
    through packed oneDNN) compute the same network: each other's logits, and the LAUD
    model's own when every mask is on."""
    model = build_model("laud_resnet50", "spatial", "4-4-2-1")
    x = torch.randn(2, 3, 64, 80)
    nchw = DenseModel(model, torch.contiguous_format)(x)
    cl = DenseModel(model, torch.channels_last)(x)
    assert_close(cl, nchw)
    for _, blk in model.blocks():  # maskers always on: the dense network
        blk.masker_spatial.conv.bias.data = torch.tensor([1e4, -1e4])
    with torch.no_grad():
        assert_close(cl, model(x))
    _, blk = next(iter(model.blocks()))
    fb, h = fold_block(blk), torch.randn(1, 64, 9, 11)
    assert_close(nchw_dense_block(fb, h),
                 dense_block(fb, h.contiguous(memory_format=torch.channels_last), NO_MASKS))


def model_run_times(fns) -> list[float]:
    """Stand-in medians of the whole-model runs: the model rows (nchw, channels_last,
    compiled, masks given, reference), or the new-input row (nchw, channels_last,
    compiled)."""
    return [0.3, 0.2, 0.1, 0.09, 0.5] if len(fns) == 5 else [0.25, 0.35, 0.125]


def test_whole_model_rows_take_the_faster_dense_form_of_their_own_run(monkeypatch,
                                                                       two_blocks_a_stage):
    """Both dense forms are timed in the run that compares against them, and each row's
    dense time is the faster one of that run (not a form picked earlier), which its
    ``dense_form`` names (since session 67; the new-input row's form was not shown)."""
    import laudtriton.baseline as baseline_module

    seen = []

    def fake(fns, warmup=2, reps=20, setup=None):
        seen.append(len(fns))
        return model_run_times(fns)

    monkeypatch.setattr(baseline_module, "interleaved_medians", fake)  # time_against_dense's
    torch.manual_seed(0)
    rows = bench("laud_resnet50", "channel", "4-4-2-1", [0.5], channel_granularity=2,
                 reps=1, tune="off", blocks=False, log=lambda s: None)
    assert seen == [5, 3]
    same, given, fresh, ref = rows
    assert (same.spec, same.dense_ms, same.ratio) == ("dense=channels_last", 200.0, 0.5)
    assert given.ratio == pytest.approx(0.45) and ref.ratio == pytest.approx(2.5)
    assert (fresh.dense_ms, fresh.ratio) == (250.0, 0.5)
    assert [r.dense_form for r in rows] == ["channels_last"] * 2 + ["nchw", "channels_last"]


def test_block_rows_take_the_faster_dense_form_of_their_own_run(monkeypatch,
                                                                two_blocks_a_stage):
    """Per block, dense is the faster of NCHW and channels_last in the run that times the
    compiled block (here channels_last, 0.2 s, with NCHW at 0.3 s, in every other block,
    and the other way round in the rest), and ``dense_form`` names it (since session 67:
    the CSV did not say which form a block's dense time was)."""
    import laudtriton.baseline as baseline_module

    runs = []

    def block_run(fns, warmup=2, reps=20, setup=None):
        assert len(fns) == 3  # nchw, channels_last, the compiled block
        runs.append(None)
        return [0.3, 0.2, 0.1] if len(runs) % 2 else [0.2, 0.3, 0.1]

    monkeypatch.setattr(bench_mod, "interleaved_medians", block_run)
    monkeypatch.setattr(baseline_module, "interleaved_medians",
                        lambda fns, warmup=2, reps=20, setup=None: model_run_times(fns))
    torch.manual_seed(0)
    rows = bench("laud_resnet50", "channel", "4-4-2-1", [0.5], channel_granularity=2,
                 reps=1, tune="off", blocks=True, log=lambda s: None)
    per_block = [r for r in rows if r.block != "model"]
    assert len(per_block) == 8
    assert all((r.dense_ms, r.sparse_ms, r.ratio) == (200.0, 100.0, 0.5) for r in per_block)
    assert [r.dense_form for r in per_block] == ["channels_last", "nchw"] * 4


@pytest.mark.parametrize("masks_given_only, says", [
    (False, "compiled logits \\(bench\\)"), (True, "masks given \\(bench\\)")])
def test_bench_refuses_to_time_a_compiled_model_whose_logits_are_wrong(monkeypatch,
                                                                       masks_given_only,
                                                                       says,
                                                                       two_blocks_a_stage):
    """bench reported a speedup of whatever the compiled model computed; only demo
    compared its logits with the reference's. It checks them before the per-block table
    is timed too (it checked them after that table). The masks-given row is timed
    unchecked (``check_masks=False``), so those logits are checked first as well: a
    model right with its maskers and wrong with the masks it gave is refused too."""
    import laudtriton.baseline as baseline_module
    from laudtriton.compiled import CompiledModel

    real = CompiledModel.forward

    def off_by_a_bit(self, x, masks=None, **kw):
        out = real(self, x, masks, **kw)
        return out if masks_given_only and masks is None else out * 1.001

    def timed(*args, **kwargs):
        raise AssertionError("timed a wrong model")

    monkeypatch.setattr(CompiledModel, "forward", off_by_a_bit)
    for mod in (bench_mod, baseline_module):  # per-block rows; whole-model rows
        monkeypatch.setattr(mod, "interleaved_medians", timed)
    torch.manual_seed(0)
    with pytest.raises(AssertionError, match=says):
        bench("laud_resnet50", "channel", "4-4-2-1", [0.5], channel_granularity=2, reps=1,
              tune="off", log=lambda s: None)


def test_fresh_input_row_warms_up_on_other_new_inputs(monkeypatch):
    """The new-input row makes ``reps`` untimed calls on new inputs before its ``reps``
    timed ones (the stream's warm-up: new patterns' packings), and dense and compiled
    see the same sequence, each input once."""
    seen = {}

    def run(dense_calls, fns, warmup, reps):  # stands in for time_against_dense
        seen["warmup"] = warmup
        for f in [*dense_calls.values(), *fns]:
            for _ in range(warmup + reps):
                f()
        return "nchw", 1.0, [0.5]

    def recorder(name):
        seen[name] = []
        return lambda x: seen[name].append(x)

    monkeypatch.setattr(bench_mod, "time_against_dense", run)
    model = build_model("laud_resnet50", "channel", "4-4-2-1", channel_granularity=2)
    meta = dict(model="laud_resnet50", mode="channel", granularity="4-4-2-1", batch=1,
                rate=0.5, allocator="default", channel_granularity="2", threads=1,
                tune="off", reps=3)
    row = bench_mod._fresh_row(model, recorder("compiled"),
                               {"nchw": recorder("nchw"), "channels_last": recorder("cl")},
                               1, meta, 3)
    assert seen["warmup"] == 3
    assert len({id(x) for x in seen["compiled"]}) == 6
    for name in ("nchw", "cl"):
        assert [id(x) for x in seen[name]] == [id(x) for x in seen["compiled"]]
    assert (row.dense_ms, row.ratio) == (1000.0, 0.5)


def test_bench_says_when_the_masks_cannot_realise_the_rate(monkeypatch, two_blocks_a_stage):
    """A layer gate at batch 1 is on or off: rate 0.5 lands on 0 in every block
    (round(0.5) = 0). bench says so before the table and records the realised rate."""
    torch.manual_seed(0)
    logs = []
    rows = bench("laud_resnet50", "layer", "4-4-2-1", [0.5], batch=1, reps=1, tune="off",
                 blocks=False, log=logs.append)
    notes = [s for s in logs if s.startswith("note: rate 0.50")]
    assert len(notes) == 1 and "realise 0.000" in notes[0]
    same_input = [r for r in rows if r.spec != "fresh input every call"]
    assert {(r.rate, r.realised_rate) for r in same_input} == {(0.5, 0.0)}
    quiet = []  # at batch 2 the gates land on one sample of two: no note (said before
    monkeypatch.setattr(bench_mod, "compile", _stop_at_compile)  # compiling)
    with pytest.raises(_StopAtCompile):
        bench("laud_resnet50", "layer", "4-4-2-1", [0.5], batch=2, reps=1, tune="off",
              blocks=False, log=quiet.append)
    assert quiet and not [s for s in quiet if s.startswith("note:")]


def test_bench_names_blocks_that_cannot_realise_the_rate_when_the_mean_can(monkeypatch):
    """A stage of one grid cell (S = 7 on the 7x7 maps) is all or nothing: at rate 0.2
    its blocks realise 0 while the mean over the blocks (0.165) stays within 0.05, and
    their rows were labelled 0.2 without a word. (The note comes before compiling.)"""
    torch.manual_seed(0)
    logs = []
    monkeypatch.setattr(bench_mod, "compile", _stop_at_compile)
    with pytest.raises(_StopAtCompile):
        bench("laud_resnet50", "spatial", "4-4-2-7", [0.2], batch=1, reps=1, tune="off",
              blocks=False, log=logs.append)
    (note,) = [s for s in logs if s.startswith("note: rate 0.20")]
    assert "on average" not in note
    assert "3 of the 16 blocks realise a rate more than 0.05 from it (layer4.0 0.000, " \
           "layer4.1 0.000, layer4.2 0.000)" in note


class _StopAtCompile(Exception):
    """Raised by a stand-in for ``compile`` in bench: the test ends where compiling would
    start (after the calibration and its note)."""


def _stop_at_compile(*args, **kwargs):
    raise _StopAtCompile


def test_bench_names_both_blocks_whose_channel_masks_cannot_realise_the_rate(monkeypatch):
    """In "both" blocks calibrate_rates reports the spatial rate alone: with one channel
    group per block (64-128-256-512) every channel mask lands on 0 at rate 0.5 (FLOPs
    ratio 0.12), and bench said nothing, its rows labelled 0.5 with realised_rate 0.5.
    Two channels per group land on 0.5: no note."""
    monkeypatch.setattr(bench_mod, "compile", _stop_at_compile)
    logs = []
    with pytest.raises(_StopAtCompile):
        bench("laud_resnet50", "both", "4-4-2-1", [0.5], channel_granularity="64-128-256-512",
              reps=1, tune="off", blocks=False, log=logs.append)
    (note,) = [s for s in logs if s.startswith("note: rate 0.50")]
    assert "on average" not in note  # the spatial rates land on 0.49-0.5
    assert ("16 of the 16 blocks realise a rate more than 0.05 from it (layer1.0 channel "
            "0.000, layer1.1 channel 0.000, layer1.2 channel 0.000, layer2.0 channel 0.000, "
            "...)") in note
    quiet = []
    with pytest.raises(_StopAtCompile):
        bench("laud_resnet50", "both", "4-4-2-1", [0.5], channel_granularity=2, reps=1,
              tune="off", blocks=False, log=quiet.append)
    assert not [s for s in quiet if s.startswith("note:")]


@pytest.mark.parametrize("kwargs, says", [
    (dict(reps=0), "reps must be >= 1, got 0"), (dict(batch=0), "batch must be >= 1, got 0")])
def test_bench_refuses_bad_counts_before_anything_else(kwargs, says, monkeypatch):
    """reps < 1 was refused by the first timing, after the allocator was set and the
    model built, calibrated and compiled; batch < 1 by the calibration, naming x."""
    monkeypatch.setattr(bench_mod, "compile", _stop_at_compile)
    logs = []
    with pytest.raises(ValueError, match=says):
        bench("laud_resnet50", "channel", "4-4-2-1", [0.5], **kwargs, log=logs.append)
    assert logs == []  # not even the allocator's line


def test_bench_layer_mode_per_block_rows(two_blocks_a_stage):
    """Layer blocks run in the model's batch order (order.SampleOrder); the per-block rows
    still time every block on the input it met."""
    torch.manual_seed(0)
    rows = bench("laud_resnet50", "layer", "4-4-2-1", [0.5], batch=2, reps=1, tune="off",
                 log=lambda s: None)
    blocks = [r for r in rows if r.block != "model"]
    assert [r.block for r in blocks] == [f"layer{s}.{i}" for s in (1, 2, 3, 4)
                                         for i in (0, 1)]
    assert {r.variant for r in blocks} <= {"compact", "dense"}
    assert all(r.dense_ms > 0 and r.sparse_ms > 0 for r in rows)


def test_bench_refuses_reps_whose_fresh_inputs_would_fill_the_memory(capsys):
    """The fresh-input row holds 2 x reps inputs at once: --reps had no bound, and the
    allocator's refusal, minutes in, blamed --batch 1."""
    import os

    from laudtriton.bench import check_fresh_inputs

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    reps = 10000  # the most --reps takes; a batch that fills the whole memory with them
    batch = total // (2 * reps * 3 * 224 * 224 * 4) + 1
    assert main(["bench", "--reps", str(reps), "--batch", str(batch), "--model-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"laudtriton bench: error: --reps {reps} with --batch {batch}: ")
    assert "give fewer --reps" in err
    check_fresh_inputs(1, 20)  # the default: far from it


def test_run_processes_times_blocks_in_the_first_process_only(monkeypatch):
    """Every process after the first runs --model-only (the per-block rows come from the
    first alone), each child writes its CSV where the parent said, and every row read
    back carries its process's number; argv holding --csv or --processes in either
    spelling is refused before any child runs."""
    import subprocess
    from types import SimpleNamespace

    cmds = []

    def fake_run(cmd, **kw):
        cmds.append(cmd)
        row = BenchRow("m", "channel", "1", 1, 0.5, "model", "s", "compiled", 1.0, 0.5,
                       0.5, 0.4, 0.8)
        write_csv([row], cmd[cmd.index("--csv") + 1])
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    rows = run_processes(["--rates", "0.5"], 3, log=lambda s: None)
    assert ["--model-only" in c for c in cmds] == [False, True, True]
    assert [r.process for r in rows] == [1, 2, 3]
    cmds.clear()
    for bad in (["--csv=x.csv"], ["--processes=2"]):
        with pytest.raises(ValueError, match=f"argv must not hold {bad[0].split('=')[0]}"):
            run_processes(bad, 2, log=lambda s: None)
    assert cmds == []


def test_bench_table_spec_column_fits_the_longest_spec_of_any_row(rows):
    """The spec column is as wide as the longest spec, whichever row holds it: a long
    spec after the first row pushed the later columns of its row out of line."""
    long = replace(rows[0], spec="2048->512->2048 7x7/s1 both S=1 G=256 b1 (a long spec)")
    table = format_rows([rows[0], long]).splitlines()
    col = table[0].index(" variant ") + 1
    assert [line[col:].split()[0] for line in table[2:]] == [rows[0].variant] * 2
    assert len({len(line) for line in table[:2]}) == 1  # the rule is the header's width


def test_bench_table_lists_the_runs_of_a_row_of_several_only(rows):
    """A row of one run (--repeat 1) has no "runs" list: it would repeat its ratio."""
    one = replace(rows[-1], runs=(rows[-1].ratio,))
    assert "runs" not in format_rows([one])
    two = replace(rows[-1], runs=(0.5, 0.75))
    assert format_rows([two]).splitlines()[-1].endswith("  runs 0.500, 0.750")


def test_process_summary_is_in_process_order_whatever_the_row_order(rows):
    """Each process's ratio is listed in process order, and the dense forms in that
    order, whatever the order of the rows (process 2's first listed it first)."""
    model = [r for r in rows if r.block == "model"]
    two = _two_processes(model)
    later_first = two[len(model):] + two[:len(model)]  # process 2's rows, then 1's
    assert process_summary(later_first) == process_summary(two)
    first = process_summary(later_first).splitlines()[2].split()
    assert first[1] == "dense=channels_last/nchw"
    assert [float(v) for v in first[5:]] == pytest.approx(
        [model[0].ratio, model[0].ratio * 2], abs=1e-3)
