"""Audit of ``laudtriton bench``'s methodology (session 66, review m): what its rows time
and how their figures are derived."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from laudtriton import bench as bench_mod

ROOT = Path(__file__).resolve().parents[1]


def _bench_row_of_readme() -> str:
    """The text of README's Commands-table row of ``laudtriton bench``."""
    section = (ROOT / "README.md").read_text().split("\n## Commands\n")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `laudtriton bench ")]
    assert len(rows) == 1
    return rows[0]


def test_readme_says_what_a_per_block_row_times():
    """README's bench row said "dense vs compiled, per block and whole model" and nothing
    of what a per-block row times: the block alone, out of place, on its input recorded
    from the compiled model's forward on the benchmark image (real activations, not a
    synthetic input), dense on that same input (``bench._block_rows``); only the code's
    docstring said it, and BENCHMARKS.md said "out of place" alone."""
    row = _bench_row_of_readme()
    for words in ("per-block row", "out of place", "recorded", "real activations",
                  "same input", "maskers"):
        assert words in row, words


class _Stats(SimpleNamespace):
    """Stands in for ``ModelStats``: FLOPs per image, maskers included in ``flops``."""

    @property
    def flops_ratio(self) -> torch.Tensor:
        """flops / dense_flops, as ``ModelStats.flops_ratio``."""
        return torch.tensor(self.flops / self.dense_flops)


class _Model:
    """Stands in for the reference LAUD model: records its calls, gives fixed stats."""

    def __init__(self) -> None:
        self.calls = 0
        blocks = [SimpleNamespace(masker_flops=10.0), SimpleNamespace(masker_flops=30.0)]
        self.last_stats = _Stats(blocks=blocks, flops=540.0, dense_flops=1000.0)

    def __call__(self, x: torch.Tensor) -> None:
        self.calls += 1

    def blocks(self):
        """No blocks: ``mean_rate`` is stubbed in the test."""
        return []


class _Compiled:
    """Stands in for a CompiledModel: blocks with ``last_masks``; calls do nothing."""

    def __init__(self, blocks: list) -> None:
        self.blocks = blocks

    def __call__(self, x: torch.Tensor, masks=None, check_masks: bool = True) -> None:
        return None


def test_whole_model_rows_derive_ratio_flops_and_efficiency_as_stated(monkeypatch):
    """The protocol of the whole-model rows, timings stubbed (no timing is asserted): one
    interleaved run of both dense forms beside the compiled model on x, with its masks
    given, and the reference; each row's dense time is that run's faster form; ratio =
    sparse / dense; FLOPs ratio from the reference's stats (maskers in, except the
    masks-given row); efficiency = FLOPs ratio / time ratio."""
    seen = {}

    def run(dense_calls, fns, warmup, reps):  # stands in for time_against_dense
        seen.update(forms=sorted(dense_calls), n=len(fns), warmup=warmup, reps=reps)
        return "channels_last", 0.2, [0.1, 0.08, 0.5]

    fresh = object()
    monkeypatch.setattr(bench_mod, "time_against_dense", run)
    monkeypatch.setattr(bench_mod, "_fresh_row", lambda *a, **k: fresh)
    monkeypatch.setattr(bench_mod, "mean_rate", lambda model: 0.5)
    masks = object()
    cm = _Compiled([SimpleNamespace(last_masks=masks)])
    model = _Model()
    meta = dict(model="m", mode="spatial", granularity="1", batch=1, rate=0.5)
    same, given, got_fresh, ref = bench_mod._model_rows(
        model, cm, {"nchw": object(), "channels_last": object()}, torch.zeros(1), meta, 20)
    assert seen == dict(forms=["channels_last", "nchw"], n=3, warmup=2, reps=20)
    assert got_fresh is fresh
    assert same.spec == "dense=channels_last" and ref.variant == "reference"
    for row, t, fr in ((same, 0.1, 0.54), (given, 0.08, 0.50), (ref, 0.5, 0.54)):
        assert row.dense_ms == pytest.approx(200.0)
        assert row.sparse_ms == pytest.approx(t * 1e3)
        assert row.ratio == pytest.approx(t / 0.2)
        assert row.flops_ratio == pytest.approx(fr)
        assert row.efficiency == pytest.approx(fr / (t / 0.2))


class _Block(torch.nn.Module):
    """Stands in for a CompiledBlock: adds its index to its input, records its calls."""

    def __init__(self, i: int) -> None:
        super().__init__()
        self.i, self.name, self.fb = i, f"b{i}", SimpleNamespace(name=f"fold{i}")
        self.spec = SimpleNamespace(short=lambda: f"spec{i}")
        self.last_run = SimpleNamespace(variant="v")
        self.calls: list = []

    def forward(self, x: torch.Tensor, check_finite: bool = True) -> torch.Tensor:
        self.calls.append((x, check_finite))
        return x + self.i


class _Net(torch.nn.Module):
    """Stands in for a CompiledModel: its blocks one after another on x, channels_last."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(_Block(i + 1) for i in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.contiguous(memory_format=torch.channels_last)
        for blk in self.blocks:
            h = blk(h)
        return h


class _Reference:
    """Stands in for the reference LAUD model of the per-block rows: fixed block stats."""

    def __init__(self, stats: list) -> None:
        self.last_stats = SimpleNamespace(blocks=stats)
        self.calls: list = []

    def __call__(self, x: torch.Tensor) -> None:
        self.calls.append(x)


def test_block_rows_time_both_sides_on_the_blocks_real_input(monkeypatch):
    """The per-block protocol, timings stubbed: one interleaved run per block of the NCHW
    dense block, the channels_last dense block (both on the compiled block's folded
    weights, no masks) and the compiled block (without its input test), all on the
    block's input as the network computed it (NCHW: a contiguous copy of the same values,
    made outside the timing); dense is the faster form; FLOPs ratio from the reference's
    stats over the dense block without maskers; efficiency = FLOPs ratio / time ratio."""
    net = _Net(2)
    x = torch.randn(1, 3, 4, 4)
    calls, runs = [], []
    monkeypatch.setattr(bench_mod, "nchw_dense_block",
                        lambda fb, xin: calls.append(("nchw", fb.name, xin)))
    monkeypatch.setattr(bench_mod, "dense_block",
                        lambda fb, xin, masks: calls.append(("cl", fb.name, xin, masks)))

    def interleaved(fns, warmup, reps):
        runs.append((len(fns), warmup, reps))
        for f in fns:
            f()
        return [0.3, 0.2, 0.1]

    monkeypatch.setattr(bench_mod, "interleaved_medians", interleaved)
    monkeypatch.setattr(bench_mod, "realised_rates", lambda model: [0.5, 0.5])
    stats = [SimpleNamespace(flops=60.0, dense_flops=110.0, masker_flops=10.0),
             SimpleNamespace(flops=30.0, dense_flops=100.0, masker_flops=0.0)]
    model = _Reference(stats)
    meta = dict(model="m", mode="spatial", granularity="1", batch=1, rate=0.5)
    rows = bench_mod._block_rows(model, net, x, meta, reps=20)
    assert runs == [(3, 2, 20)] * 2 and model.calls == [x]
    for k, blk in enumerate(net.blocks):
        real = x + sum(range(1, k + 1))  # the block's input in the network
        (kind1, fb1, x1), (kind2, fb2, x2, masks), (x3, check) = (
            calls[2 * k], calls[2 * k + 1], blk.calls[1])
        assert (kind1, kind2, fb1, fb2) == ("nchw", "cl", blk.fb.name, blk.fb.name)
        assert masks is bench_mod.NO_MASKS and check is False
        assert x2 is x3 and torch.equal(x2, real)
        assert x2.is_contiguous(memory_format=torch.channels_last)
        assert x1.is_contiguous() and torch.equal(x1, real)
    for row, s in zip(rows, stats):
        fr = s.flops / (s.dense_flops - s.masker_flops)
        assert (row.dense_ms, row.sparse_ms) == pytest.approx((200.0, 100.0))
        assert row.flops_ratio == pytest.approx(fr)
        assert row.efficiency == pytest.approx(fr / 0.5)
