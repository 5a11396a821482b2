"""Audit of ``tune.keys``, ``tune.paths``, ``tune.measure`` and ``tune.timing``: rate
buckets, the timing of variants and the output-path checks, each defect with the call
that showed it (no real timing: stand-in variants)."""

import types

import pytest
import torch

from laudtriton.ops.registry import Cost, Variant
from laudtriton.tune import measure
from laudtriton.tune.keys import rate_bucket
from laudtriton.tune.paths import check_output_path
from laudtriton.tune.timing import median_time


@pytest.mark.parametrize("rate,step,want", [
    (0.976, 0.15, 0.9), (1.0, 0.15, 0.9), (0.974, 0.15, 0.9), (0.9, 0.15, 0.9),
    (1.0, 0.3, 0.9), (0.5, 1, 0.0), (1.0, 1, 1.0), (1 / 3, 0.1, 0.3), (0.1 + 0.2, 0.1, 0.3),
    (0.05, 0.1, 0.0), (0.15, 0.1, 0.1), (0.95, 0.1, 0.9), (0.9500001, 0.1, 1.0),
])
def test_rate_bucket_is_a_multiple_of_step_in_range(rate, step, want):
    """With a step that does not divide 1, a rate near 1 went to 1.0, which is no bucket
    (0.976 with step 0.15: 1.05 clipped to 1.0); an int step returned an int."""
    got = rate_bucket(rate, step)
    assert got == want and type(got) is float


@pytest.mark.parametrize("step", [True, "0.1", None, float("nan"), 0.0])
def test_rate_bucket_refuses_a_step_that_is_not_a_number(step):
    """step=True bucketed 0.5 as 0 (int); "0.1" and None raised a TypeError."""
    with pytest.raises(ValueError, match=r"step .* must be a number in \(0, 1\]"):
        rate_bucket(0.5, step)


def _variant(name: str, calls: list, configs: list[dict]) -> Variant:
    """A variant returning a zero output of the stand-in block's shape, recording calls."""
    def run(fb, x, masks, cfg):
        calls.append(cfg)
        return torch.zeros(1, 2, 3, 3)
    return Variant(name, ("spatial",), ("cpu",), run=run, cost=lambda s, r: Cost(0, 0, 1),
                   configs=lambda spec: list(configs))


def test_time_variants_times_no_config_of_a_variant_pruned_to_none():
    """configs={"v": []} (every config pruned) timed v's whole config space instead."""
    spec = types.SimpleNamespace(short=lambda: "stub", out_channels=2, out_hw=(3, 3))
    calls: list = []
    v = _variant("v", calls, [{"a": 1}, {"a": 2}])
    out = measure.time_variants(None, spec, torch.zeros(1, 2, 3, 3), None, [v], warmup=0,
                                reps=1, configs={"v": []})
    assert out == {"v": {}} and calls == []
    out = measure.time_variants(None, spec, torch.zeros(1, 2, 3, 3), None, [v], warmup=0,
                                reps=1, configs={"other": [{"a": 3}]})  # not named: all
    assert sorted(out["v"]) == ['{"a":1}', '{"a":2}']


@pytest.mark.parametrize("device", ["meta", "mps", "xpu", "gpu", "", None])
def test_median_time_refuses_devices_other_than_cpu_and_cuda(device):
    """'meta' and 'mps' were timed as CPU calls (an asynchronous device's launch time
    alone, returned as its time); 'gpu' and '' raised torch's RuntimeError."""
    ran = []
    with pytest.raises(ValueError, match=r"device .* is not supported; accepted: 'cpu'"):
        median_time(lambda: ran.append(1), device, warmup=0, reps=1)
    assert ran == []


@pytest.mark.parametrize("name", ["x/.", "x/..", "afile/.", "adir/x/."])
def test_check_output_path_refuses_a_name_ending_in_a_dot(tmp_path, monkeypatch, name):
    """'x/.' passed, and the CSV went to a file 'x' (pathlib drops the '.'), replacing
    one there; 'x/..' was called a device, a pipe or a socket."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "adir").mkdir()
    with pytest.raises(ValueError, match="names a directory; give a file name"):
        check_output_path(name, "--csv")
    check_output_path("x.csv", "--csv")  # an ordinary name still passes
