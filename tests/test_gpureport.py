"""laudtriton.gpureport: gpucheck's CSV, plot and table from timing rows (no GPU needed)."""

import csv
import json
import math

from laudtriton import gpureport
from laudtriton.gpucheck import record


def _rows():
    members = json.dumps({"laud_resnet50": ["layer1.0"], "laud_resnet101": ["a", "b"]})
    rows = []
    for rate in gpureport.RATES:
        for v, t in (("dense", 2.0), ("gather", 3.0 * rate), ("patch", math.inf)):
            rows.append({"mode": "spatial", "spec": "s", "spec_key": "k", "batch": 1,
                         "rate": rate, "models": members, "variant": v, "dtype": "float16",
                         "config": "{}", "seconds": t, "ratio": t / 2.0})
    return rows


def test_model_curves_weight_blocks_by_count():
    c50 = gpureport.model_curves(_rows(), "laud_resnet50")[("spatial", 1)]
    c101 = gpureport.model_curves(_rows(), "laud_resnet101")[("spatial", 1)]
    assert c50["dense"][0.5] == 2.0 and c101["dense"][0.5] == 4.0
    assert c50["gather"][0.25] == 0.75 and c50["best"][0.75] == 2.0  # dense wins at 0.75
    assert "patch" not in c50  # never finite


def test_outputs_csv_png_table(tmp_path):
    rows = _rows()
    gpureport.write_csv(rows, tmp_path / "t.csv")
    with open(tmp_path / "t.csv") as f:
        back = list(csv.DictReader(f))
    assert len(back) == len(rows) and back[0]["variant"] == "dense"
    assert gpureport.plot(rows, "laud_resnet50", tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    r = record.Run(tmp_path, 10, "cpu")
    r.rows = rows
    text = gpureport.table(r, ["laud_resnet50"])
    assert "spatial" in text and "0.38x" in text  # gather at 0.25: 0.75 / 2.0


def _whole_rows(model_blocks: dict[str, list[str]], specs: int, rates=gpureport.RATES):
    """Rows of ``specs`` distinct blocks, each standing for the names in model_blocks."""
    rows = []
    for i in range(specs):
        members = json.dumps(model_blocks)
        for rate in rates:
            for v, t in (("dense", 2.0), ("gather", 1.0)):
                rows.append({"mode": "spatial", "spec": f"s{i}", "spec_key": f"k{i}",
                             "batch": 1, "rate": rate, "models": members, "variant": v,
                             "dtype": "float16", "config": "{}", "seconds": t, "ratio": t / 2})
    return rows


def test_table_and_plot_say_when_a_time_limit_left_blocks_untimed(tmp_path, monkeypatch):
    """A run stopped inside part 3 printed one block's sums as the whole model's, with
    nothing to tell them apart."""
    r = record.Run(tmp_path, 10, "cpu")
    whole = [f"layer{s}.{i}" for s, n in ((1, 3), (2, 4), (3, 6), (4, 3)) for i in range(n)]
    r.rows = _whole_rows({"laud_resnet50": whole}, 1)  # one spec standing for all 16
    assert gpureport.partial(r.rows, "laud_resnet50") == {}
    assert "partial" not in gpureport.table(r, ["laud_resnet50"])
    r.rows = _whole_rows({"laud_resnet50": ["layer1.1", "layer1.2"]}, 1)  # 2 of 16
    assert gpureport.partial(r.rows, "laud_resnet50") == {("spatial", 1): (2, 16)}
    row = next(ln for ln in gpureport.table(r, ["laud_resnet50"]).splitlines()
               if ln.startswith("laud_resnet50"))
    assert row.endswith("partial: 2 of 16 blocks timed at a rate")
    r.rows = _whole_rows({"laud_resnet50": whole}, 1, rates=(0.25, 0.5))  # 0.75 not reached
    assert gpureport.partial(r.rows, "laud_resnet50") == {("spatial", 1): (0, 16)}
    titles = []
    from matplotlib.axes import Axes

    real = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda ax, t, **k: (titles.append(t),
                                                               real(ax, t, **k))[1])
    assert gpureport.plot(r.rows, "laud_resnet50", tmp_path / "p.png")
    assert titles == ["laud_resnet50 spatial b1 (partial: 0 of 16 blocks at a rate)"]


def test_model_curves_take_the_fastest_timing_and_dense_where_a_variant_is_missing():
    """A block timed twice by one variant (two configs) counts its faster timing,
    whichever came first; a variant with no timing of a block counts dense's time there
    (what dispatch would run), so its whole-model sum stays comparable."""
    members = json.dumps({"laud_resnet50": ["layer1.0"]})

    def row(key, variant, seconds):
        return {"mode": "spatial", "spec": key, "spec_key": key, "batch": 1, "rate": 0.5,
                "models": members, "variant": variant, "dtype": "float16", "config": "{}",
                "seconds": seconds, "ratio": seconds / 2.0}

    rows = [row("k0", "dense", 2.0), row("k0", "gather", 0.5), row("k0", "gather", 1.5),
            row("k1", "dense", 4.0)]  # gather does not run block k1
    c = gpureport.model_curves(rows, "laud_resnet50")[("spatial", 1)]
    assert c["gather"][0.5] == 0.5 + 4.0
    assert c["dense"][0.5] == 6.0 and c["best"][0.5] == 4.5


def test_table_gives_the_whole_compiled_model_for_resnet101_alone(tmp_path):
    """The whole@0.5 column is the compiled LAUD-ResNet-101's ratio (gpucheck compiles
    that model only): a compiled row does not show up as another model's."""
    r = record.Run(tmp_path, 10, "cpu")
    r.rows = _rows() + [{"mode": "spatial", "spec": "whole", "spec_key": "", "batch": 1,
                         "rate": 0.5, "models": "", "variant": "compiled",
                         "dtype": "float16", "config": "{}", "seconds": 1.0, "ratio": 0.61}]
    lines = gpureport.table(r, ["laud_resnet50", "laud_resnet101"]).splitlines()
    r50 = next(ln for ln in lines if ln.startswith("laud_resnet50 "))
    r101 = next(ln for ln in lines if ln.startswith("laud_resnet101 "))
    assert r50.split()[7] == "-" and r101.split()[7] == "0.61x"  # after the 3 best@
