"""LAUD Bottleneck: the reference semantics of one dynamic block (DESIGN.md section 2).

The forward pass is the official LAUDNet ``Bottleneck``: every convolution is computed
dense and multiplied by masks. That is slow on purpose; it is the contract every
compiled variant reproduces.
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .maskers import (
    TRACED,
    MaskerChannelConvLinear,
    MaskerChannelMLP,
    MaskerSpatial,
    check_masker_layers,
    check_positive_ints,
    check_reduction,
    check_weight_size,
    expand_channel_mask,
    expand_mask1,
    is_positive_int,
    mask_grid_size,
    upsample_mask,
)

MODES = ("spatial", "channel", "layer", "both")
CHANNEL_MASKERS = ("MLP", "conv_linear")


@dataclass
class BlockMasks:
    """The masks of one block for one input batch.

    grid:    [B, 1, gh, gw] float 0/1, spatial mask grid (layer gate: gh = gw = 1), or None.
    mask3:   [B, 1, Ho, Wo] float 0/1, the grid upsampled to the output (= mask2), or None.
    mask1:   [B, 1, H, W] bool, receptive field of mask2 at conv1 resolution, or None.
    channel: [B, G] float 0/1, channel-group mask, or None.
    """

    grid: torch.Tensor | None
    mask3: torch.Tensor | None
    mask1: torch.Tensor | None
    channel: torch.Tensor | None


@dataclass
class BlockStats:
    """Statistics of one block's last forward (means over the batch).

    rate1/rate2/rate3: spatial activation rates of mask1, mask2, mask3 (1.0 when the
    block has no spatial mask); rate3 is the grid mean as in the official code.
    channel_rate: fraction of active channel groups. flops: sparse FLOPs per image
    (official accounting, maskers included; a tensor that carries gradients in
    training); dense_flops: the same block computed dense, maskers included;
    masker_flops: the maskers' part.
    """

    rate1: torch.Tensor
    rate2: torch.Tensor
    rate3: torch.Tensor
    channel_rate: torch.Tensor
    flops: torch.Tensor
    dense_flops: float
    masker_flops: float

    @property
    def flops_ratio(self) -> torch.Tensor:
        """flops / dense_flops: the block's sparse FLOPs over its dense FLOPs, maskers
        counted in both (the official per-block ratio)."""
        return self.flops / self.dense_flops


def without_records(state: dict) -> dict:
    """A module's state (``nn.Module.__getstate__``, a copy) with the records of its last
    forward (``last_masks``, ``last_stats``) set to None: copies and pickles of LAUD
    modules leave them out. After a training forward they hold tensors with autograd
    history, which ``copy.deepcopy`` refuses (an EMA copy, a best-model copy)."""
    for key in ("last_masks", "last_stats"):
        if key in state:
            state[key] = None
    return state


def detached_copy(module: nn.Module) -> nn.Module:
    """``copy.deepcopy(module)``, where a tensor held as a plain attribute of one of its
    modules and carrying autograd history is copied detached. Those are the weights a
    forward pre-hook recomputes from parameters on every call (``torch.nn.utils.prune``,
    ``weight_norm``), last computed in grad mode; ``copy.deepcopy`` refuses them. The
    copy's values are the same, and its own hooks recompute them on its next forward."""
    memo: dict = {}
    for m in module.modules():
        for value in vars(m).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(module, memo)


def weight_of(conv: nn.Module) -> torch.Tensor:
    """A registered parameter of ``conv``: its weight, or what a pruning or weight-norm
    hook computes the weight from. Its dtype and device are the module's after ``.to()``,
    where a hooked conv's ``weight`` attribute keeps the old ones until its pre-hook
    recomputes it at the conv's next forward (a pruned model converted to float64 refused
    float64 inputs)."""
    return next(conv.parameters(), conv.weight)


def check_input(x: torch.Tensor, channels: int, dtype: torch.dtype) -> None:
    """Raise ValueError unless x is a 4-D tensor [B, channels, H >= 1, W >= 1] of ``dtype``
    (under autocast, of any floating dtype, except where x or the model is float64,
    which autocast does not cast: torch's conv raised its dtype RuntimeError): what a
    LaudBottleneck and a LaudResNet take.
    The device is left to torch: a module's weight attribute need not be where it runs (a
    pruned conv's weight is recomputed on the input's device by its pre-hook; an offloaded
    model's stays on meta until its own hook loads it)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a 4D input tensor [B, C, H, W], got {got}")
    if x.shape[1] != channels:
        raise ValueError(f"expected {channels} input channels, got {x.shape[1]}")
    if 0 in x.shape[2:]:
        raise ValueError(f"x has an empty map, {x.shape[2]}x{x.shape[3]}: H and W must be "
                         ">= 1")
    if x.dtype != dtype and not (x.is_floating_point()
                                 and torch.float64 not in (x.dtype, dtype)
                                 and torch.is_autocast_enabled(x.device.type)):
        raise ValueError(f"x is {x.dtype}; the model is {dtype} (convert the input, e.g. "
                         f"x.to({dtype}), or the model)")


def check_identity(inplanes: int, out_channels: int, stride: int,
                   downsample: nn.Module | None) -> None:
    """Raise ValueError if ``downsample`` is None while the identity, x itself, cannot be
    added to the output: a stride other than 1, or inplanes != out_channels. Checked when
    a LaudBottleneck is built and at every forward (a downsample set to None afterwards):
    an input of one channel was broadcast over the output's channels in silence, other
    shapes failed with torch's message."""
    if downsample is None and (stride != 1 or inplanes != out_channels):
        raise ValueError(
            f"downsample is None, so the identity is the input itself, which needs stride 1 "
            f"and inplanes = planes * {LaudBottleneck.expansion} = {out_channels}; got "
            f"stride {stride}, inplanes {inplanes} (give a downsample module that maps the "
            "input to the output's shape)")


def check_identity_shape(identity: torch.Tensor, out: torch.Tensor) -> None:
    """Raise ValueError unless the identity path's output (x, or ``downsample(x)``) has the
    shape of the residual branch's, [B, 4·planes, Ho, Wo]: a downsample to one channel,
    or to a 1x1 map, was broadcast over the output in silence (sizes traced by
    ``torch.jit.trace`` or ``torch.export`` are let through)."""
    if identity.dim() != out.dim() or any(
            not isinstance(a, TRACED) and not isinstance(b, TRACED) and a != b
            for a, b in zip(identity.shape, out.shape)):
        raise ValueError(
            f"downsample(x) is {tuple(identity.shape)}; the block's output (the residual it "
            f"is added to) is {tuple(out.shape)}: give a downsample that maps the input to "
            "the output's shape")


class LaudBottleneck(nn.Module):
    """ResNet bottleneck with LAUDNet dynamic computation.

    Args:
        inplanes: input channels Cin.
        planes: bottleneck planes; width w = planes, output channels 4·planes.
        stride: stride of conv2 (and of the downsample).
        downsample: module for the identity path, or None.
        dyn_mode: "spatial" | "channel" | "layer" | "both".
        granularity: patch size S of the spatial mask: a positive int in every mode, read
            by spatial/both only (channel/layer modes keep 1).
        channel_granularity: channels per channel-mask group (must divide w).
        channel_masker: "MLP" | "conv_linear".
        channel_masker_layers: 1 or 2 (MLP only).
        channel_masker_reduction: reduction ratio of the channel masker.
        feature_size: expected output map size (int or (h, w): a tuple, list or 1-d
            int array), checked against S at construction when given; the actual size
            always comes from the input.

    Input [B, Cin, H, W] -> output [B, 4·planes, Ho, Wo], Ho = ⌊(H−1)/s⌋+1.

    Raises:
        ValueError: on an unknown mode or masker, a bad granularity, a channel group
            size that does not divide the width, inplanes or planes so large that a
            weight would pass torch's size limit (``check_weight_size``), a downsample
            that is not a module, or no downsample where the identity (x itself) cannot
            match the output (stride 2, or inplanes other than 4·planes).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dyn_mode: str = "spatial",
        granularity: int = 1,
        channel_granularity: int = 1,
        channel_masker: str = "MLP",
        channel_masker_layers: int = 2,
        channel_masker_reduction: int = 16,
        feature_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dyn_mode not in MODES:
            raise ValueError(f"dyn_mode must be one of {MODES}, got {dyn_mode!r}")
        check_positive_ints(inplanes=inplanes, planes=planes, stride=stride,
                            channel_masker_reduction=channel_masker_reduction,
                            granularity=granularity)
        check_masker_layers(channel_masker_layers)
        inplanes, planes, stride, granularity, channel_masker_reduction = (
            int(v) for v in (inplanes, planes, stride, granularity, channel_masker_reduction))
        check_weight_size("planes", planes, 9 * planes * planes, "conv2's weight")
        check_weight_size("inplanes", inplanes, inplanes * planes, "conv1's weight")
        width = planes
        if not is_positive_int(channel_granularity) or width % channel_granularity:
            unread = ("" if dyn_mode in ("channel", "both") else
                      f" (checked in every mode; mode {dyn_mode!r} has no channel mask and "
                      "does not read it: leave it at 1)")
            raise ValueError(
                f"channel_granularity {channel_granularity!r} must be a positive divisor of "
                f"the block width {width}{unread}"
            )
        if downsample is not None and not isinstance(downsample, nn.Module):
            raise ValueError(f"downsample must be an nn.Module or None, got "
                             f"{type(downsample).__name__}")
        if channel_masker not in CHANNEL_MASKERS:
            raise ValueError(
                f"channel_masker must be one of {CHANNEL_MASKERS}, got {channel_masker!r}"
            )
        if channel_masker == "conv_linear" and dyn_mode in ("channel", "both"):
            check_reduction(inplanes, channel_masker_reduction)  # under the block's name
        if feature_size is not None:
            fs = feature_size  # a numpy array or tensor: its Python ints (a pair, or one)
            fs = fs.tolist() if isinstance(fs, (np.ndarray, torch.Tensor)) else fs
            fs = (fs, fs) if isinstance(fs, numbers.Integral) else fs
            if not (isinstance(fs, (tuple, list)) and len(fs) == 2
                    and all(is_positive_int(v) for v in fs)):
                raise ValueError(f"feature_size {feature_size!r} must be a positive int or "
                                 "an (h, w) pair of them")
            if dyn_mode in ("spatial", "both"):  # raises if S is larger than the map
                mask_grid_size((int(fs[0]), int(fs[1])), granularity)

        check_identity(inplanes, planes * self.expansion, stride, downsample)
        self.inplanes, self.planes, self.width = inplanes, planes, width
        self.out_channels = planes * self.expansion
        self.stride = stride
        self.dyn_mode = dyn_mode
        self.granularity = granularity if dyn_mode in ("spatial", "both") else 1
        self.channel_granularity = int(channel_granularity)
        self.temperature = 1.0

        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, self.out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

        self.masker_spatial = None
        self.masker_channel = None
        if dyn_mode in ("spatial", "layer", "both"):
            self.masker_spatial = MaskerSpatial(inplanes)
        if dyn_mode in ("channel", "both"):
            groups = width // channel_granularity
            if channel_masker == "MLP":
                self.masker_channel = MaskerChannelMLP(
                    inplanes, groups, channel_masker_layers, channel_masker_reduction
                )
            else:
                self.masker_channel = MaskerChannelConvLinear(
                    inplanes, groups, channel_masker_reduction
                )
        self.last_stats: BlockStats | None = None
        self.last_masks: BlockMasks | None = None

    # -- shapes ---------------------------------------------------------------------
    def out_hw(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        """Output map size (⌊(H−1)/s⌋+1, ⌊(W−1)/s⌋+1) for an input of ``in_hw``."""
        return ((in_hw[0] - 1) // self.stride + 1, (in_hw[1] - 1) // self.stride + 1)

    def grid_size(self, in_hw: tuple[int, int]) -> tuple[int, int] | None:
        """Mask grid for an input of ``in_hw``: (1, 1) for the layer gate, None if none."""
        if self.dyn_mode == "layer":
            return (1, 1)
        if self.dyn_mode == "channel":
            return None
        return mask_grid_size(self.out_hw(in_hw), self.granularity)

    # -- masks ----------------------------------------------------------------------
    def compute_masks(self, x: torch.Tensor) -> tuple[BlockMasks, float]:
        """Masks of this block for input x [B, Cin, H, W], and the maskers' FLOPs/image."""
        in_hw = tuple(x.shape[-2:])
        out_hw = self.out_hw(in_hw)
        grid = mask3 = mask1 = channel = None
        flops = 0.0
        if self.masker_channel is not None:
            channel, f = self.masker_channel(x, self.temperature)
            flops += f
        if self.masker_spatial is not None:
            grid, f = self.masker_spatial(x, self.grid_size(in_hw), self.temperature)
            flops += f
            mask3 = upsample_mask(grid, out_hw)
            mask1 = expand_mask1(mask3.detach(), self.stride, in_hw)
        return BlockMasks(grid, mask3, mask1, channel), flops

    # -- forward --------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block on x [B, Cin, H, W] -> [B, 4·planes, Ho, Wo], Ho = ⌊(H−1)/s⌋+1, as
        the official code computes it: dense convolutions, the channel mask applied after
        conv1 and conv2 (before BN), the spatial mask after bn3; records ``last_masks``
        and ``last_stats`` (None after an empty batch, whose rates, means over no
        sample, would be NaN; its masks are empty).

        Raises:
            ValueError: x not a 4D tensor, without Cin channels or of another dtype than
                the block's (any floating dtype under autocast, float64 only for a
                float64 block); a map smaller than S
                (``MapTooSmall``, a ValueError); a downsample whose output is not of the
                block output's shape (``check_identity_shape``).
        """
        check_input(x, self.inplanes, weight_of(self.conv1).dtype)
        check_identity(self.inplanes, self.out_channels, self.stride, self.downsample)
        masks, masker_flops = self.compute_masks(x)
        cmask = (
            expand_channel_mask(masks.channel, self.width) if masks.channel is not None else None
        )

        out = self.conv1(x)
        if cmask is not None:  # official order: mask before BN
            out = out * cmask
        out = self.relu(self.bn1(out))
        out = self.conv2(out)
        if cmask is not None:
            out = out * cmask
        out = self.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        if masks.mask3 is not None:
            out = out * masks.mask3
        identity = x if self.downsample is None else self.downsample(x)
        check_identity_shape(identity, out)
        out = self.relu(out + identity)

        self.last_masks = masks
        # an empty batch: no stats (its rates, means over no sample, were NaN, which a
        # running average over batches then carried), as LaudResNet's last_stats
        empty = x.shape[0] == 0
        self.last_stats = None if empty else self._stats(x, masks, masker_flops)
        return out

    def __getstate__(self):
        return without_records(super().__getstate__())

    def _stats(self, x: torch.Tensor, masks: BlockMasks, masker_flops: float) -> BlockStats:
        h, w = x.shape[-2:]
        ho, wo = self.out_hw((h, w))
        # rates and FLOPs in float32 at least: a conv term of ResNet-50 (~5e7) overflows
        # float16 (max 65504), as under autocast; .to() keeps the straight-through gradient
        dt = torch.promote_types(x.dtype, torch.float32)
        one = torch.ones((), dtype=dt, device=x.device)
        if masks.grid is not None:
            rate3 = masks.grid.to(dt).mean()
            rate2 = masks.mask3.detach().to(dt).mean()
            rate1 = masks.mask1.to(dt).mean()
        else:
            rate1 = rate2 = rate3 = one
        crate = masks.channel.to(dt).mean() if masks.channel is not None else one
        c1 = self.inplanes * self.width * h * w
        c2 = self.width * self.width * 9 * ho * wo
        c3 = self.width * self.out_channels * ho * wo
        ds = self.inplanes * self.out_channels * ho * wo if self.downsample is not None else 0
        flops = (
            masker_flops
            + c1 * crate * rate1
            + c2 * crate**2 * rate2
            + c3 * crate * rate3
            + ds
        )
        dense = masker_flops + c1 + c2 + c3 + ds
        return BlockStats(rate1, rate2, rate3, crate, flops, float(dense), float(masker_flops))

    def extra_repr(self) -> str:
        """The block's settings in its repr: dyn_mode, granularity (S), stride and
        channel_granularity."""
        return (
            f"dyn_mode={self.dyn_mode!r}, granularity={self.granularity}, stride={self.stride}, "
            f"channel_granularity={self.channel_granularity}"
        )
