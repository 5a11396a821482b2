"""benchmarks/gpu_overhead.py (and gpu_blocks.py), the GPU time breakdown: its plumbing on
CPU (the GPU run's figures are in BENCHMARKS.md, "GPU: NVIDIA H200")."""

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_overhead.py"
# The tests that build whole networks take conftest's two_blocks_a_stage (8 blocks, the
# same 8 distinct shapes): the parts, rows and recorded errors do not depend on the depth.


def _load():
    spec = importlib.util.spec_from_file_location("gpu_overhead", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # puts benchmarks/ on sys.path: gpu_blocks imports
    return mod


def _rows(out):
    return list(csv.DictReader(open(out / "overhead.csv")))


def test_runs_every_part_on_cpu_and_writes_a_row_per_measurement(tmp_path,
                                                                 two_blocks_a_stage):
    mod = _load()
    assert mod.main(["--out", str(tmp_path), "--device", "cpu", "--input-size", "32",
                     "--batches", "1", "--budget", "3600"]) == 0  # (load: not cut short)
    summary = json.loads((tmp_path / "overhead.json").read_text())
    assert summary["errors"] == []
    assert summary["skipped"] == ["tiles: CUDA only"]
    assert summary["info"]["torch_add_host_us"] > 0
    rows = _rows(tmp_path)
    whole = {(r["mode"], r["what"]) for r in rows if r["part"] == "whole"}
    assert whole == {(m, w) for m in ("spatial", "channel", "layer")
                     for w in ("dense network", "compiled", "compiled static")}
    blocks = [r for r in rows if r["part"] == "block"]
    specs = {r["spec"] for r in blocks}
    assert len(specs) == 24  # 8 distinct shapes in each of the three modes
    for s in specs:  # the static dense block and at least one variant on each
        whats = [r["what"] for r in blocks if r["spec"] == s]
        assert whats[0] == "static dense" and len(whats) >= 2
        assert all(w == w.strip() for w in whats)
    for r in rows:  # eager timed everywhere; no device profile and no graph on CPU
        assert float(r["eager_us"]) > 0
        assert math.isnan(float(r["device_us"]))
        assert math.isnan(float(r["graph_us"]))


def test_a_failing_measurement_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch,
                                                               two_blocks_a_stage):
    """Every graph capture fails and the device timing answers: each failure is one
    recorded error, the item's row is still written with its other timings, and every
    part still runs."""
    mod = _load()

    def no_graph(fn, dev):
        raise RuntimeError("operation not permitted when stream is capturing")

    gb = sys.modules["gpu_blocks"]  # measures for both scripts (``measured``)
    monkeypatch.setattr(gb, "graph_us", no_graph)
    monkeypatch.setattr(gb, "device_us", lambda fn, dev: (5.0, 3.0))
    # each item run once, not timed (20 calls each): the eager timing is the test above's
    monkeypatch.setattr(gb, "eager_us", lambda fn, dev: (fn(), 7.0)[1])
    assert mod.main(["--out", str(tmp_path), "--device", "cpu", "--input-size", "32",
                     "--batches", "1", "--parts", "2,3,4", "--budget", "3600"]) == 0
    errors = json.loads((tmp_path / "overhead.json").read_text())["errors"]
    # a graph is tried on the 24 static dense blocks (no capturable variant runs on CPU),
    # the 3 dense networks and the 3 static compiled networks
    assert len(errors) == 24 + 3 + 3
    assert all(e["item"].endswith(": graph") and "capturing" in e["error"]
               for e in errors)
    rows = _rows(tmp_path)
    assert len([r for r in rows if r["part"] == "whole"]) == 9
    graphed = [r for r in rows if r["what"] in ("static dense", "dense network",
                                                 "compiled static")]
    assert len(graphed) == 30
    for r in rows:
        assert float(r["device_us"]) == 5.0 and float(r["kernels"]) == 3.0
        assert float(r["eager_us"]) == 7.0 and math.isnan(float(r["graph_us"]))


def test_block_rows_are_labelled_with_the_dtype_that_ran(tmp_path, monkeypatch):
    """Part 2's spec column names the dtype its block ran in (``BlockSpec.short``: named
    when not float32). With ``--device cpu`` the blocks run in float32, and the rows were
    labelled float16 (the dtype of ``distinct_blocks``' specs), which also chose the
    variants and configs. One block per mode keeps it short."""
    mod = _load()
    gb = sys.modules["gpu_blocks"]
    listed, block_input, ran = gb._listed, gb._block_input, []

    def one_per_mode(input_size):
        firsts = {}
        for entry in listed(input_size):
            firsts.setdefault(entry[0], entry)
        return list(firsts.values())

    def recording(block, spec, dt, dev):
        ran.append((spec, dt))
        return block_input(block, spec, dt, dev)

    monkeypatch.setattr(gb, "_listed", one_per_mode)
    monkeypatch.setattr(gb, "_block_input", recording)
    assert mod.main(["--out", str(tmp_path), "--device", "cpu", "--input-size", "32",
                     "--batches", "1", "--parts", "2", "--budget", "3600"]) == 0
    assert len(ran) == 3 and {dt for _, dt in ran} == {torch.float32}
    assert all(spec.dtype == str(dt).removeprefix("torch.") for spec, dt in ran)
    labels = {r["spec"] for r in _rows(tmp_path) if r["part"] == "block"}
    assert labels == {spec.short() for spec, _ in ran}
    assert not [s for s in labels if "float16" in s]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_refuses_cuda_without_a_gpu(tmp_path, capsys):
    assert _load().main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "overhead.csv").exists()


@pytest.mark.parametrize("option,shown", [
    (["--batches", "0"], "--batches '0'"), (["--batches", "1,x"], "--batches '1,x'"),
    (["--batches", "1,1"], "--batches '1,1'"), (["--parts", "7"], "--parts '7'"),
    (["--parts", ""], "--parts ''"), (["--parts", "0"], "--parts '0'"),
    (["--budget", "-1"], "--budget -1"), (["--budget", "nan"], "--budget nan"),
    (["--input-size", "0"], "--input-size must be in [32"), (["--out", "FILE"], "--out")])
def test_bad_options_exit_2_naming_the_option_and_value(tmp_path, option, shown, capsys):
    file = tmp_path / "a_file"
    file.write_text("x")
    option = [str(file) if o == "FILE" else o for o in option]
    out = [] if option[0] == "--out" else ["--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        _load().main([*out, "--device", "cpu", *option])
    assert e.value.code == 2
    assert shown in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_tile_configs_are_configs_the_variants_accept():
    """Part 5's configs (the space, then the extra tiles) in the form ``Variant.run``
    takes: the spatial ones name conv1-conv3, each a valid TileConfig (the GPU run of
    session 38 wrapped the space's configs a second time, and all 64 were refused)."""
    pytest.importorskip("triton")
    from laudtriton.gpucheck.blocks import distinct_blocks
    from laudtriton.kernels.channel_gemm import GemmConfig
    from laudtriton.kernels.gather_conv import TileConfig
    from laudtriton.ops import get_variant

    _load()
    gb = sys.modules["gpu_blocks"]
    for mode, _, spec, _ in distinct_blocks(["laud_resnet101"], 224).values():
        if mode == "layer":
            continue
        v = get_variant("masked" if mode == "spatial" else "channel_gemm")
        configs = gb.tile_configs(v, spec.with_(batch=64))
        assert [c for c, extra in configs if not extra] == v.configs(spec.with_(batch=64))
        assert sum(extra for _, extra in configs) == len(gb.EXTRA_TILES[v.name])
        for cfg, _ in configs:
            if mode == "spatial":
                assert set(cfg) == {"conv1", "conv2", "conv3"}
                for c in cfg.values():
                    TileConfig.from_dict(c)  # checks its fields
            else:
                GemmConfig.from_dict(cfg)
    assert gb.short_config({}) == ""
    assert gb.short_config({"conv1": dict(block_m=64, block_n=128, block_k=64, num_warps=4,
                                          num_stages=3)}) == "64x128x64w4s3"


def test_kernels_part_writes_a_profile_table_per_network(tmp_path, two_blocks_a_stage):
    assert _load().main(["--out", str(tmp_path), "--device", "cpu", "--input-size", "32",
                         "--batches", "1", "--parts", "6"]) == 0
    text = (tmp_path / "kernels.txt").read_text()
    heads = [line for line in text.splitlines() if line.startswith("== ")]
    assert [h.split(" (")[0] for h in heads] == [
        f"== {m} b1 {n}" for m in ("spatial", "channel", "layer")
        for n in ("dense network", "compiled")]
    assert all(("blocks ran" in h) == ("compiled" in h) for h in heads)
    assert all("Self CPU" in part for part in text.split("\n== ")[1:])
