"""Scheduler with predictions (fill_predictions) and the latency-guided co-design search."""

from __future__ import annotations

import math
import re

import pytest

import laudtriton.ops  # noqa: F401  (registers every variant)
from laudtriton.cli import main
from laudtriton.codesign import Design, design_search
from laudtriton.ops.spec import BlockSpec
from laudtriton.predict.hardware import CPU_DEFAULT, get_hardware
from laudtriton.predict.model import predict_block, predict_expected
from laudtriton.predict.network import flops_ratio, model_specs
from laudtriton.schedule import DENSE_MARGIN, Choice, DispatchTable, fill_predictions

SPEC = model_specs("laud_resnet50", "spatial", "4-4-2-1", batch=1)[5][1]  # layer2.2


def test_fill_predictions_carry_the_config_they_are_given():
    """A predicted entry carries the variant's config of ``configs`` (compile passes one
    that ran on the block), else the variant's first."""
    table = DispatchTable()
    fill_predictions(table, SPEC, [0.0], ["dense", "gather"], CPU_DEFAULT)
    assert table.entries[0.0].variant == "gather" and table.entries[0.0].config == ()
    table = DispatchTable()
    fill_predictions(table, SPEC, [0.0], ["dense", "gather"], CPU_DEFAULT,
                     configs={"gather": '{"k": 2}'})
    assert table.entries[0.0].variant == "gather" and table.entries[0.0].config_dict == {"k": 2}


def test_fill_predictions_only_where_unmeasured():
    table = DispatchTable()
    table.add(0.1, {"dense": {"{}": 9e-3}, "gather": {"{}": 1e-3}}, "measured")
    table.add(0.5, {"dense": {"{}": 9e-3}, "patch": {"{}": 8e-3}}, "cached")
    before = dict(table.entries)
    buckets = [round(i / 10, 1) for i in range(11)]
    filled = fill_predictions(table, SPEC, buckets, ["dense", "gather", "patch"], CPU_DEFAULT)
    assert filled == [b for b in buckets if b not in (0.1, 0.5)]
    for b, c in before.items():
        assert table.entries[b] is c  # measured and cached entries are never replaced
    for b in filled:
        c = table.entries[b]
        assert c.source == "predicted" and math.isfinite(c.seconds)
        pred = {v: predict_expected(SPEC, b, v, CPU_DEFAULT)
                for v in ("dense", "gather", "patch")}
        want = min(pred, key=pred.get)
        if pred[want] > (1 - DENSE_MARGIN) * pred["dense"]:
            want = "dense"
        assert c.variant == want
        assert c.seconds == pytest.approx(predict_expected(SPEC, b, want, CPU_DEFAULT))
    # the predictions decide both ways here (not a table of one variant)
    assert {table.entries[b].variant for b in filled} >= {"dense", "gather"}
    assert set(table.dense_seconds) == {0.1, 0.5}  # dense_seconds stays measured-only
    assert fill_predictions(table, SPEC, buckets, ["dense"], CPU_DEFAULT) == []
    assert table.choose(0.31).source == "predicted"
    assert table.choose(0.12) == Choice.make("gather", "{}", 1e-3, "measured")


def test_predicted_buckets_are_batch_means_not_rounded_per_sample():
    """A bucket is the mean rate over the batch: at batch 8 with one grid cell per
    sample, 0.5 is four samples on. Predicted per sample (0.5 of one cell rounded to
    none) it cost the empty mask's time, and dense was dispatched where the model itself
    expects a sparse variant to be faster."""
    spec = BlockSpec(2048, 512, 2048, 1, False, (7, 7), "spatial", granularity=7, batch=8)
    assert spec.grid == (1, 1)
    table = DispatchTable()
    fill_predictions(table, spec, [0.0, 0.5, 1.0], ["dense", "gather"], CPU_DEFAULT)
    half = table.entries[0.5]
    full = {v: predict_block(spec, 1.0, v, CPU_DEFAULT) for v in ("dense", "gather")}
    empty = predict_block(spec, 0.0, half.variant, CPU_DEFAULT)
    assert half.seconds == pytest.approx(predict_expected(spec, 0.5, half.variant,
                                                          CPU_DEFAULT))
    assert half.seconds > empty + 0.4 * (full[half.variant] - empty)


def test_dense_is_kept_unless_beaten_by_the_margin():
    table = DispatchTable()
    near = (1 - DENSE_MARGIN / 2) * 1e-3  # faster than dense, within the margin
    far = (1 - 2 * DENSE_MARGIN) * 1e-3
    table.add(0.2, {"dense": {"{}": 1e-3}, "gather": {"{}": near}}, "measured")
    table.add(0.5, {"dense": {"{}": 1e-3}, "gather": {"{}": far}, "patch": {"{}": near}},
              "measured")
    table.add(0.8, {"gather": {"{}": near}, "patch": {"{}": far}}, "measured")  # no dense
    table.add(0.9, {"dense": {"{}": math.inf}, "gather": {"{}": near}}, "measured")
    assert table.entries[0.2] == Choice.make("dense", "{}", 1e-3, "measured")
    assert table.entries[0.5].variant == "gather"
    assert table.entries[0.8].variant == "patch"  # among sparse variants: the fastest
    assert table.entries[0.9].variant == "gather"  # dense failed: no margin to keep
    assert 0 < DENSE_MARGIN < 0.2


def test_a_variant_exactly_at_the_margin_does_not_replace_dense():
    """"More than 5%": a variant at exactly 0.95x dense leaves dense chosen."""
    table = DispatchTable()
    table.add(0.5, {"dense": {"{}": 1e-3}, "gather": {"{}": (1 - DENSE_MARGIN) * 1e-3}},
              "measured")
    assert table.entries[0.5].variant == "dense"


def test_compile_pick_breaks_a_tie_by_name_whatever_the_order_given():
    """Equal times: the name first in alphabetical order, however the dict lists them
    (``design`` and ``predict`` report what compile would build); dense where it ties."""
    from laudtriton.schedule import compile_pick

    for names in (("patch", "gather"), ("gather", "patch")):
        assert compile_pick(dict.fromkeys(names, 1e-3)) == "gather", names
    assert compile_pick({"gather": 1e-3, "dense": 1e-3}) == "dense"
    assert compile_pick({"patch": 2e-3, "gather": 1e-3, "dense": 3e-3}) == "gather"


def test_choose_breaks_a_tie_towards_the_lower_rate_despite_float_rounding():
    """Midway between two entries (0.65 between 0.6 and 0.7, where the float distances
    differ in the last bit) the lower entry is chosen, as documented."""
    for lo in range(10):
        table = DispatchTable()
        table.add(lo / 10, {"gather": {"{}": 1e-3}}, "measured")
        table.add((lo + 1) / 10, {"patch": {"{}": 1e-3}}, "measured")
        assert table.choose((2 * lo + 1) / 20).variant == "gather", lo
        assert table.choose((2 * lo + 1) / 20 + 1e-6).variant == "patch", lo


def test_choose_refuses_an_empty_table_whatever_the_rate():
    """A table with no entry (none made, or every timing added failed: inf) has nothing
    to choose; that is said before the rate is looked at."""
    table = DispatchTable()
    table.add(0.5, {"dense": {"{}": math.inf}, "gather": {'{"k": 2}': math.inf}}, "measured")
    assert table.entries == {}
    for rate in (0.5, 0.0, 1.0, 7.0):
        with pytest.raises(ValueError, match="^empty dispatch table$"):
            table.choose(rate)
    table.add(0.5, {"dense": {"{}": 1e-3}}, "measured")
    assert table.choose(0.0).variant == "dense"


def test_fill_predictions_uses_a_config_the_variant_accepts():
    spec = model_specs("laud_resnet50", "channel", 1, batch=2, channel_granularity=4)[5][1]
    table = DispatchTable()
    fill_predictions(table, spec, [0.2], ["channel_gemm"], "v100")
    assert table.entries[0.2].variant == "channel_gemm"
    from laudtriton.ops.registry import get_variant

    first = get_variant("channel_gemm").configs(spec)[0]  # the first of its space, not {}
    assert first and table.entries[0.2].config_dict == first


def test_fill_predictions_errors():
    with pytest.raises(ValueError, match="variant 'nope' has no latency model"):
        fill_predictions(DispatchTable(), SPEC, [0.5], ["dense", "nope"], CPU_DEFAULT)
    with pytest.raises(ValueError, match="'cray-1' unknown; known: .*v100"):
        fill_predictions(DispatchTable(), SPEC, [0.5], ["dense"], "cray-1")


@pytest.mark.parametrize("hw, batch, target", [("v100", 32, 0.5), ("cpu", 1, 0.35),
                                               ("jetson_tx2", 1, 0.7)])
def test_design_sorted_and_on_target(hw, batch, target):
    hw = CPU_DEFAULT if hw == "cpu" else get_hardware(hw)
    designs = design_search("laud_resnet50", hw, target, ("spatial", "channel", "layer"),
                            (1, 2, 4, 7, 8), batch=batch)
    # stage maps 56, 28, 14, 7: spatial S in {1,2,4,7,8} ∩ [1, size] + channel + layer
    assert len(designs) == 7 * 7 * 7 * 6
    secs = [d.seconds for d in designs]
    assert secs == sorted(secs)
    labels = {d.label() for d in designs}
    assert len(labels) == len(designs)
    assert "spatial-spatial-spatial-spatial 4-4-2-1" in labels
    assert "spatial-spatial-spatial-spatial 8-4-7-1" in labels
    for d in designs:
        assert d.flops_ratio == pytest.approx(target, abs=1e-6)
        assert 0 < d.seconds and d.dense_seconds == designs[0].dense_seconds
        assert len(d.rates) == 16 and len(d.variants) == 16
    assert designs[0].seconds < designs[0].dense_seconds


def test_the_dense_baseline_is_the_static_network_whatever_the_modes(capsys, monkeypatch):
    """design and predict took the "dense" of a channel-mode block under the factors of
    its masked path ("dense/channel"): a channel design's "x dense" was measured against
    another dense model than a spatial one's (85 against 64 ms on a fitted cache)."""
    from laudtriton.predict import command_options
    from laudtriton.predict.model import Factors

    factors = {"dense": Factors(0.5, 0.7, 2e-5), "dense/channel": Factors(0.1, 0.1, 1e-3)}
    dense = {modes: design_search("laud_resnet50", CPU_DEFAULT, 0.5, modes, (4,),
                                  factors=factors)[0].dense_seconds
             for modes in [("spatial",), ("channel",), ("layer",), ("both",)]}
    assert len(set(dense.values())) == 1, dense
    monkeypatch.setattr(command_options, "predictor_for",
                        lambda *a, **k: (CPU_DEFAULT, factors, ""))
    totals = []
    for mode in ("spatial", "channel"):
        assert main(["predict", "--model", "laud_resnet50", "--mode", mode,
                     "--rates", "0.5"]) == 0
        out = capsys.readouterr().out.splitlines()
        totals.append(float(out[out.index(next(ln for ln in out if "dense ms" in ln
                                                and "best ms" in ln)) + 1].split()[1]))
    assert totals[0] == totals[1] == pytest.approx(dense[("spatial",)] * 1e3, rel=1e-3)


def test_design_rates_meet_target_per_block():
    d = design_search("laud_resnet50", "v100", 0.5, ("spatial",), (4,), batch=8)
    assert len(d) == 1 and d[0].label() == "spatial-spatial-spatial-spatial 4-4-4-4"
    specs = [s for _, s in model_specs("laud_resnet50", "spatial", 4, 8, dtype="float16")]
    for spec, r in zip(specs, d[0].rates):
        assert flops_ratio(spec, r) == pytest.approx(0.5, abs=1e-6)


def test_design_ranks_each_configuration_once():
    """An S or a mode named twice (--granularities 4,4) counts once: it printed the same
    design 16 times."""
    d = design_search("laud_resnet50", "v100", 0.5, ("spatial", "spatial"), (4, 4), batch=8)
    assert [x.label() for x in d] == ["spatial-spatial-spatial-spatial 4-4-4-4"]


def test_design_top_and_errors():
    assert len(design_search("laud_resnet50", "a100", 0.5, top=3)) == 3
    for kwargs, msg in [({"target": 0.0}, "^target 0.0 must"), ({"target": 1.5}, "^target 1.5"),
                        ({"modes": ("spatial", "warp")}, r"unknown \['warp'\]; accepted"),
                        ({"top": 0}, "top")]:
        args = {"target": 0.5, **kwargs}
        with pytest.raises(ValueError, match=msg):
            design_search("laud_resnet50", "a100", **args)
    with pytest.raises(ValueError, match="stage 4"):
        design_search("laud_resnet50", "a100", 0.5, ("spatial",), (8,))


@pytest.mark.parametrize("kwargs, msg", [
    ({"target": "0.5"}, r"^target '0.5' must be in \(0, 1\]"),  # TypeError
    ({"target": True}, r"^target True must be in \(0, 1\]"),
    ({"top": 2.5}, "^top 2.5 must be an int >= 1"),  # TypeError (a slice index)
    ({"top": "3"}, "^top '3' must be an int >= 1"),  # TypeError
    ({"top": True}, "^top True must be an int >= 1"),  # kept one design
    ({"granularities": ("4",)}, "^granularities: '4' not a positive int"),  # TypeError
    ({"granularities": (0, 4)}, "^granularities: 0 not a positive int"),  # dropped
    ({"modes": "spatial"}, "^modes 'spatial': give a sequence of modes"),  # ['s', 'p', ..]
    # named the granularities (8 larger than the 4x4 map) for the input size
    ({"input_size": 16}, "input size 16 must be an int >= 32"),
])
def test_design_search_names_the_argument_of_another_type(kwargs, msg):
    """design_search's bad arguments are a ValueError naming them, not a TypeError from
    deep inside nor another option's error."""
    args = {"target": 0.5, "modes": ("spatial", "layer"), "granularities": (4, 8), **kwargs}
    with pytest.raises(ValueError, match=msg):
        design_search("laud_resnet50", "a100", **args)


def test_cli_design(capsys, tmp_path):
    rc = main(["design", "--model", "laud_resnet50", "--hardware", "rtx3090",
               "--target-rate", "0.5", "--granularities", "1,2,4,8", "--top", "4",
               "--batch", "16", "--cache-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [ln for ln in out.splitlines() if ln.strip()[:2].strip().isdigit()]
    assert len(rows) == 4
    ms = [float(r.split()[3]) for r in rows]
    assert ms == sorted(ms)
    for r in rows:  # S per stage, '_' where the stage has no spatial mask (it printed 1)
        modes, s_col = r.split()[1].split("-"), r.split()[2].split("-")
        assert len(s_col) == 4 and all(
            (g == "_") == (m in ("channel", "layer")) for m, g in zip(modes, s_col))


def test_design_s_label():
    d = Design(("spatial", "layer", "both", "channel"), (4, 1, 2, 1), 1.0, 2.0, 0.5)
    assert d.s_label() == "4-_-2-_" and d.label() == "spatial-layer-both-channel 4-_-2-_"


@pytest.mark.parametrize("args, msg", [
    (["design", "--hardware", "pdp11", "--target-rate", "0.5"], "known: a100"),
    (["design", "--hardware", "v100", "--target-rate", "2"], "--target-rate"),
    (["design", "--hardware", "v100", "--target-rate", "0.5", "--granularities", "a,b"],
     "--granularities"),
    (["design", "--hardware", "v100", "--target-rate", "0.5", "--modes", "sparse"], "--modes"),
    (["design", "--target-rate", "0.5", "--modes", ",,"], "--modes ',,' names no mode"),
    (["design", "--target-rate", "0.5", "--channel-granularity", "0"],
     "--channel-granularity '0' is not a positive int"),
    (["design", "--target-rate", "0.5", "--modes", "spatial", "--channel-granularity", "-2"],
     "--channel-granularity '-2' is not a positive int"),
    (["design", "--target-rate", "0.5", "--batch", "0"], "--batch 0 must be in [1, 4096]"),
    (["design", "--target-rate", "0.5", "--cache-dir", ""], "--cache-dir '' is empty"),
    # 256^4 configurations, which the search built and sorted, growing for minutes
    (["design", "--target-rate", "0.5", "--input-size", "4096", "--modes", "spatial,both",
      "--granularities", ",".join(map(str, range(1, 129)))],
     "--modes/--granularities: 4294967296 configurations (256 x 256 x 256 x 256 options per "
     "stage) are more than the 250000 the search ranks"),
])
def test_cli_design_errors(capsys, args, msg):
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err


def test_cli_design_target_above_the_floor_but_not_reached_says_so(capsys, tmp_path):
    """0.2 is above the model's floor (0.091) but below what layer4.0 reaches alone (its
    downsample): the designs land above it, and the message called 0.2 out of reach
    while printing a floor under it."""
    rc = main(["design", "--model", "laud_resnet50", "--hardware", "v100", "--target-rate",
               "0.2", "--top", "1", "--cache-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0 and "out of reach" not in out + err
    header = next(ln for ln in out.splitlines() if "configurations at" in ln)
    assert "(--target-rate 0.2 not reached; floor 0.091)" in header
    assert "0.2 is not reached (each block is aimed at it on its own)" in err


def test_cli_design_target_below_the_floor_says_what_it_reaches(capsys):
    """Blocks whose dense downsample alone is above the target run at rate 0, so every
    design lands above it: the header states the ratio reached and the floor, with a
    warning, instead of the target the rows do not meet."""
    from laudtriton.predict.network import model_specs

    specs = [spec for _, spec in model_specs("laud_resnet50")]  # the floor: downsamples
    floor = sum(s.conv_macs()[3] for s in specs) / sum(sum(s.conv_macs()) for s in specs)
    assert f"{floor:.3f}" == "0.091"  # 359.7 M of the blocks' 3969.1 M multiply-adds
    rc = main(["design", "--model", "laud_resnet50", "--hardware", "v100", "--target-rate",
               "0.01", "--top", "3"])  # a preset: nothing of the cache directory is read
    out, err = capsys.readouterr()
    assert rc == 0
    flops = [float(ln.split()[-1]) for ln in out.splitlines() if ln.strip()[:2].strip().isdigit()]
    # the downsample blocks at rate 0 (the floor) and the others at the target
    plain = sum(sum(s.conv_macs()) for s in specs if s.conv_macs()[3] == 0)
    reached = floor + 0.01 * plain / sum(sum(s.conv_macs()) for s in specs)
    assert f"{reached:.3f}" == "0.097"  # 0.0906 + 0.01 x 0.660
    assert len(flops) == 3 and flops[0] == pytest.approx(reached, abs=1e-3)
    assert len(set(flops)) == 1
    header = next(ln for ln in out.splitlines() if "configurations at" in ln)
    assert header.endswith(f"at FLOPs ratio {flops[0]:.3f} (--target-rate 0.01 out of reach; "
                           f"floor {floor:.3f})")
    assert err.startswith("laudtriton design: warning: --target-rate 0.01 is out of reach")
    assert f"FLOPs ratio {reached:.3f}" in err and f"rate 0: {floor:.3f}" in err
    main(["design", "--model", "laud_resnet50", "--hardware", "v100", "--target-rate", "0.5",
          "--top", "1"])
    out, err = capsys.readouterr()
    assert "configurations at FLOPs ratio 0.5\n" in out and err == ""


@pytest.mark.parametrize("argv,says", [
    (["--granularities", "99"], "--granularities: 99 larger than every stage's map"),
    (["--channel-granularity", "3"], "--channel-granularity 3 must divide"),
    (["--input-size", "33", "--modes", "spatial", "--granularities", "8"],
     "--modes/--granularities: stage 2 (5x5) has no option")])
def test_design_checks_its_options_before_reading_the_hardware(argv, says, tmp_path,
                                                                monkeypatch, capsys, caplog):
    """These were found inside the search, after the hardware was read: a calibration
    warning came first, and the last message named no option."""
    from laudtriton.cli import main

    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path))  # no calibration there
    assert main(["design", "--target-rate", "0.5", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and says in err
    assert "calibration" not in caplog.text  # the hardware was not read


@pytest.mark.parametrize("ratio, picked", [(0.97, "dense"), (1 - DENSE_MARGIN, "dense"),
                                           (0.9, "compact")])
def test_design_picks_a_variant_as_compile_would(monkeypatch, ratio, picked):
    """A block's variant and time in a design are those compile's rule would pick from the
    same predictions (``DispatchTable.add``): a variant within ``DENSE_MARGIN`` of dense
    leaves the block dense. The design took the fastest, so its latency could be up to
    5% a block below that of the model compile would build."""
    from laudtriton.predict import model

    def fake(spec, rate, variant, hw, factors=None):
        return 1e-3 * (1.0 if model.resolve_variant(variant).name == "dense" else ratio)

    monkeypatch.setattr(model, "predict_expected", fake)
    (d,) = design_search("laud_resnet50", CPU_DEFAULT, 0.5, ("layer",), (1,))
    assert d.variants == (picked,) * 16
    stem = model.predict_stem_head(224, 1, CPU_DEFAULT.default_dtype, CPU_DEFAULT, None)
    per_block = 1e-3 if picked == "dense" else ratio * 1e-3
    assert d.seconds == pytest.approx(16 * per_block + stem, rel=1e-12)


@pytest.mark.parametrize("ratio, picked", [(0.97, "dense"), (0.9, "compact")])
def test_predict_best_column_is_compiles_pick(monkeypatch, capsys, ratio, picked):
    """``predict``'s "best" column and its model total are compile's pick, as in design."""
    from laudtriton.predict import model

    def fake(spec, rate, variant, hw, factors=None):
        return 1e-3 * (1.0 if model.resolve_variant(variant).name == "dense" else ratio)

    monkeypatch.setattr(model, "predict_expected", fake)
    assert main(["predict", "--model", "laud_resnet50", "--mode", "layer", "--rates", "0.5",
                 "--hardware", "v100"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [ln for ln in out if ln.startswith("layer")]
    assert rows and all(ln.split()[-1] == picked for ln in rows)
    assert sum(int(ln.split()[-5].lstrip("x")) for ln in rows) == 16  # "x2": its count
    total = float(out[-1].split()[2])  # the model line: rate, dense ms, best ms, ...
    per_block = 1.0 if picked == "dense" else ratio
    stem = float(re.search(r"stem/head ([\d.]+) ms", "\n".join(out)).group(1))
    assert total == pytest.approx(16 * per_block + stem, abs=2e-3)


@pytest.mark.parametrize("command", [["predict", "--rates", "0.5"],
                                     ["design", "--target-rate", "0.5", "--top", "2"]])
def test_options_a_preset_hardware_does_not_read_are_named(capsys, tmp_path, command):
    """A preset (v100) has no calibration or timings here: --cache-dir and --no-fit passed
    silently for read; a warning now names them, and the output is the same."""
    base = [*command, "--model", "laud_resnet50", "--hardware", "v100"]
    assert main(base) == 0
    plain = capsys.readouterr()
    assert "warning" not in plain.err
    assert main([*base, "--cache-dir", str(tmp_path), "--no-fit"]) == 0
    out = capsys.readouterr()
    assert out.out == plain.out
    assert f"laudtriton {command[0]}: warning: --cache-dir and --no-fit read nothing with " \
           "--hardware v100" in out.err
    assert main([*command, "--model", "laud_resnet50", "--no-fit",
                 "--cache-dir", str(tmp_path)]) == 0  # cpu: both read
    assert "read nothing" not in capsys.readouterr().err
