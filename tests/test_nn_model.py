"""LAUD-ResNet: FLOPs against hand counts, state-dict layout of the official LAUDNet code
(tests/data/laudnet_state_dict_layout.txt), torchvision/official weight loading, rate
calibration and bad input."""

from __future__ import annotations

import functools
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from laudtriton.nn import (
    LaudResNet,
    calibrate_block,
    calibrate_rates,
    laud_resnet50,
    laud_resnet101,
)
from laudtriton.testing import make_block

LAYOUT_FILE = Path(__file__).parent / "data" / "laudnet_state_dict_layout.txt"


def tiny(**kw) -> LaudResNet:
    """A 4-block LAUD-ResNet (one block per stage, quarter width) for fast tests."""
    kw.setdefault("input_size", 64)
    return LaudResNet((1, 1, 1, 1), width_mult=0.25, num_classes=10, **kw).eval()


def steer_spatial(block) -> None:
    """Spatial masker margin = 2 * pooled input channel 0."""
    with torch.no_grad():
        conv = block.masker_spatial.conv
        conv.weight.zero_()
        conv.weight[0, 0], conv.weight[1, 0] = 1.0, -1.0
        conv.bias.zero_()


def steer_channel(block, group_mask) -> None:
    """Channel masker outputs ``group_mask`` for every input."""
    lin = block.masker_channel.last_linear()
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.bias[: len(group_mask)] = torch.tensor([1.0 if m else -1.0 for m in group_mask])


def cell_input(b, c, h, w, active_boxes):
    """x with channel 0 = +1 inside the (r0, r1, c0, c1) boxes and -1 elsewhere."""
    x = torch.randn(b, c, h, w)
    x[:, 0] = -1.0
    for r0, r1, c0, c1 in active_boxes:
        x[:, 0, r0:r1, c0:c1] = 1.0
    return x


# ---------------------------------------------------------------- FLOPs, hand counts
# Block with Cin=16, w=4, Cout=16 on 8x8 (stride 1): conv1 16*4*64 = 4096,
# conv2 4*4*9*64 = 9216, conv3 4*16*64 = 4096; dense backbone 17408.


def _stats(block, x):
    with torch.no_grad():
        block(x)
    return block.last_stats


def test_flops_spatial_stride1_by_hand():
    block = make_block(16, 4, mode="spatial", granularity=2)
    steer_spatial(block)
    s = _stats(block, cell_input(1, 16, 8, 8, [(0, 2, 0, 2)]))  # cell (0, 0) of 4x4 only
    assert s.rate3.item() == 1 / 16
    assert s.rate2.item() == 4 / 64
    assert s.rate1.item() == 9 / 64  # rows/cols 0..2 around the 2x2 active patch
    assert s.channel_rate.item() == 1.0
    assert s.masker_flops == 1024  # pool 16*16 + conv (2*16 + 16)*16
    assert s.dense_flops == 1024 + 17408
    assert s.flops.item() == 1024 + 576 + 576 + 256  # 4096*9/64 + 9216*4/64 + 4096/16


def test_flops_spatial_stride2_downsample_by_hand():
    # Cin=8, w=4, Cout=16, 8x8 -> 4x4, grid 2x2; conv1 8*4*64 = 2048, conv2 4*4*9*16 = 2304,
    # conv3 4*16*16 = 1024, downsample 8*16*16 = 2048 (always dense)
    block = make_block(8, 4, stride=2, mode="spatial", granularity=2)
    assert block.downsample is not None
    steer_spatial(block)
    s = _stats(block, cell_input(1, 8, 8, 8, [(4, 8, 4, 8)]))  # cell (1, 1)
    assert s.rate3.item() == 1 / 4
    assert s.rate2.item() == 4 / 16
    assert s.rate1.item() == 25 / 64  # centres (4|6, 4|6) dilated: rows/cols 3..7
    assert s.masker_flops == 128  # 8*4 + 24*4
    assert s.dense_flops == 128 + 2048 + 2304 + 1024 + 2048
    assert s.flops.item() == 128 + 800 + 576 + 256 + 2048


def test_flops_channel_mlp_by_hand():
    block = make_block(16, 4, mode="channel", channel_granularity=1, channel_masker_layers=2)
    steer_channel(block, [1, 0, 1, 0])
    s = _stats(block, torch.randn(1, 16, 8, 8))
    assert s.channel_rate.item() == 0.5
    assert s.rate1.item() == s.rate2.item() == s.rate3.item() == 1.0
    assert s.masker_flops == 1024 + 384  # pool 16*64; MLP 16*16 + 16*8 (hidden max(4//16,16))
    assert s.flops.item() == 1408 + 2048 + 2304 + 2048  # conv2 scales with rate^2


def test_flops_channel_rate_is_a_batch_mean():
    """Official accounting: conv2 scales with (batch-mean channel rate)^2, so samples with
    all and no channels give 0.25 of conv2, not the mean of squares 0.5."""
    block = make_block(16, 4, mode="channel", channel_granularity=1, channel_masker_layers=1)
    lin = block.masker_channel.last_linear()
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[:4, 0] = 1.0  # keep logits = mean of input channel 0
    x = torch.randn(2, 16, 8, 8)
    x[0, 0], x[1, 0] = 1.0, -1.0
    s = _stats(block, x)
    assert torch.equal(block.last_masks.channel, torch.tensor([[1.0] * 4, [0.0] * 4]))
    assert s.masker_flops == 1024 + 128  # pool + linear 16*8
    assert s.flops.item() == 1152 + 2048 + 2304 + 2048


def test_flops_conv_linear_masker_by_hand():
    block = make_block(16, 4, mode="channel", channel_masker="conv_linear",
                       channel_masker_reduction=4)
    steer_channel(block, [1, 1, 1, 0])
    s = _stats(block, torch.randn(1, 16, 8, 8))
    # official: reduced map 4*64, plus in*in//r = 64 and the linear 4*8 = 32
    assert s.masker_flops == 256 + 64 + 32
    assert s.flops.item() == 352 + 3072 + 5184 + 3072  # rates .75, .5625, .75


def test_flops_layer_gate_by_hand():
    block = make_block(16, 4, mode="layer")
    steer_spatial(block)
    x = torch.randn(2, 16, 8, 8)
    x[0, 0], x[1, 0] = 1.0, -1.0
    s = _stats(block, x)
    assert s.rate1.item() == s.rate2.item() == s.rate3.item() == 0.5
    assert s.masker_flops == 64  # pool 16*1 + conv 48*1
    assert s.flops.item() == 64 + 17408 / 2


def test_flops_both_by_hand():
    block = make_block(16, 4, mode="both", granularity=2, channel_granularity=2,
                       channel_masker_layers=1)
    steer_spatial(block)
    steer_channel(block, [1, 0])
    s = _stats(block, cell_input(1, 16, 8, 8, [(0, 2, 0, 2)]))
    assert s.masker_flops == 1024 + 1024 + 64  # spatial; channel pool 16*64 + linear 16*4
    # conv1 4096*.5*9/64, conv2 9216*.25*4/64, conv3 4096*.5/16
    assert s.flops.item() == 2112 + 288 + 144 + 128
    assert s.dense_flops == 2112 + 17408


def test_model_flops_stem_head_and_dense_by_hand():
    """Model FLOPs = stem (7x7 conv + 3x3 maxpool) + blocks + head (avgpool + fc); the dense
    reference is the static network without maskers."""
    model = tiny(mode="spatial", granularity="2-2-1-1")
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    st = model.last_stats
    stem = 3 * 16 * 32 * 32 * 49 + 16 * 16 * 16 * 9
    head = 512 + 512 * 10  # avgpool over 4*128 channels, then fc (the official forward)
    assert st.flops.item() == pytest.approx(stem + head + sum(b.flops.item() for b in st.blocks))
    # the official op_counter (full_flops): avgpool over the 2x2 map, fc weights + bias
    dense = stem + 512 * 2 * 2 + 512 * 10 + 10
    cin, hin = 16, 16
    for p, stride in ((16, 1), (32, 2), (64, 2), (128, 2)):  # planes (x0.25), stride
        ho = (hin - 1) // stride + 1
        dense += cin * p * hin**2 + p * p * 9 * ho**2 + p * 4 * p * ho**2 + cin * 4 * p * ho**2
        cin, hin = 4 * p, ho
    assert st.dense_flops == dense
    assert st.block_flops_ratios.shape == (4,)
    assert torch.allclose(st.block_flops_ratios,
                          torch.stack([b.flops / b.dense_flops for b in st.blocks]))



def test_dense_flops_is_the_official_op_counter_full_flops():
    """ModelStats.dense_flops equals what the official ``op_counter.measure_model`` counts
    for the static network (the sparsity loss's denominator): here re-counted with its
    rules by hooks on the leaves a dense forward runs (every gate forced on)."""
    import torch.nn as nn

    model = tiny(mode="layer")
    for _, b in model.blocks():
        with torch.no_grad():
            conv = b.masker_spatial.conv
            conv.weight.zero_()
            conv.bias.copy_(torch.tensor([1.0, -1.0]))  # every layer gate on
    count = [0]

    def counted(mod, inp, out):
        x = inp[0]
        if isinstance(mod, nn.Conv2d):
            count[0] += mod.weight.numel() * out.shape[2] * out.shape[3]
        elif isinstance(mod, nn.MaxPool2d):
            count[0] += out[0].numel() * mod.kernel_size ** 2
        elif isinstance(mod, nn.AdaptiveAvgPool2d):
            count[0] += x[0].numel()
        elif isinstance(mod, nn.Linear):
            count[0] += mod.weight.numel() + mod.bias.numel()

    for name, mod in model.named_modules():
        if "masker" not in name and not list(mod.children()):
            mod.register_forward_hook(counted)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert all(b.rate3.item() == 1.0 for b in model.last_stats.blocks)
    assert model.last_stats.dense_flops == count[0]


def test_a_hook_on_the_stem_pool_runs_once_per_forward_on_the_real_map():
    """Counting the stem's FLOPs does not call the model's pool module (its hooks would
    run a second time, on a meta tensor)."""
    model = tiny(mode="spatial", granularity="2-2-1-1")
    seen = []
    model.maxpool.register_forward_hook(lambda m, i, o: seen.append(float(o.sum())))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert len(seen) == 1


@pytest.mark.parametrize("pool", ["identity", "max-ceil", "avg"])
def test_model_flops_count_a_replaced_stem_as_it_is(pool):
    """A replaced conv1 (3x3, stride 1) and pooling are counted from their own kernel
    and output sizes (a 3x3 pool: 9 per output value; no pooling layer: nothing)."""
    model = tiny(mode="spatial", granularity="2-2-1-1")
    model.conv1 = torch.nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
    model.maxpool = {"identity": torch.nn.Identity(),
                     "max-ceil": torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                     "avg": torch.nn.AvgPool2d(3, 2)}[pool]
    x = torch.randn(1, 3, 34, 34)  # 34: ceil_mode's pooled size (18) is not floor's (17)
    with torch.no_grad():
        model(x)
        pooled = model.maxpool(torch.zeros(1, 16, 34, 34))
    st = model.last_stats
    stem = 3 * 16 * 34 * 34 * 9 + (0 if pool == "identity" else 16 * pooled[0, 0].numel() * 9)
    head = 512 + 512 * 10
    assert model.stem_flops((34, 34)) == stem
    assert st.flops.item() == pytest.approx(stem + head + sum(b.flops.item() for b in st.blocks))

# ------------------------------------------------------------------ state-dict layout

LAYOUT_CONFIGS = {
    "spatial, granularity 4-4-2-1": dict(mode="spatial", granularity="4-4-2-1"),
    "layer": dict(mode="layer"),
    "channel, channel_granularity 2, MLP masker with 2 layers": dict(
        mode="channel", channel_granularity=2, channel_masker="MLP", channel_masker_layers=2),
    "channel, channel_granularity 1, MLP masker with 1 layer": dict(
        mode="channel", channel_granularity=1, channel_masker="MLP", channel_masker_layers=1),
    "channel, conv_linear masker, reduction 16": dict(
        mode="channel", channel_masker="conv_linear", channel_masker_reduction=16),
    "both, granularity 4-4-2-1, channel_granularity 2, MLP 1 layer": dict(
        mode="both", granularity="4-4-2-1", channel_granularity=2, channel_masker="MLP",
        channel_masker_layers=1),
}


@functools.cache
def layout() -> dict[str, tuple[int, dict[str, tuple[int, ...]]]]:
    """{section title: (total key count, {listed key: shape})}."""
    sections: dict = {}
    title = None
    for line in LAYOUT_FILE.read_text().splitlines():
        head = re.match(r"## (.+?)\s+\((\d+) keys in all\)", line)
        if head:
            title = head.group(1)
            sections[title] = (int(head.group(2)), {})
        elif line.strip() and not line.startswith("#"):
            name, shape = line.split("\t")
            sections[title][1][name] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return sections


@functools.cache
def built(title: str, depth: int = 50):
    """State dict {key: shape} of laud_resnet50/101 with the section's configuration."""
    torch.manual_seed(0)
    fn = laud_resnet50 if depth == 50 else laud_resnet101
    return fn(**LAYOUT_CONFIGS[title])


def shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def resnet_blocks(depths=(3, 4, 6, 3)):
    """(prefix, Cin, planes, has_downsample) of every ResNet bottleneck."""
    out, cin = [], 64
    for i, n in enumerate(depths):
        p = 64 * 2**i
        for j in range(n):
            out.append((f"layer{i + 1}.{j}.", cin, p, j == 0))
            cin = 4 * p
    return out


def _bn(prefix, c):
    return {f"{prefix}{s}": (c,) for s in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}num_batches_tracked": ()}


def torchvision_keys(depths=(3, 4, 6, 3), num_classes=1000) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a torchvision ResNet-50/101 state dict (built by rule)."""
    keys = {"conv1.weight": (64, 3, 7, 7)} | _bn("bn1.", 64)
    for pre, cin, p, ds in resnet_blocks(depths):
        keys[f"{pre}conv1.weight"] = (p, cin, 1, 1)
        keys |= _bn(f"{pre}bn1.", p)
        keys[f"{pre}conv2.weight"] = (p, p, 3, 3)
        keys |= _bn(f"{pre}bn2.", p)
        keys[f"{pre}conv3.weight"] = (4 * p, p, 1, 1)
        keys |= _bn(f"{pre}bn3.", 4 * p)
        if ds:
            keys[f"{pre}downsample.0.weight"] = (4 * p, cin, 1, 1)
            keys |= _bn(f"{pre}downsample.1.", 4 * p)
    keys |= {"fc.weight": (num_classes, 2048), "fc.bias": (num_classes,)}
    return keys


def masker_keys(cfg: dict, cin: int, p: int) -> dict[str, tuple[int, ...]]:
    """The official masker keys of one block (the rule the layout file illustrates)."""
    mode = cfg["mode"]
    keys = {}
    if mode in ("spatial", "layer", "both"):
        keys |= {"masker_spatial.conv.weight": (2, cin, 1, 1), "masker_spatial.conv.bias": (2,)}
    if mode in ("channel", "both"):
        g = p // cfg.get("channel_granularity", 1)
        red = cfg.get("channel_masker_reduction", 16)
        if cfg.get("channel_masker", "MLP") == "conv_linear":
            r = cin // red
            keys["masker_channel.conv.0.weight"] = (r, cin, 1, 1)
            keys |= _bn("masker_channel.conv.1.", r)
            keys |= {"masker_channel.linear.weight": (2 * g, r),
                     "masker_channel.linear.bias": (2 * g,)}
        elif cfg.get("channel_masker_layers", 2) == 2:
            hidden = max(g // red, 16)
            keys |= {"masker_channel.conv.0.weight": (hidden, cin),
                     "masker_channel.conv.0.bias": (hidden,),
                     "masker_channel.conv.2.weight": (2 * g, hidden),
                     "masker_channel.conv.2.bias": (2 * g,)}
        else:
            keys |= {"masker_channel.conv.weight": (2 * g, cin),
                     "masker_channel.conv.bias": (2 * g,)}
    return keys


def official_keys(cfg: dict, depths=(3, 4, 6, 3)) -> dict[str, tuple[int, ...]]:
    keys = torchvision_keys(depths)
    for pre, cin, p, _ in resnet_blocks(depths):
        keys |= {pre + k: v for k, v in masker_keys(cfg, cin, p).items()}
    return keys


def test_layout_file_sections_are_the_tested_configs():
    assert set(layout()) == set(LAYOUT_CONFIGS)


@pytest.mark.parametrize("title", list(LAYOUT_CONFIGS))
def test_listed_keys_and_shapes(title):
    """Exactly the listed names and shapes for the stem, layer1.0, layer2.1 and the head,
    and the listed total number of keys."""
    total, listed = layout()[title]
    ours = shapes(built(title))
    assert len(ours) == total
    for prefix in ("layer1.0.", "layer2.1."):
        want = {k: v for k, v in listed.items() if k.startswith(prefix)}
        got = {k: v for k, v in ours.items() if k.startswith(prefix)}
        assert got == want, f"{prefix}: {set(got) ^ set(want)}"
    want = {k: v for k, v in listed.items() if not k.startswith("layer")}
    got = {k: v for k, v in ours.items() if not k.startswith("layer")}
    assert got == want
    # the rule used for the other blocks reproduces the listed blocks
    rule = official_keys(LAYOUT_CONFIGS[title])
    assert {k: rule[k] for k in listed} == listed
    assert len(rule) == total


@pytest.mark.parametrize("title", list(LAYOUT_CONFIGS))
def test_all_blocks_follow_the_pattern(title):
    assert shapes(built(title)) == official_keys(LAYOUT_CONFIGS[title])


def test_resnet101_follows_the_pattern():
    title = "both, granularity 4-4-2-1, channel_granularity 2, MLP 1 layer"
    got = shapes(built(title, depth=101))
    want = official_keys(LAYOUT_CONFIGS[title], depths=(3, 4, 23, 3))
    assert len(want) == 33 * 22 + 4 * 6 + 8
    assert got == want


def _random_state(key_shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.tensor(7) if k.endswith("num_batches_tracked")
                else torch.rand(s, generator=g) + 0.5)
            for k, s in key_shapes.items()}


@pytest.mark.parametrize("title", ["spatial, granularity 4-4-2-1",
                                   "channel, conv_linear masker, reduction 16",
                                   "both, granularity 4-4-2-1, channel_granularity 2, MLP 1 layer"])
def test_torchvision_state_dict_loads_non_strict(title):
    """A torchvision ResNet-50 state dict loads with strict=False; only masker keys miss."""
    model = built(title)
    sd = _random_state(torchvision_keys(), seed=1)
    res = model.load_state_dict(sd, strict=False)
    assert res.unexpected_keys == []
    # BatchNorm fills a missing num_batches_tracked itself (old-checkpoint support), so the
    # conv_linear masker's BN counter is not reported missing
    want = {k for k in model.state_dict()
            if ".masker_" in k and not k.endswith("num_batches_tracked")}
    assert set(res.missing_keys) == want
    assert res.missing_keys
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in sd.items())


@pytest.mark.parametrize("title", list(LAYOUT_CONFIGS))
def test_official_state_dict_loads_strict(title):
    """A state dict keyed by the official names (built from the layout rule, values taken
    from one of our models) loads strict into a fresh model and gives back every tensor."""
    src = built(title)
    src_sd = src.state_dict()
    official = {k: src_sd[k].clone() for k in official_keys(LAYOUT_CONFIGS[title])}
    torch.manual_seed(123)
    dst = laud_resnet50(**LAYOUT_CONFIGS[title])
    dst.load_state_dict(official, strict=True)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in official.items())


# ------------------------------------------------------------------- rate calibration


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_calibrate_spatial_rates(rate):
    # maps 24/12/6/3 with S 2-2-1-1: 144/36/36/9 cells x 4 samples >= 36 decisions
    model = tiny(mode="spatial", granularity="2-2-1-1", input_size=96)
    x = torch.randn(4, 3, 96, 96)
    achieved = calibrate_rates(model, x, rate)
    assert not model.training
    with torch.no_grad():
        model(x)
    got = [b.rate3.item() for b in model.last_stats.blocks]
    assert got == pytest.approx(achieved, abs=1e-9)
    assert all(abs(r - rate) <= 0.02 for r in got), got


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_calibrate_all_on_or_off_with_large_logits(rate):
    """Rates 0 and 1 put the threshold past every margin; a fixed 1.0 past it was lost in
    the masker's float32 bias when the logits were near 1e8 (activations of that size),
    and some gates stayed on (off)."""
    torch.manual_seed(1)  # a model where the old rule missed both rates
    model = tiny(mode="spatial", granularity="2-2-1-1", input_size=48)
    x = torch.randn(2, 3, 48, 48) * 1e8
    assert calibrate_rates(model, x, rate) == [rate] * len(model.blocks())


@pytest.mark.parametrize("masker", ["MLP", "conv_linear"])
@pytest.mark.parametrize("rate", [0.25, 0.6])
def test_calibrate_channel_rates(rate, masker):
    model = tiny(mode="channel", channel_masker=masker, channel_masker_reduction=4)
    x = torch.randn(4, 3, 64, 64)
    calibrate_rates(model, x, rate)
    with torch.no_grad():
        model(x)
    got = [b.channel_rate.item() for b in model.last_stats.blocks]
    assert all(abs(r - rate) <= 0.02 for r in got), got


def test_calibrate_lands_exactly_on_the_count_where_margins_are_float32_close():
    """round(rate·N) decisions exactly, also where the k-th and (k+1)-th margins are
    closer than float32's step at the bias (the float64 midpoint was lost when added to
    the float32 bias: 615 of 2048 channels in layer4.0 here, for 614)."""
    torch.manual_seed(0)
    model = laud_resnet50(width_mult=0.25, num_classes=10, input_size=64, mode="channel",
                          channel_masker="conv_linear")
    x = torch.randn(16, 3, 64, 64)
    calibrate_rates(model, x, 0.3)
    with torch.no_grad():
        model(x)
    for name, b in model.blocks():
        n = b.last_masks.channel.numel()
        assert int(b.last_masks.channel.sum()) == round(0.3 * n), name


def test_settle_reaches_the_count_where_the_bias_step_cannot_move_the_logits():
    """The shift that separates two margins one float32 step apart at logits near 1000
    is about that step (6.1e-5), far above the step of a bias near 0: it is found by
    growing the shift, not by stepping the bias. Two margins equal to the last bit
    cannot be split: the bias is left short of the count, with no endless search."""
    from laudtriton.nn.calibrate import _settle

    u = float(torch.nextafter(torch.tensor(1000.0), torch.tensor(2000.0))) - 1000.0
    s = torch.tensor([1000.0 - u, 1000.0, 1000.0 + u])
    bias = torch.zeros(1)

    def margins():
        return (s + bias[0]) - 1000.0

    assert int((margins() >= 0).sum()) == 2
    _settle(margins, bias, 1)
    assert int((margins() >= 0).sum()) == 1
    _settle(margins, bias, 3)
    assert int((margins() >= 0).sum()) == 3
    tie = torch.tensor([1000.0, 1000.0])
    bias.zero_()
    calls = []

    def tied():
        calls.append(1)
        return (tie + bias[0]) - 1000.0

    _settle(tied, bias, 1)
    assert int((tied() >= 0).sum()) == 2 and len(calls) <= 2 * 64 + 2


def test_calibrate_both_rates():
    model = tiny(mode="both", granularity="2-2-1-1", channel_granularity=2, input_size=96)
    x = torch.randn(4, 3, 96, 96)
    got = calibrate_rates(model, x, 0.4, channel_rate=0.7)
    with torch.no_grad():
        model(x)
    st = model.last_stats.blocks
    assert all(abs(b.rate3.item() - 0.4) <= 0.02 for b in st)
    assert all(abs(b.channel_rate.item() - 0.7) <= 0.02 for b in st)
    # what it returns is each block's spatial rate, as its docstring says
    assert got == pytest.approx([b.rate3.item() for b in st])


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.9])
def test_calibrate_layer_gates_within_one_step(rate):
    model = tiny(mode="layer")
    x = torch.randn(5, 3, 64, 64)
    calibrate_rates(model, x, rate)
    with torch.no_grad():
        model(x)
    got = [b.rate3.item() for b in model.last_stats.blocks]
    assert all(abs(r - rate) <= 1 / 5 + 1e-9 for r in got), got
    assert all(abs(r * 5 - round(r * 5)) < 1e-5 for r in got)  # whole samples


@pytest.mark.parametrize("kw", [dict(rate=1.5), dict(rate=-0.1), dict(rate=0.5, channel_rate=2.0)])
def test_calibrate_bad_rate(kw):
    name = "channel_rate" if "channel_rate" in kw else "rate"
    with pytest.raises(ValueError, match=name):
        calibrate_rates(tiny(), torch.randn(1, 3, 64, 64), **kw)


def test_calibrate_refuses_nonfinite_and_empty_input_and_keeps_the_biases():
    """NaN margins set every keep-bias to NaN (the model then skipped everything on any
    input, silently); an empty batch raised max()'s internal error."""
    model = tiny()
    before = {n: p.clone() for n, p in model.named_parameters()}
    bad = torch.randn(2, 3, 64, 64)
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="x holds NaN or inf values"):
        calibrate_rates(model, bad, 0.5)
    with pytest.raises(ValueError, match=r"B, H, W >= 1 .*got \(0, 3, 64, 64\)"):
        calibrate_rates(model, torch.randn(0, 3, 64, 64), 0.5)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_calibrate_warns_where_tied_logits_miss_the_rate():
    """A constant input gives every cell of a masker the same margin: all on or all
    off, whatever the rate asked; the achieved rates said so only by their values."""
    model = tiny()
    with pytest.warns(UserWarning, match=r"could not reach .*layer1\.0 spatial \d+/\d+ of"):
        got = calibrate_rates(model, torch.zeros(2, 3, 64, 64), 0.5)
    assert set(got) <= {0.0, 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # varied input: every count reached, no warning
        calibrate_rates(model, torch.randn(2, 3, 64, 64), 0.5)
    # a layer gate (a spatial masker of a 1x1 grid) is named as one: it read "spatial"
    with pytest.warns(UserWarning, match=r"could not reach .*layer1\.0 layer gate \d+/\d+ "
                                         r"of 2 on"):
        calibrate_rates(tiny(mode="layer"), torch.zeros(2, 3, 64, 64), 0.5)


def test_calibrate_channel_rate_needs_a_channel_masker():
    with pytest.raises(ValueError, match="channel_rate: the model has no channel masker"):
        calibrate_rates(tiny(), torch.randn(1, 3, 64, 64), 0.5, channel_rate=0.25)
    block = make_block(16, 4, mode="spatial", granularity=2)  # one block: was ignored
    before = {n: p.clone() for n, p in block.named_parameters()}
    with pytest.raises(ValueError, match="channel_rate: the block has no channel masker "
                                         r"\(its mode spatial\)"):
        calibrate_block(block, torch.randn(1, 16, 8, 8), 0.5, channel_rate=0.25)
    assert all(torch.equal(before[n], p) for n, p in block.named_parameters())
    x = torch.randn(2, 3, 64, 64)
    got = calibrate_rates(tiny(mode="channel"), x, 0.25, channel_rate=0.25)
    assert all(abs(r - 0.25) < 1e-9 for r in got)  # every channel mask, as documented
    got = calibrate_rates(tiny(mode="channel-spatial-spatial-spatial"), x, 0.75,
                          channel_rate=0.25)  # each rate read by its own maskers
    assert got[0] == 0.25 and got[-1] == 0.75


def test_calibrate_refuses_a_rate_no_masker_reads():
    """With channel maskers only, channel_rate sets every mask: another rate was ignored
    without a word."""
    model = tiny(mode="channel")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"rate 0\.9 would be ignored: the model \(mode "
                                         r"channel-channel-channel-channel\) has channel "
                                         r"maskers only, which channel_rate 0\.25 sets"):
        calibrate_rates(model, torch.randn(2, 3, 64, 64), 0.9, channel_rate=0.25)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match=r"rate 0\.9 would be ignored: the block \(mode "
                                         r"channel\)"):
        calibrate_block(make_block(16, 4, mode="channel"), torch.randn(1, 16, 8, 8), 0.9,
                        channel_rate=0.25)


def test_calibrate_names_the_block_an_input_is_too_small_for():
    with pytest.raises(ValueError, match=r"x of size 16x16 is too small: layer2\.0: "
                                         r"granularity 4"):
        calibrate_rates(tiny(input_size=None), torch.randn(1, 3, 16, 16), 0.5)


def test_calibrate_stopped_part_way_leaves_the_model_as_it_was():
    """x too small for layer2's S: the blocks of layer1 were calibrated already and the
    model switched to eval before the error; their biases and the training flags are put
    back."""
    model = tiny(input_size=None).train()
    model.layer1[0].masker_spatial.eval()  # flags of its own are kept too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    with pytest.raises(ValueError, match=r"too small: layer2\.0"):
        calibrate_rates(model, torch.randn(1, 3, 16, 16), 0.5)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("where", ["weight", "running_var", "overflow"])
def test_calibrate_refuses_nonfinite_logits_and_keeps_the_biases(where):
    """A NaN weight (a diverged checkpoint), a negative BatchNorm variance or activations
    that overflow on a finite x gave the maskers NaN logits: calibration set their biases
    to NaN and warned about tied logits (or reported the rate reached), and the model
    kept skipping everything after the weights were fixed."""
    model = tiny(mode="both")
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        if where == "weight":
            model.layer1[0].conv3.weight[0, 0] = float("nan")
        elif where == "running_var":
            model.layer2[0].bn2.running_var[0] = -1.0
        else:
            x = x * 1e36
    biases = {n: p.clone() for n, p in model.named_parameters() if "masker" in n}
    with pytest.raises(ValueError, match=r"^layer\d\.0: its (spatial|channel) masker's "
                                         r"logits on x are NaN or inf"):
        calibrate_rates(model, x, 0.5)
    named = dict(model.named_parameters())
    assert all(torch.equal(named[n], b) for n, b in biases.items())


def test_calibrate_block_moves_no_bias_before_refusing_nonfinite_logits():
    """Its spatial masker's logits are finite and its channel masker's are not: neither
    bias moves (calibrate_block puts nothing back itself)."""
    from laudtriton.nn import calibrate_block

    block = tiny(mode="both").layer1[0]
    with torch.no_grad():
        block.masker_channel.last_linear().bias[0] = float("inf")
    x = torch.randn(2, block.inplanes, 16, 16)
    biases = [block.masker_spatial.conv.bias.clone(),
              block.masker_channel.last_linear().bias.clone()]
    with pytest.raises(ValueError, match=r"^block: its channel masker's logits"):
        calibrate_block(block, x, 0.5)
    assert torch.equal(block.masker_spatial.conv.bias, biases[0])
    assert torch.equal(block.masker_channel.last_linear().bias, biases[1])


def test_calibrate_refuses_an_empty_map_and_a_meta_model():
    """A side of 0 and a model on the meta device raised torch's internal errors."""
    with pytest.raises(ValueError, match=r"B, H, W >= 1 for this model, got \(1, 3, 0, 64\)"):
        calibrate_rates(tiny(input_size=None), torch.randn(1, 3, 0, 64), 0.5)
    with pytest.raises(ValueError, match="the model's weights are on the meta device"):
        calibrate_rates(tiny().to("meta"), torch.randn(1, 3, 64, 64, device="meta"), 0.5)


def test_a_pruned_model_converted_to_float64_runs_and_calibrates():
    """After torch.nn.utils.prune, conv1.weight is recomputed only by conv1's pre-hook at
    its next forward: converted with .double(), the model read that stale float32
    attribute and refused every float64 input (calibration too)."""
    from torch.nn.utils import prune

    model = tiny(input_size=None)
    prune.l1_unstructured(model.conv1, "weight", 0.3)
    prune.l1_unstructured(model.layer1[0].conv1, "weight", 0.3)
    model.double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    calibrate_rates(model, x, 0.5)
    assert model(x).dtype == torch.float64
    block = model.layer1[0]
    assert block(torch.randn(1, block.inplanes, 8, 8, dtype=torch.float64)).dtype == (
        torch.float64)
    with pytest.raises(ValueError, match="x is torch.float32; the model is torch.float64"):
        model(x.float())


@pytest.mark.parametrize("kw,says", [
    (dict(granularity="-1"), "granularity '-1' is not valid (an empty stage"),
    (dict(granularity="4--2-1"), "granularity '4--2-1' is not valid (an empty stage"),
    (dict(mode="spatial-"), "mode 'spatial-' is not valid (an empty stage"),
    (dict(granularity="2_0"), "granularity '2_0' is not valid; accepted: positive ints"),
    (dict(granularity="\u0662"), "granularity '\u0662' is not valid"),
    (dict(channel_granularity="1_6"), "channel_granularity '1_6' is not valid"),
])
def test_per_stage_strings_are_digits_between_dashes(kw, says):
    """"-1" was reported as having 2 stages; "2_0" was read as 20 and an Arabic-Indic two
    as 2 (the CLI's integer options refuse both)."""
    with pytest.raises(ValueError, match=re.escape(says)):
        LaudResNet((1, 1, 1, 1), width_mult=0.25, input_size=None, **kw)
    assert LaudResNet((1, 1, 1, 1), width_mult=0.25, input_size=None,
                      granularity=" 4 - 4 - 2 - 1 ").config["granularity"] == [4, 4, 2, 1]


def test_per_stage_modes_take_spaces_as_granularity_does():
    """" spatial - channel - layer - both " was refused ("mode ' spatial ' unknown") while
    granularity " 4 - 4 - 2 - 1 " was taken; a mode spelt with a space inside stays
    refused."""
    kw = dict(width_mult=0.25, input_size=None)
    assert LaudResNet((1, 1, 1, 1), mode=" spatial - channel - layer - both ",
                      **kw).config["mode"] == ["spatial", "channel", "layer", "both"]
    assert LaudResNet((1, 1, 1, 1), mode=" layer ", **kw).config["mode"] == ["layer"] * 4
    for bad in ("spat ial", "spatial - chan nel - layer - both"):
        with pytest.raises(ValueError, match="unknown|not valid"):
            LaudResNet((1, 1, 1, 1), mode=bad, **kw)


def test_calibrate_takes_a_one_value_tensor_rate():
    """As set_temperature does; it was refused as outside [0, 1]."""
    x = torch.randn(2, 3, 64, 64)
    a, b = tiny(), tiny()
    b.load_state_dict(a.state_dict())
    assert calibrate_rates(a, x, torch.tensor(0.5)) == calibrate_rates(b, x, 0.5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match=r"^rate must be in \[0, 1\] \(a number\)"):
        calibrate_rates(a, x, torch.tensor([0.5, 0.5]))


def test_model_forward_refuses_an_empty_map_and_leaves_the_device_to_torch():
    """An empty map raised torch's "Calculated padded input size per channel: (6 x 70)
    ...". The device is not compared with conv1.weight's: after pruning, that attribute
    stays where it was computed until conv1's pre-hook recomputes it on the input's
    device (a check against it refused a pruned model moved to another device)."""
    from torch.nn.utils import prune

    model = tiny(input_size=None)
    with pytest.raises(ValueError, match=r"^x has an empty map, 0x64: H and W must be >= 1"):
        model(torch.randn(1, 3, 0, 64))
    with pytest.raises(ValueError, match=r"^x has an empty map, 8x0"):
        model.layer1[0](torch.randn(1, model.layer1[0].inplanes, 8, 0))
    prune.l1_unstructured(model.conv1, "weight", 0.3)
    prune.l1_unstructured(model.layer1[0].conv1, "weight", 0.3)
    model.to("meta")
    assert model(torch.randn(2, 3, 64, 64, device="meta")).shape == (2, 10)


def test_model_forward_refuses_another_dtype_and_takes_an_empty_batch():
    model = tiny(input_size=None).eval()
    for dtype in (torch.uint8, torch.float64):
        with pytest.raises(ValueError, match=f"x is {dtype}; the model is torch.float32"):
            model(torch.zeros(1, 3, 32, 32, dtype=dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts: allowed
        assert model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).shape == (1, 10)
    assert model(torch.randn(0, 3, 32, 32)).shape == (0, 10)  # was an IndexError
    assert model.last_stats is None  # means over no sample: NaN rates, NaN losses
    from laudtriton.nn.losses import SparsityLoss

    with pytest.raises(ValueError, match="stats is None: .*an empty batch"):
        SparsityLoss(0.5, 10)(model.last_stats, 1)


@pytest.mark.parametrize("value", ["a", None, True, float("nan"), 0])
def test_temperatures_must_be_positive_numbers(value):
    from laudtriton.nn.losses import KDLoss

    with pytest.raises(ValueError, match=f"temperature must be a finite number > 0, got "
                                         f"{re.escape(repr(value))}"):
        tiny().set_temperature(value)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        KDLoss(value)


def test_temperatures_may_be_one_value_tensors():
    from laudtriton.nn.losses import KDLoss

    model = tiny()
    model.set_temperature(torch.tensor(0.5))  # an annealing schedule in tensors
    assert {b.temperature for _, b in model.blocks()} == {0.5}
    assert KDLoss(torch.tensor(2.0)).temperature == 2.0
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        model.set_temperature(torch.tensor([0.5, 1.0]))


@pytest.mark.parametrize("teacher,match", [
    (lambda t: t[:1], r"student_logits \(4, 10\) and teacher_logits \(1, 10\) must have"),
    (lambda t: t[:, :1], r"teacher_logits \(4, 1\) must have the same shape"),
    (lambda t: t[0], r"teacher_logits must be a \[B, num_classes\] tensor, got \(10,\)"),
    (lambda t: t.numpy(), r"teacher_logits must be a \[B, num_classes\] tensor, got ndarray"),
    # an empty batch: the batch mean of no sample was NaN, without a word
    (lambda t: t[:0], r"student_logits \(4, 10\) and teacher_logits \(0, 10\) must have"),
])
def test_kd_loss_refuses_logits_of_another_shape(teacher, match):
    """kl_div broadcast a [1, C] or [B, 1] teacher into a wrong loss, without a word."""
    from laudtriton.nn.losses import KDLoss

    s, t = torch.randn(4, 10), torch.randn(4, 10)
    with pytest.raises(ValueError, match=match):
        KDLoss(2.0)(s, teacher(t))
    assert KDLoss(2.0)(s, t).item() >= 0  # the right shapes still compute
    with pytest.raises(ValueError, match="hold no sample .*would be NaN"):
        KDLoss(2.0)(s[:0], t[:0])


def test_masker_helpers_refuse_non_integers():
    from laudtriton.nn.maskers import MapTooSmall, MaskerChannelMLP, mask_grid_size

    with pytest.raises(ValueError, match="granularity must be a positive int, got 2.5"):
        mask_grid_size((8, 8), 2.5)
    with pytest.raises(ValueError, match="groups must be a positive int, got 0"):
        MaskerChannelMLP(64, 0)
    with pytest.raises(ValueError, match="out_hw height must be an int, got 8.5"):
        mask_grid_size((8.5, 8), 2)  # gave the grid (4.0, 4)
    with pytest.raises(MapTooSmall):  # an empty map is too small, as before
        mask_grid_size((0, 8), 2)


@pytest.mark.parametrize("mode", ["spatial", "both"])
def test_a_reference_block_still_traces(mode):
    """While tracing, the map's sides are 0-d tensors: a check that took only ints broke
    torch.jit.trace (and the TorchScript ONNX export) of a reference block."""
    from laudtriton.testing import make_block

    block = make_block(16, 4, 1, mode=mode, granularity=2, channel_granularity=2)
    x = torch.randn(2, 16, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings on Python values
        traced = torch.jit.trace(block, x, check_trace=False)
    with torch.no_grad():
        assert torch.allclose(traced(x), block(x), atol=1e-6)


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer", "both"])
def test_a_whole_reference_model_traces_and_exports(mode):
    """The whole LaudResNet traces (jit.trace) and exports (torch.export): its masks are
    tensor ops, so the trace computes a new input's own masks. Before, jit.trace raised
    in ``stem_flops`` (its shape rules on the tracer's 0-d tensor sizes); ``last_stats``
    is now not recorded while tracing. The network has ResNet-50's kinds of block (a
    first, downsampling one, and a plain one after it) at a quarter width: exporting all
    16 full-width blocks took four times as long."""
    torch.manual_seed(0)
    model = LaudResNet((1, 2, 1, 1), mode=mode, granularity="4-4-2-1",
                       channel_granularity=2, width_mult=0.25).eval()
    x, other = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings on Python values
        traced = torch.jit.trace(model, x, check_trace=False)  # no eager check call
    assert model.last_stats is None  # not made from the tracer's sizes
    exported = torch.export.export(model, (x,)).module()
    with torch.no_grad():
        want = model(other)
        assert model.last_stats is not None  # an eager call records them as before
        for got in (traced(other), exported(other)):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * want.abs().max())


@pytest.mark.parametrize("make, match", [
    (lambda m: m.MaskerSpatial(-1), "in_channels must be a positive int, got -1"),
    # a masker built on its own names its own argument (was channel_masker_layers, the
    # block's name for it)
    (lambda m: m.MaskerChannelMLP(64, 4, layers=1.0), "^layers must be 1 or 2"),
    (lambda m: m.MaskerChannelMLP(64, 4, layers=True), "^layers must be 1 or 2"),
    (lambda m: m.MaskerChannelConvLinear(64, 4, 128), "^reduction 128 leaves no channel of 64"),
    (lambda m: m.MaskerChannelMLP(64, 4, reduction=0), "reduction must be a positive int"),
    (lambda m: m.MaskerChannelConvLinear(64, -3), "groups must be a positive int, got -3"),
    (lambda m: m.MaskerChannelConvLinear(64, True), "groups must be a positive int, got True"),
    (lambda m: m.MaskerChannelConvLinear(64, 4, 0), "reduction must be a positive int"),
])
def test_masker_constructors_name_a_bad_argument(make, match):
    """Before: torch's negative-dimension errors, a ZeroDivisionError, or (True, 1.0) a
    one-group or one-layer masker built silently."""
    from laudtriton.nn import maskers

    with pytest.raises(ValueError, match=match):
        make(maskers)


def test_a_masker_on_its_own_refuses_an_input_of_other_channels():
    """A masker used on its own gave torch's 'mat1 and mat2 shapes cannot be multiplied'
    (or a conv's channel error) for an input of other channels."""
    from laudtriton.nn import maskers

    x = torch.randn(1, 32, 8, 8)
    for who, call in (("MaskerChannelMLP", lambda: maskers.MaskerChannelMLP(64, 4)(x)),
                      ("MaskerChannelConvLinear",
                       lambda: maskers.MaskerChannelConvLinear(64, 4)(x)),
                      ("MaskerSpatial", lambda: maskers.MaskerSpatial(64)(x, (2, 2))),
                      ("MaskerSpatial", lambda: maskers.MaskerSpatial(32)(x[0], (2, 2)))):
        with pytest.raises(ValueError, match=rf"^{who}: expected a 4D input \[B, \d+, H, W\]"):
            call()
    mask, _ = maskers.MaskerChannelMLP(32, 4).eval()(x)  # the right channels: as before
    assert mask.shape == (1, 4)


def test_block_refuses_a_masker_depth_other_than_1_or_2():
    """channel_masker_layers=True built a one-layer MLP (the model refused it)."""
    from laudtriton.nn.block import LaudBottleneck

    for bad in (True, 3, 1.0):
        with pytest.raises(ValueError, match="channel_masker_layers must be 1 or 2"):
            LaudBottleneck(64, 16, dyn_mode="channel", channel_masker_layers=bad)


@pytest.mark.parametrize("channels", [6, 3, True, 0])
def test_expand_channel_mask_refuses_channels_not_a_multiple_of_the_groups(channels):
    """6 channels of 4 groups gave a mask of 4 channels; 3 or True an empty one."""
    from laudtriton.nn.maskers import expand_channel_mask

    with pytest.raises(ValueError, match="expand_channel_mask: .* positive multiple of G"):
        expand_channel_mask(torch.tensor([[1.0, 0.0, 1.0, 0.0]]), channels)
    got = expand_channel_mask(torch.tensor([[1.0, 0.0]]), 4)
    assert got.flatten().tolist() == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("temperature", [0, -1.0, math.nan])
def test_a_training_masker_refuses_a_temperature_not_above_zero(temperature):
    """Temperature 0 gave NaN masks, -1 all-zero ones; eval ignores the temperature."""
    from laudtriton.nn.maskers import MaskerChannelMLP, MaskerSpatial

    x = torch.randn(2, 64, 4, 4)
    for masker, args in ((MaskerSpatial(64), ((2, 2),)), (MaskerChannelMLP(64, 4), ())):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            masker.train()(x, *args, temperature)
        mask, _ = masker.eval()(x, *args, temperature)
        assert bool(((mask == 0) | (mask == 1)).all())


# ---------------------------------------------------------------- model construction


def test_per_stage_modes_and_granularity():
    model = tiny(mode="spatial-spatial-channel-layer", granularity="4-2-1-1",
                 channel_granularity=[1, 1, 2, 1])
    blocks = [b for _, b in model.blocks()]
    assert [b.dyn_mode for b in blocks] == ["spatial", "spatial", "channel", "layer"]
    assert [b.granularity for b in blocks] == [4, 2, 1, 1]
    assert blocks[2].masker_channel.groups == 64 // 2
    model = tiny(mode=["both", "layer", "spatial", "channel"], granularity=2, input_size=128)
    assert [b.dyn_mode for _, b in model.blocks()] == ["both", "layer", "spatial", "channel"]
    assert [b.granularity for _, b in model.blocks()] == [2, 1, 2, 1]


@pytest.mark.parametrize("mode", ["spatial", "channel", "layer", "both"])
def test_model_eval_is_deterministic(mode):
    model = tiny(mode=mode, granularity="2-2-1-1")
    calibrate_rates(model, torch.randn(2, 3, 64, 64), 0.5)
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    with torch.no_grad():
        a = model(x)
    fa = model.last_stats.flops.item()
    torch.manual_seed(2)
    with torch.no_grad():
        b = model(x)
    assert torch.equal(a, b)
    assert model.last_stats.flops.item() == fa


def test_model_accepts_other_input_sizes():
    """Feature sizes come from the input: a 4-4-2-1 model built for 224 runs on 80x96."""
    model = tiny(input_size=224)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 80, 96))
    assert out.shape == (1, 10)
    grids = [b.last_masks.grid.shape[-2:] for _, b in model.blocks()]
    assert grids == [(5, 6), (2, 3), (2, 3), (3, 3)]  # maps 20x24, 10x12, 5x6, 3x3


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="sparse"), r"mode 'sparse' unknown; accepted: spatial, channel"),
    (dict(mode="spatial-channel"), r"mode 'spatial-channel' has 2 stages"),
    (dict(mode="spatial-channel-layer-both-spatial"), r"has 5 stages"),
    (dict(mode="spatial-spatial-sparse-layer"), r"mode 'spatial-spatial-sparse-layer' is not"),
    (dict(granularity="4-4-2"), r"granularity '4-4-2' has 3 stages"),
    (dict(granularity=[4, 4, 2, 1, 1]), r"granularity .* has 5 stages"),
    (dict(granularity=0), r"granularity 0 is not valid"),
    (dict(granularity="4-4-0-1"), r"granularity '4-4-0-1' is not valid"),
    (dict(granularity=-2), r"granularity -2 is not valid"),
    (dict(granularity=float("inf")), r"granularity inf is not valid"),
    (dict(mode="channel", channel_granularity=float("inf")), r"channel_granularity inf is"),
    (dict(granularity="4-4-x-1"), r"granularity '4-4-x-1' is not valid"),
    (dict(granularity="4-4-4-4"), r"layer4.*granularity 4 is larger than its feature map 2x2"),
    (dict(granularity=32), r"layer1.*granularity 32 is larger than its feature map 16x16"),
    (dict(mode="both", granularity=32),
     r"layer1.*granularity 32 is larger than its feature map 16x16"),
    (dict(mode="channel", channel_granularity=3), r"channel_granularity 3 .*width 16$"),
    # a mode without channel masks: the check says it reads no channel granularity
    (dict(mode="spatial", channel_granularity=3), r"channel_granularity 3 .*width 16 "
                                                  r"\(checked in every mode; mode 'spatial' "
                                                  r"has no channel mask .*leave it at 1\)"),
    (dict(mode="channel", channel_granularity="1-1-1"), r"channel_granularity '1-1-1' has 3"),
    (dict(mode="channel", channel_granularity=0), r"channel_granularity 0"),
    (dict(mode="channel", channel_masker="SE"), r"channel_masker 'SE' is not valid; accepted"),
    (dict(mode="channel", channel_masker_layers=3), r"channel_masker_layers 3 is not valid"),
    (dict(mode="channel", channel_masker_layers=1.9), r"channel_masker_layers 1.9 is not val"),
    (dict(granularity=np.bool_(True)), r"granularity np.True_ is not valid"),
    (dict(granularity=torch.tensor(True)), r"granularity tensor\(True\) is not valid"),
])
def test_model_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_model_reads_odd_maps_as_its_convolutions_round_them():
    """A stride-2 stage of an odd map rounds up (25 -> 13 -> 7 for a 200x200 input): S = 7
    fits the last stage's 7x7 map (the check had read it as 6x6 when it rounded down)."""
    model = tiny(input_size=200, granularity="1-1-1-7")
    with torch.no_grad():
        model(torch.randn(1, 3, 200, 200))
    assert model.layer4[0].last_masks.grid.shape[-2:] == (1, 1)


def test_model_refuses_an_input_of_more_channels_than_it_takes():
    model = tiny()
    for c in (1, 4):
        with pytest.raises(ValueError, match=f"expected 3 input channels, got {c}"):
            model(torch.randn(1, c, 64, 64))


@pytest.mark.parametrize("depths", [(0, 1, 1, 1), (1, -1, 1, 1), (1, 1.5, 1, 1), (1, 1, 1),
                                    (True, 1, 1, 1), None, 3])  # None, 3: TypeError on len()
def test_model_bad_depths(depths):
    with pytest.raises(ValueError, match=r"depths .* must be 4 positive ints"):
        LaudResNet(depths, width_mult=0.25)


@pytest.mark.parametrize("kw,name", [
    (dict(stride=0), "stride"), (dict(planes=0), "planes"),
    (dict(channel_masker_reduction=0), "channel_masker_reduction"),
    (dict(channel_masker_reduction=-1), "channel_masker_reduction"),
    (dict(granularity=True), "granularity"), (dict(stride=True), "stride"),
    (dict(granularity=2.0), "granularity"),
])
def test_block_bad_arguments(kw, name):
    from laudtriton.nn.block import LaudBottleneck

    args = dict(inplanes=32, planes=8, dyn_mode="channel") | kw
    with pytest.raises(ValueError, match=rf"{name} must be a positive int, got"):
        LaudBottleneck(**args)


def test_model_takes_a_numpy_float_width_mult():
    """np.float32(0.5) was refused as "must be a number > 0"; np.float64 was taken."""
    model = LaudResNet((1, 1, 1, 1), width_mult=np.float32(0.5), num_classes=10,
                       input_size=64)
    assert model.config["width_mult"] == 0.5 and type(model.config["width_mult"]) is float
    assert model.conv1.out_channels == 32


def test_block_and_model_take_numpy_ints():
    from laudtriton.nn.block import LaudBottleneck

    blk = LaudBottleneck(np.int64(32), np.int64(8), stride=np.int64(1), dyn_mode="spatial",
                         granularity=np.int64(2), channel_granularity=np.int32(2),
                         feature_size=np.int64(8))
    assert (blk.granularity, blk.stride, blk.channel_granularity) == (2, 1, 2)
    assert all(type(v) is int for v in (blk.granularity, blk.stride, blk.inplanes))
    assert blk(torch.randn(1, 32, 8, 8)).shape == (1, 32, 8, 8)
    # the network's input_size reached its blocks' feature_size check, which took only
    # Python ints: "stage 1 (layer1): feature_size np.int64(16) must be a positive int"
    model = LaudResNet(np.array([1, 1, 1, 1]), width_mult=0.25, num_classes=np.int64(10),
                       input_size=np.int64(64), granularity="4-4-2-1")
    assert all(type(model.config[k]) is int for k in ("num_classes", "input_size"))
    assert all(type(d) is int for d in model.config["depths"])
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_calibrate_block_refuses_a_model():
    from laudtriton.nn import calibrate_block

    with pytest.raises(ValueError, match="calibrate_block takes a LaudBottleneck, got "
                                         "LaudResNet .*calibrate_rates"):
        calibrate_block(tiny(), torch.randn(1, 3, 32, 32), 0.5)


def test_calibrate_block_runs_in_eval_and_checks_its_input():
    """A block in training mode is calibrated in eval semantics: its masker's BatchNorm
    keeps its running statistics, the rate is reached in eval, the flag comes back."""
    from laudtriton.nn import calibrate_block
    from laudtriton.nn.block import LaudBottleneck

    torch.manual_seed(0)
    block = LaudBottleneck(32, 8, 1, None, "channel", 1, 1, "conv_linear")
    bn = block.masker_channel.conv[1]
    before = (bn.running_mean.clone(), int(bn.num_batches_tracked))
    x = torch.randn(4, 32, 8, 8) * 3 + 1
    calibrate_block(block, x, 0.5)
    assert block.training
    assert torch.equal(bn.running_mean, before[0]) and int(bn.num_batches_tracked) == before[1]
    block.eval()
    with torch.no_grad():
        block(x)
    assert float(block.last_stats.channel_rate) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"x must be a \[B, 32, H, W\] tensor with "
                                         r"B, H, W >= 1 for this block"):
        calibrate_block(block, torch.randn(32, 8, 8), 0.5)
    with pytest.raises(ValueError, match="rate must be in"):
        calibrate_block(block, x, 2.0)


@pytest.mark.parametrize("arg, value", [("num_classes", 0), ("in_channels", 0),
                                        ("input_size", -1), ("input_size", 2.5),
                                        ("num_classes", True)])
def test_model_bad_sizes_are_named(arg, value):
    """input_size -1 was reported as "granularity 4 is larger than its feature map 0x0";
    0 classes or channels were accepted."""
    with pytest.raises(ValueError, match=rf"^{arg} must be a positive int.*, got {value!r}$"):
        LaudResNet((1, 1, 1, 1), **{arg: value})


@pytest.mark.parametrize("rate", ["0.5", [0.5], None, True, float("nan")])
def test_calibrate_rate_of_another_type_is_named(rate):
    """A string or a list raised TypeError ('<=' not supported ...)."""
    from laudtriton.nn import calibrate_rates

    model = LaudResNet((1, 1, 1, 1), width_mult=0.25, input_size=None).eval()
    with pytest.raises(ValueError, match=r"^rate must be in \[0, 1\] \(a number\), got "):
        calibrate_rates(model, torch.randn(1, 3, 32, 32), rate)


@pytest.mark.parametrize("width_mult", [-1, 0, 0.01, "1", float("inf"), True])
def test_model_bad_width_mult(width_mult):
    with pytest.raises(ValueError, match=f"width_mult must be a number > 0 .*got {width_mult!r}"):
        LaudResNet((1, 1, 1, 1), width_mult=width_mult)


def test_model_bad_arguments_full_size():
    with pytest.raises(ValueError, match=r"granularity '4-4-2' has 3 stages; LAUD-ResNet has 4"):
        laud_resnet50(granularity="4-4-2")
    with pytest.raises(ValueError, match=r"layer4.*granularity 8 is larger .* 7x7"):
        laud_resnet101(granularity="4-4-2-8")


def test_model_bad_input():
    model = tiny(input_size=None)
    with pytest.raises(ValueError, match=r"4D input.*\(3, 64, 64\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"4D input tensor .*, got ndarray"):
        model(np.zeros((1, 3, 64, 64), np.float32))  # was an AttributeError on x.dim
    # 16x16 input: layer2 map 2x2 < S = 4
    too_small = r"input of size 16x16 is too small.*layer2.*granularity 4"
    with pytest.raises(ValueError, match=too_small):
        model(torch.randn(1, 3, 16, 16))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)  # maps 8/4/2/1: just fits
    # another error of a block is its own, not "too small" (here BatchNorm's: training
    # on one value per channel, layer4's 1x1 map at batch 1)
    with pytest.raises(ValueError, match="^Expected more than 1 value per channel"):
        model.train()(torch.randn(1, 3, 32, 32))
