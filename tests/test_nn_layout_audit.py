"""Audit of laudtriton.nn against the official LAUDNet layout and semantics, where
tests/test_nn_model.py is thin: every layout section on ResNet-101 too (the file lists
ResNet-50), the listed keys' order, per-stage option lists, and eval-mode forwards that
give each sample the output it gets alone (batch 1 vs 3), down to 1x1 feature maps."""

from __future__ import annotations

import pytest
import torch
from test_nn_model import LAYOUT_CONFIGS, layout, masker_keys, resnet_blocks, torchvision_keys

from laudtriton.nn import LaudResNet, laud_resnet50, laud_resnet101

# the six sections and the file's parser, shared with the layout tests there
SECTIONS = LAYOUT_CONFIGS


def _stage(cfg: dict, name: str, i: int):
    """The stage-i value of a per-stage option (scalar, "a-b-c-d" or a list), default
    as laud_resnet50's."""
    v = cfg.get(name, dict(mode="spatial", channel_granularity=1, channel_masker="MLP",
                           channel_masker_layers=2, channel_masker_reduction=16)[name])
    if isinstance(v, str) and "-" in v:
        v = v.split("-")[i]
    elif isinstance(v, (list, tuple)):
        v = v[i]
    return v if name in ("mode", "channel_masker") else int(v)


def official_keys(cfg: dict, depths=(3, 4, 6, 3)) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the official uni_resnet with ``cfg``, per-stage options allowed
    (``test_nn_model.official_keys`` takes one value per option)."""
    keys = torchvision_keys(depths)
    for pre, cin, p, _ in resnet_blocks(depths):
        i = int(pre[len("layer")]) - 1
        stage = {name: _stage(cfg, name, i) for name in (
            "mode", "channel_granularity", "channel_masker", "channel_masker_layers",
            "channel_masker_reduction")}
        keys |= {pre + k: v for k, v in masker_keys(stage, cin, p).items()}
    return keys


def shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_sections_are_known():
    assert set(layout()) == set(SECTIONS)


@pytest.mark.parametrize("title", list(SECTIONS))
def test_rule_reproduces_the_file(title):
    """The rule used below gives every listed key and shape, and the stated total."""
    total, listed = layout()[title]
    rule = official_keys(SECTIONS[title])
    assert {k: rule.get(k) for k in listed} == listed
    assert len(rule) == total


@pytest.mark.parametrize("title", list(SECTIONS))
def test_resnet50_listed_keys_in_the_files_order(title):
    """The listed keys come out of state_dict() in the order the file lists them."""
    total, listed = layout()[title]
    sd = laud_resnet50(**SECTIONS[title]).state_dict()
    assert len(sd) == total
    assert [k for k in sd if k in listed] == list(listed)


@pytest.mark.parametrize("title", list(SECTIONS))
def test_resnet101_every_section(title):
    """ResNet-101 (3, 4, 23, 3) in every section's configuration: keys (as a set) and
    shapes by the official rule; 17 more blocks than ResNet-50, each of the section's
    per-block key count."""
    got = shapes(laud_resnet101(**SECTIONS[title]))
    want = official_keys(SECTIONS[title], depths=(3, 4, 23, 3))
    assert set(got) == set(want), set(got) ^ set(want)
    assert got == want
    total50 = layout()[title][0]
    per_block = sum(1 for k in want if k.startswith("layer3.1."))
    assert len(got) == total50 + 17 * per_block


PER_STAGE = [
    dict(mode="spatial-channel-layer-both", granularity="4-4-2-1",
         channel_granularity=[1, 2, 4, 8], channel_masker=["MLP", "conv_linear", "MLP", "MLP"],
         channel_masker_layers="1-1-2-1", channel_masker_reduction=[16, 16, 8, 32]),
    dict(mode=["both", "both", "channel", "channel"], channel_granularity="2-2-1-1",
         channel_masker="conv_linear-MLP-conv_linear-MLP", channel_masker_layers=2),
    dict(mode=("layer", "layer", "spatial", "spatial"), granularity=(1, 1, 7, 7)),
]


@pytest.mark.parametrize("cfg", PER_STAGE)
def test_per_stage_options_keys(cfg):
    """Per-stage lists and "a-b-c-d" strings: each stage gets its own maskers."""
    assert shapes(laud_resnet50(**cfg)) == official_keys(cfg)


# ------------------------------------------------------------------ eval: batch vs alone


def randomized(**kw) -> LaudResNet:
    """A small LAUD-ResNet (2-1-2-1 blocks, quarter width) in eval, with random masker
    weights and BN statistics, so that masks differ between samples and blocks."""
    torch.manual_seed(0)
    model = LaudResNet((2, 1, 2, 1), width_mult=0.25, num_classes=10, input_size=None, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "masker" in name:
                p.copy_(torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def _masks(model) -> list[tuple]:
    return [tuple(None if t is None else t.clone() for t in
                  (b.last_masks.grid, b.last_masks.channel)) for _, b in model.blocks()]


BATCH_CASES = [
    (dict(mode="spatial"), (97, 33, 32)),  # 32: layer4 is 1x1
    (dict(mode="layer"), (64, 17, 1)),  # 1: every map 1x1
    (dict(mode="channel", channel_granularity=2, channel_masker_layers=1), (61, 1)),
    (dict(mode="channel", channel_masker="conv_linear", channel_masker_reduction=4,
          channel_granularity=4), (64, 2)),
    (dict(mode="both", channel_granularity=2), (96, 31)),
    (dict(mode="both", granularity=1, channel_granularity=2), (1, 3)),
    (dict(mode=["spatial", "channel", "layer", "both"], granularity="2-2-1-1"), (64, 17)),
    (dict(mode="layer-both-spatial-channel", granularity=[1, 2, 1, 1],
          channel_granularity=[1, 2, 4, 8], channel_masker=["MLP", "conv_linear"] * 2,
          channel_masker_reduction=4), (80, 9)),
]


@pytest.mark.parametrize("cfg,sizes", BATCH_CASES)
def test_eval_batch_equals_each_sample_alone(cfg, sizes):
    """In eval, a sample's masks and logits do not depend on the rest of its batch
    (no batch statistic leaks into a masker), down to 1x1 feature maps."""
    model = randomized(**cfg)
    for size in sizes:
        x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            y = model(x)
            batch_masks = _masks(model)
            alone, alone_masks = [], []
            for i in range(3):
                alone.append(model(x[i:i + 1]))
                alone_masks.append(_masks(model))
        for k, per_block in enumerate(batch_masks):
            for j, t in enumerate(per_block):
                if t is not None:
                    assert torch.equal(t, torch.cat([a[k][j] for a in alone_masks])), (size, k)
        torch.testing.assert_close(y, torch.cat(alone), rtol=1e-5, atol=1e-5)
        assert model.last_stats is not None  # the last run (batch 1) kept its stats
