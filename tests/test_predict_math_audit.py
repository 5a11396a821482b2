"""Audit of the predictor's arithmetic (predict.network, predict.model, predict.fit)
against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from laudtriton.nn.maskers import expand_mask1, upsample_mask
from laudtriton.ops.registry import get_variant
from laudtriton.predict.hardware import get_hardware
from laudtriton.predict.model import (
    factors_for,
    latency_from_terms,
    predict_block,
    predict_expected,
    terms,
)
from laudtriton.predict.network import flops_ratio, model_specs, stem_head_cost


def _spec(name: str, **kw):
    return dict(model_specs("laud_resnet50", **kw))[name]


def test_conv_macs_and_stem_head_match_the_flop_counter():
    """Each block's conv multiply-adds (BlockSpec.conv_macs, which flops_ratio divides)
    and the stem + fc of stem_head_cost, against torch's FlopCounterMode on the model."""
    from torch.utils.flop_counter import FlopCounterMode

    from laudtriton.nn.resnet import laud_resnet50

    model = laud_resnet50(mode="spatial", granularity=(4, 4, 2, 1)).eval()
    specs = dict(model_specs("laud_resnet50", "spatial", "4-4-2-1"))
    for name, spec in specs.items():
        block = model.get_submodule(name)
        x = torch.zeros(1, spec.in_channels, *spec.in_hw)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            block.conv3(block.conv2(block.conv1(x)))
            if block.downsample is not None:
                block.downsample(x)
        assert fc.get_total_flops() == 2 * sum(spec.conv_macs()), name
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.conv1(torch.zeros(1, 3, 224, 224))
        model.fc(torch.zeros(1, 2048))
    assert 2 * stem_head_cost(224, 1)[0] == fc.get_total_flops()


@pytest.mark.parametrize("name,gran", [("layer1.0", "4-4-2-1"), ("layer2.0", "3-5-2-1"),
                                       ("layer3.1", "8-4-3-1")])
def test_flops_ratio_is_the_mean_over_random_masks(name, gran):
    """flops_ratio at k/N cells = the official accounting (conv1·rate1 + (conv2 + conv3)·
    rate3 + downsample) averaged over masks of k random cells (Monte Carlo, mask1 by the
    reference's expand_mask1)."""
    spec = _spec(name, mode="spatial", granularity=gran)
    gh, gw = spec.grid
    n = gh * gw
    c1, c2, c3, ds = spec.conv_macs()
    gen = torch.Generator().manual_seed(0)
    for k in (1, n // 3, n - 1):
        grid = torch.zeros(2000, n)
        for t in range(grid.shape[0]):
            grid[t, torch.randperm(n, generator=gen)[:k]] = 1
        m3 = upsample_mask(grid.view(-1, 1, gh, gw), spec.out_hw)
        r1 = expand_mask1(m3, spec.stride, spec.in_hw).float().mean().item()
        want = (c1 * r1 + (c2 + c3) * m3.mean().item() + ds) / (c1 + c2 + c3 + ds)
        assert flops_ratio(spec, k / n) == pytest.approx(want, abs=3e-3), k


def test_gpu_compute_term_follows_the_whole_cells_the_cost_counts():
    """gather and patch count whole cells per sample (round(rate·N)): at rate 0.13 on a
    2x2 grid they price one cell a sample, the same Cost as at 0.25. The tile quantisation
    took the GEMM rows at 0.13 as given, so q (padded/useful work of 0.13's rows) scaled
    the Cost of 0.25's rows: the compute term doubled, and the running maximum carried that
    spike to every higher rate (patch at rate 1 predicted 1.46x its own Cost, A100)."""
    hw = get_hardware("a100")
    spec = _spec("layer3.1", mode="spatial", granularity="8-4-7-1", batch=8,
                 dtype="float16")
    assert spec.grid == (2, 2)
    for v in ("gather", "patch"):
        assert get_variant(v).cost(spec, 0.13) == get_variant(v).cost(spec, 0.25)
        assert terms(spec, 0.13, v, hw) == terms(spec, 0.25, v, hw)
        for r in (0.25, 0.5, 1.0):
            raw = latency_from_terms(terms(spec, r, v, hw), factors_for(v, hw, None), hw)
            assert predict_expected(spec, r, v, hw) == pytest.approx(raw, rel=0.02), (v, r)


def test_predictions_are_non_decreasing_on_gpu_presets():
    """The monotone envelope still holds after the whole-cell rows (spot check)."""
    hw = get_hardware("h100")
    for name in ("layer1.0", "layer2.1", "layer3.1", "layer4.2"):
        spec = _spec(name, mode="spatial", granularity="4-4-2-1", batch=4,
                     dtype="float16")
        for v in ("gather", "patch", "fused", "masked"):
            t = [predict_block(spec, r, v, hw) for r in np.linspace(0, 1, 41)]
            assert all(b >= a for a, b in zip(t, t[1:])), (name, v)
