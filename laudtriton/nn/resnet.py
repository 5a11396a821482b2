"""LAUD-ResNet: ResNet-50/101 built from LaudBottleneck, official LAUDNet key layout."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .block import (
    BlockStats,
    LaudBottleneck,
    check_input,
    weight_of,
    without_records,
)
from .maskers import MapTooSmall, check_weight_size, is_positive_int, positive_real
from .stages import masker_layers, masker_name, parse_modes, parse_positive_int, per_stage

STAGE_PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
DEPTHS = {"laud_resnet50": (3, 4, 6, 3), "laud_resnet101": (3, 4, 23, 3)}


@dataclass
class ModelStats:
    """Statistics of a LAUD model's last forward.

    blocks: one BlockStats per dynamic block, in execution order.
    flops: sparse FLOPs per image of the whole network (maskers included; a tensor).
    dense_flops: FLOPs per image of the same network run dense, without maskers (the
        static ResNet the FLOPs ratio is measured against), counted as the official
        ``op_counter.measure_model`` counts it (``full_flops``): the head's avgpool as
        C·H·W and its linear layers' biases included, where ``flops`` counts them as the
        official forward does (C, no biases).
    """

    blocks: list[BlockStats]
    flops: torch.Tensor
    dense_flops: float

    @property
    def flops_ratio(self) -> torch.Tensor:
        """flops / dense_flops: the network's sparse FLOPs (maskers included) over the
        static network's."""
        return self.flops / self.dense_flops

    @property
    def block_flops_ratios(self) -> torch.Tensor:
        """[num_blocks] per-block sparse/dense FLOPs ratios (the official flops_perc_list)."""
        return torch.stack([torch.as_tensor(b.flops_ratio) for b in self.blocks])


class LaudResNet(nn.Module):
    """ResNet with LAUD bottlenecks. ``forward(x)`` returns logits [B, num_classes];
    ``last_stats`` holds the ModelStats of the last forward (None once compile has
    replaced its blocks: their own ``last_run`` holds their rates; None after an empty
    batch, whose means over no sample would be NaN).

    Args:
        depths: blocks per stage, e.g. (3, 4, 6, 3): 4 positive ints as a list, tuple,
            1-d int array or "3-4-6-3" (not one int for every stage).
        mode, granularity, channel_granularity, channel_masker, channel_masker_layers,
        channel_masker_reduction: as in :func:`laud_resnet50`.
        num_classes: classifier outputs.
        input_size: expected input size, used only to check S against the feature maps
            at construction (None: no check until the first forward).
        in_channels: image channels.
        width_mult: scales every stage width (1.0 = ResNet-50/101): a finite number > 0
            leaving 64·width_mult >= 1 channel, and small enough that no weight passes
            torch's size limit (2**60 values; 1e300 was torch's TypeError).

    Raises:
        ValueError: naming the bad argument, its value and what is accepted (a block's
            refusal also names its stage).
    """

    def __init__(
        self,
        depths: Sequence[int],
        mode: str | Sequence[str] = "spatial",
        granularity: int | str | Sequence[int] = "4-4-2-1",
        channel_granularity: int | str | Sequence[int] = 1,
        channel_masker: str | Sequence[str] = "MLP",
        channel_masker_layers: int | str | Sequence[int] = 2,
        channel_masker_reduction: int | str | Sequence[int] = 16,
        num_classes: int = 1000,
        input_size: int | None = 224,
        in_channels: int = 3,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        modes = parse_modes(mode)
        gran = per_stage(granularity, "granularity", parse_positive_int,
                          "positive ints, '4-4-2-1'")
        cgran = per_stage(
            channel_granularity, "channel_granularity", parse_positive_int, "positive ints"
        )
        maskers = per_stage(channel_masker, "channel_masker", masker_name, "'MLP' or 'conv_linear'")
        layers = per_stage(channel_masker_layers, "channel_masker_layers", masker_layers,
                            "1 or 2")
        reds = per_stage(channel_masker_reduction, "channel_masker_reduction",
                          parse_positive_int, "positive ints")
        try:  # the forms of the other per-stage ints, but no one value for all stages
            depths = tuple(per_stage(depths, "depths", parse_positive_int, "4 positive ints",
                                     broadcast=False))
        except ValueError:  # (a dict was read as its keys, bytes as their values)
            raise ValueError(f"depths {depths!r} must be 4 positive ints (blocks per "
                             "stage): a list, tuple, 1-d int array or 'a-b-c-d'") from None
        if not (isinstance(width_mult, numbers.Real) and not isinstance(width_mult, bool)
                and math.isfinite(width_mult) and width_mult > 0
                and int(64 * width_mult) >= 1):
            raise ValueError(f"width_mult must be a number > 0 that leaves at least one "
                             f"channel (64 x width_mult >= 1), got {width_mult!r}")
        width_mult = float(width_mult)
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels),
                            ("input_size", 1 if input_size is None else input_size)):
            if not is_positive_int(value):
                raise ValueError(f"{name} must be a positive int"
                                 + (" or None" if name == "input_size" else "")
                                 + f", got {value!r}")
        num_classes, in_channels = int(num_classes), int(in_channels)  # numpy ints: Python's
        input_size = None if input_size is None else int(input_size)
        _check_sizes(width_mult, in_channels, num_classes)

        self.config = dict(
            depths=depths, mode=modes, granularity=gran, channel_granularity=cgran,
            channel_masker=maskers, channel_masker_layers=layers,
            channel_masker_reduction=reds, num_classes=num_classes, input_size=input_size,
            in_channels=in_channels, width_mult=width_mult,
        )
        self.inplanes = int(64 * width_mult)
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        size = None  # feature size after the stem (conv stride 2, then maxpool stride 2)
        if input_size is not None:
            size = ((input_size - 1) // 2 + 1 - 1) // 2 + 1
        for i in range(4):
            planes = int(STAGE_PLANES[i] * width_mult)
            stride = STAGE_STRIDES[i]
            if size is not None:
                size = (size - 1) // stride + 1
            stage = self._make_stage(
                planes, depths[i], stride, size, modes[i], gran[i], cgran[i], maskers[i],
                layers[i], reds[i], i,
            )
            setattr(self, f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and "masker" not in name:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        self.last_stats: ModelStats | None = None

    def _make_stage(self, planes, blocks, stride, size, mode, s, cg, masker, layers, red, idx):
        out = planes * LaudBottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        mods = []
        for j in range(blocks):
            try:
                mods.append(
                    LaudBottleneck(
                        self.inplanes, planes, stride if j == 0 else 1,
                        downsample if j == 0 else None, mode, s, cg, masker, layers, red, size,
                    )
                )
            except ValueError as e:
                raise ValueError(f"stage {idx + 1} (layer{idx + 1}): {e}") from None
            self.inplanes = out
        return nn.ModuleList(mods)

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """Every dynamic block with its qualified name, in execution order: each
        LaudBottleneck, or the module ``laudtriton.compile`` put in its place (a module
        with a true ``replaces_laud_block``: the blocks of a network inside a user's
        module, whose forward may call them through this method)."""
        return [(n, m) for n, m in self.named_modules()
                if isinstance(m, LaudBottleneck)  # a class attribute: no Module.__getattr__
                or getattr(type(m), "replaces_laud_block", False)]

    def set_temperature(self, temperature: float) -> None:
        """Gumbel-softmax temperature of every masker (training only): a finite number
        > 0 (a one-value tensor counts). One so small that a masker's (logit + Gumbel
        noise) / temperature overflows the dtype (around 1e-37 in float32) makes torch's
        ``gumbel_softmax``, and so the training masks, NaN.

        Raises:
            ValueError: for another temperature.
        """
        temperature = positive_real("temperature", temperature)
        for _, b in self.blocks():
            b.temperature = temperature

    def __getstate__(self):
        return without_records(super().__getstate__())

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1, bn1, ReLU, maxpool: [B, Cin, H, W] -> [B, 64·width_mult, ⌈H/4⌉, ⌈W/4⌉]
        (with the stock stride-2 conv1 and maxpool: 224 -> 56)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """avgpool, flatten, fc: the last block's output [B, C, h, w] -> logits
        [B, num_classes]."""
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] for x [B, Cin, H, W]; sets ``last_stats`` (None after
        an empty batch, while ``torch.jit.trace`` runs it, or once compiled blocks replace
        the LaudBottlenecks). x must be of
        the model's dtype, except under autocast, where any floating dtype is taken
        (but float64, which autocast does not cast, only by a float64 model).

        Raises:
            ValueError: x not a 4D tensor, without Cin channels, with an empty map or
                of another dtype, or too small for a block's S (naming the input size and
                the block).
        """
        check_input(x, self.conv1.in_channels, weight_of(self.conv1).dtype)
        in_hw = tuple(x.shape[-2:])
        h = self.stem(x)
        blocks = self.blocks()
        for name, block in blocks:
            try:
                h = block(h)
            except MapTooSmall as e:  # other errors are the block's own, unchanged
                raise ValueError(f"input of size {in_hw[0]}x{in_hw[1]} is too small: "
                                 f"{name}: {e}") from None
        logits = self.head(h)
        compiled = any(not isinstance(b, LaudBottleneck) for _, b in blocks)
        # compiled blocks keep no BlockStats (their own last_run holds their rates)
        empty = x.shape[0] == 0  # no sample to average over: NaN rates and FLOPs
        # jit.trace records tensor ops only: the stats would be the traced input's
        # constants, and stem_flops' shape rules cannot run on the tracer's sizes
        skip = compiled or empty or torch.jit.is_tracing()
        self.last_stats = None if skip else self._stats(x, h, blocks)
        return logits

    def stem_flops(self, in_hw: tuple[int, int]) -> int:
        """FLOPs of the stem on an input of ``in_hw``, as the official code counts them:
        conv1's multiply-adds at its output size, plus, when ``maxpool`` is an
        nn.MaxPool2d or nn.AvgPool2d, its window size per output value (nothing for
        another layer, e.g. nn.Identity). Read from the stem's own layers' settings, so a
        replaced conv1 or maxpool is counted as it is configured (the pool's output size
        by the functional form of its class, not by calling it: no hook of it runs)."""
        conv, pool = self.conv1, self.maxpool
        # output sizes from torch's own shape rules, on meta tensors (no data, no compute)
        with torch.no_grad():
            x = torch.empty(1, conv.in_channels, *in_hw, device="meta")
            y = F.conv2d(x, conv.weight.to("meta"), None, conv.stride, conv.padding,
                         conv.dilation, conv.groups)
            flops = conv.weight[0].numel() * conv.out_channels * y.shape[2] * y.shape[3]
            if isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)):
                kh, kw = _pair(pool.kernel_size)
                # the functional form: calling the module would run the user's hooks on it
                if isinstance(pool, nn.MaxPool2d):
                    z = F.max_pool2d(y, pool.kernel_size, pool.stride, pool.padding,
                                     pool.dilation, pool.ceil_mode)
                else:
                    z = F.avg_pool2d(y, pool.kernel_size, pool.stride, pool.padding,
                                     pool.ceil_mode)
                flops += conv.out_channels * z.shape[2] * z.shape[3] * kh * kw
        return int(flops)

    def _stats(self, x: torch.Tensor, feats: torch.Tensor, blocks: list) -> ModelStats:
        """feats: the last block's output (the head's input)."""
        stem = self.stem_flops(tuple(x.shape[-2:]))
        linear = [m for m in self.fc.modules() if isinstance(m, nn.Linear)]
        # as the official forward counts the head: avgpool over the last map's channels,
        # then the classifier's multiply-adds
        head = self.inplanes + sum(m.in_features * m.out_features for m in linear)
        # and as the official op_counter counts the static network's (its full_flops, the
        # sparsity loss's denominator): AdaptiveAvgPool2d C·H·W, Linear weights + biases
        pool = (feats.shape[1:].numel() if isinstance(self.avgpool, nn.AdaptiveAvgPool2d)
                else self.inplanes)
        dense_head = pool + sum(m.weight.numel() + (0 if m.bias is None else m.bias.numel())
                                for m in linear)
        stats = [b.last_stats for _, b in blocks]
        flops = stem + head + sum(s.flops for s in stats)
        dense = stem + dense_head + sum(s.dense_flops - s.masker_flops for s in stats)
        return ModelStats(stats, flops, float(dense))


def _check_sizes(width_mult: float, in_channels: int, num_classes: int) -> None:
    """Raise a ValueError naming width_mult, num_classes or in_channels where a weight of
    the network they shape would hold more values than torch can (``check_weight_size``):
    width_mult=1e300 raised torch's TypeError from nn.Conv2d, 1e12 its RuntimeError.
    The widest weights: a stage's 3x3 conv2 (9·planes²) and its first block's conv1 or
    downsample (inplanes · 4·planes), the stem's conv and the classifier."""
    inplanes = int(64 * width_mult)
    for i, base in enumerate(STAGE_PLANES):
        planes = int(base * width_mult)
        check_weight_size("width_mult", width_mult, max(9 * planes, inplanes * 4) * planes,
                          f"stage {i + 1}'s widest weight ({planes} planes)")
        inplanes = 4 * planes
    check_weight_size("num_classes", num_classes, inplanes * num_classes,
                      f"the classifier fc ({inplanes} features)")
    check_weight_size("in_channels", in_channels, int(64 * width_mult) * in_channels * 49,
                      "the stem's conv1")


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _build(arch: str, **kwargs) -> LaudResNet:
    if "depths" in kwargs:  # (Python's message said "multiple values for argument")
        raise TypeError(f"{arch}() got an unexpected keyword argument 'depths': its "
                        f"depths are {DEPTHS[arch]}; for others use LaudResNet(depths, ...)")
    return LaudResNet(DEPTHS[arch], **kwargs)


def laud_resnet50(
    mode: str | Sequence[str] = "spatial",
    granularity: int | str | Sequence[int] = "4-4-2-1",
    channel_granularity: int | str | Sequence[int] = 1,
    channel_masker: str | Sequence[str] = "MLP",
    channel_masker_layers: int | str | Sequence[int] = 2,
    channel_masker_reduction: int | str | Sequence[int] = 16,
    num_classes: int = 1000,
    **kwargs: Any,
) -> LaudResNet:
    """LAUD-ResNet-50.

    Each per-stage argument (mode to channel_masker_reduction) is one value for every
    stage, "a-b-c-d", or 4 values as a list, tuple, range or 1-d numpy array (or tensor);
    its ints are Python or numpy ints > 0 or digit strings ("2"), never bools or floats
    (2.0 included).

    Args:
        mode: "spatial" | "channel" | "layer" | "both", or per stage
            ("spatial-spatial-channel-layer" or a list of 4).
        granularity: patch size S per stage ("4-4-2-1", an int, or a list of 4).
        channel_granularity: channels per channel-mask group (int or per stage).
        channel_masker: "MLP" or "conv_linear" (per stage allowed).
        channel_masker_layers: 1 or 2 (MLP masker).
        channel_masker_reduction: reduction ratio of the channel masker.
        num_classes: classifier outputs.
        **kwargs: input_size (default 224, checks S at construction), in_channels,
            width_mult.

    Raises:
        ValueError: naming the bad argument, its value and what is accepted.
        TypeError: for an unknown keyword, ``depths`` included (fixed at (3, 4, 6, 3)).
    """
    return _build("laud_resnet50", mode=mode, granularity=granularity,
                  channel_granularity=channel_granularity, channel_masker=channel_masker,
                  channel_masker_layers=channel_masker_layers,
                  channel_masker_reduction=channel_masker_reduction,
                  num_classes=num_classes, **kwargs)


def laud_resnet101(
    mode: str | Sequence[str] = "spatial",
    granularity: int | str | Sequence[int] = "4-4-2-1",
    channel_granularity: int | str | Sequence[int] = 1,
    channel_masker: str | Sequence[str] = "MLP",
    channel_masker_layers: int | str | Sequence[int] = 2,
    channel_masker_reduction: int | str | Sequence[int] = 16,
    num_classes: int = 1000,
    **kwargs: Any,
) -> LaudResNet:
    """LAUD-ResNet-101 (depths (3, 4, 23, 3)); arguments and errors as
    :func:`laud_resnet50`."""
    return _build("laud_resnet101", mode=mode, granularity=granularity,
                  channel_granularity=channel_granularity, channel_masker=channel_masker,
                  channel_masker_layers=channel_masker_layers,
                  channel_masker_reduction=channel_masker_reduction,
                  num_classes=num_classes, **kwargs)
