"""laudtriton bench: the rows it reports (numbers from a short run, checked for shape and
consistency, not speed: performance targets live in BENCHMARKS.md)."""

import csv

import pytest
import torch

from laudtriton.bench import (
    NO_MASKS,
    DenseModel,
    bench,
    build_model,
    format_rows,
    nchw_dense_block,
    write_csv,
)
from laudtriton.ops import fold_block
from laudtriton.ops.dense import dense_block
from laudtriton.testing import assert_close


@pytest.fixture(scope="module")
def rows():
    torch.manual_seed(0)
    return bench("laud_resnet50", "channel", "4-4-2-1", [0.5], batch=1,
                 channel_granularity=2, reps=2, tune="off", repeat=3, log=lambda s: None)


def test_bench_rows(rows):
    blocks = [r for r in rows if r.block != "model"]
    model = [r for r in rows if r.block == "model"]
    assert [b.block for b in blocks] == [f"layer{s}.{i}" for s, n in
                                         ((1, 3), (2, 4), (3, 6), (4, 3)) for i in range(n)]
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
    # the fresh-input row averages the FLOPs ratio over other inputs than the repeated one
    assert model[2].flops_ratio != model[0].flops_ratio
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
    assert runs == pytest.approx(rows[-1].runs, abs=1e-4)
    assert "runs" in table[-1] and back[0]["runs"] == ""


def test_bench_rejects_unknown_model():
    with pytest.raises(ValueError, match="model 'resnet18' unknown"):
        bench("resnet18", "channel", "4-4-2-1", [0.5])
    with pytest.raises(ValueError, match="repeat must be >= 1, got 0"):
        bench("laud_resnet50", "channel", "4-4-2-1", [0.5], repeat=0)


def test_dense_baselines_agree():
    """The two dense forms fastest_dense chooses from (NCHW through F.conv2d, channels_last
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


def test_bench_layer_mode_per_block_rows():
    """Layer blocks run in the model's batch order (order.SampleOrder); the per-block rows
    still time every block on the input it met."""
    torch.manual_seed(0)
    rows = bench("laud_resnet50", "layer", "4-4-2-1", [0.5], batch=2, reps=1, tune="off",
                 log=lambda s: None)
    blocks = [r for r in rows if r.block != "model"]
    assert [r.block for r in blocks] == [f"layer{s}.{i}" for s, n in
                                         ((1, 3), (2, 4), (3, 6), (4, 3)) for i in range(n)]
    assert {r.variant for r in blocks} <= {"compact", "dense"}
    assert all(r.dense_ms > 0 and r.sparse_ms > 0 for r in rows)
