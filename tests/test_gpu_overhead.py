"""benchmarks/gpu_overhead.py, the GPU time breakdown: its plumbing on CPU (the GPU run's
figures are in BENCHMARKS.md, "GPU: NVIDIA H200")."""

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_overhead.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_overhead", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runs_every_part_on_cpu_and_writes_a_row_per_measurement(tmp_path):
    mod = _load()
    assert mod.main(["--out", str(tmp_path), "--device", "cpu", "--input-size", "32",
                     "--batches", "1", "--budget", "600"]) == 0
    summary = json.loads((tmp_path / "overhead.json").read_text())
    assert summary["errors"] == []
    assert summary["info"]["torch_add_host_us"] > 0
    rows = list(csv.DictReader(open(tmp_path / "overhead.csv")))
    whole = {(r["mode"], r["what"]) for r in rows if r["part"] == "whole"}
    assert whole == {(m, w) for m in ("spatial", "channel", "layer")
                     for w in ("dense network", "compiled", "compiled static")}
    blocks = [r for r in rows if r["part"] == "block"]
    specs = {r["spec"] for r in blocks}
    assert len(specs) == 24  # 8 distinct shapes in each of the three modes
    for s in specs:  # the static dense block and at least one variant on each
        whats = [r["what"] for r in blocks if r["spec"] == s]
        assert whats[0] == "static dense" and len(whats) >= 2
    for r in rows:  # eager timed everywhere; no device profile and no graph on CPU
        assert float(r["eager_us"]) > 0
        assert math.isnan(float(r["device_us"]))
        assert r["graph_us"] in ("", "nan")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_refuses_cuda_without_a_gpu(tmp_path, capsys):
    assert _load().main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "overhead.csv").exists()


@pytest.mark.parametrize("option", [["--batches", "0"], ["--batches", "1,x"], ["--parts", "7"],
                                    ["--budget", "-1"]])
def test_bad_options_exit_2_before_any_work(tmp_path, option, capsys):
    with pytest.raises(SystemExit) as e:
        _load().main(["--out", str(tmp_path / "o"), "--device", "cpu", *option])
    assert e.value.code == 2
    assert option[0] in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_tile_configs_are_configs_the_variants_accept():
    """Part 5's configs (the space, then the extra tiles) in the form ``Variant.run``
    takes: the spatial ones name conv1-conv3, each a valid TileConfig (the GPU run of
    session 38 wrapped the space's configs a second time, and all 64 were refused)."""
    from laudtriton.gpucheck.blocks import distinct_blocks
    from laudtriton.kernels.channel_gemm import GemmConfig
    from laudtriton.kernels.gather_conv import TileConfig
    from laudtriton.ops import get_variant

    mod = _load()
    for mode, _, spec, _ in distinct_blocks(["laud_resnet101"], 224).values():
        if mode == "layer":
            continue
        v = get_variant("masked" if mode == "spatial" else "channel_gemm")
        configs = mod.tile_configs(v, spec.with_(batch=64))
        assert [c for c, extra in configs if not extra] == v.configs(spec.with_(batch=64))
        assert sum(extra for _, extra in configs) == len(mod.EXTRA_TILES[v.name])
        for cfg, _ in configs:
            if mode == "spatial":
                assert set(cfg) == {"conv1", "conv2", "conv3"}
                for c in cfg.values():
                    TileConfig.from_dict(c)  # checks its fields
            else:
                GemmConfig.from_dict(cfg)


def test_kernels_part_writes_a_profile_table_per_network(tmp_path):
    assert _load().main(["--out", str(tmp_path), "--device", "cpu", "--input-size", "32",
                         "--batches", "1", "--parts", "6"]) == 0
    text = (tmp_path / "kernels.txt").read_text()
    heads = [line for line in text.splitlines() if line.startswith("== ")]
    assert [h.split(" (")[0] for h in heads] == [
        f"== {m} b1 {n}" for m in ("spatial", "channel", "layer")
        for n in ("dense network", "compiled")]
    assert all(("blocks ran" in h) == ("compiled" in h) for h in heads)
    assert all("Self CPU" in part for part in text.split("\n== ")[1:])
