"""Maskers and mask expansion of LAUDNet (DESIGN.md section 2).

Parameter names follow the official LAUDNet code (``masker_spatial.conv``,
``masker_channel.conv.0`` ...) so official checkpoints load with ``strict=True``.
Every masker returns ``(mask, flops)``: a float mask (hard 0/1 values; in training
a straight-through Gumbel sample that carries gradients) and the masker's FLOPs per
image with the official accounting.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _hard_decision(logits: torch.Tensor, training: bool, temperature: float) -> torch.Tensor:
    """[B, 2, ...] logits -> [B, ...] hard mask; Gumbel straight-through in training, at
    ``temperature`` (a finite number > 0: 0 gave NaN masks, a negative one all zeros),
    with the noise drawn in float32 for float16 and bfloat16 logits.

    Raises:
        ValueError: in training, for another temperature.
    """
    if training:
        temperature = positive_real("temperature", temperature)
        if logits.dtype in (torch.float16, torch.bfloat16):  # (autocast) the noise in
            # float32: float16's exponential_ on CPU draws an exact 0 about 3 times in
            # 1e8, whose softmax is NaN, and a NaN mask spoils BN's running statistics
            return F.gumbel_softmax(logits.float(), dim=1, tau=temperature,
                                    hard=True)[:, 0].to(logits.dtype)
        return F.gumbel_softmax(logits, dim=1, tau=temperature, hard=True)[:, 0]
    return (logits[:, 0] >= logits[:, 1]).to(logits.dtype)


class MapTooSmall(ValueError):
    """A feature map smaller than the block's granularity S (``mask_grid_size``)."""


def finite_real(name: str, value: float | torch.Tensor, positive: bool = False) -> float:
    """``value`` as a float if it is a finite real number (> 0 with ``positive``; not a
    bool; a one-value real tensor counts, e.g. an annealing schedule's, and a 0-d numpy
    array); else a ValueError naming ``name``."""
    if (isinstance(value, torch.Tensor) and value.numel() == 1
            and not value.is_complex() and value.dtype != torch.bool):
        value = value.item()
    elif isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value.item()
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not (_isfinite(value) and (value > 0 or not positive))):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got "
                         f"{value!r}")
    return float(value)


def _isfinite(value: numbers.Real) -> bool:
    """math.isfinite, False for an int too large for a float (10**400 raised
    OverflowError where a ValueError naming the argument was due)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_flag(value: object, name: str) -> None:
    """Raise a ValueError naming ``name`` unless value is True or False (a numpy bool, or
    a one-value bool tensor, too): a switch (``check_masks``, ``enabled``, ...) would
    otherwise take any truthy value, the string "no" included, as True."""
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool and value.numel() == 1:
        return
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def positive_real(name: str, value: float | torch.Tensor) -> float:
    """``finite_real`` > 0."""
    return finite_real(name, value, positive=True)


def is_positive_int(value: object) -> bool:
    """Whether value is an int >= 1 (Python or numpy; not a bool, which numpy's is not
    an Integral either)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def check_positive_ints(**values: object) -> None:
    """Raise a ValueError naming the first of ``values`` (name=value) that is not an int
    >= 1 (``is_positive_int``)."""
    for name, value in values.items():
        if not is_positive_int(value):
            raise ValueError(f"{name} must be a positive int, got {value!r}")


# the most values one weight tensor of a LAUD layer may hold: 2**60, a float64 tensor of
# 2**63 bytes, past which torch refuses it (a size over int64: its TypeError "Overflow
# when unpacking long long"; bytes over int64: "Storage size calculation overflowed")
MAX_WEIGHT_VALUES = 2**60


def check_weight_size(name: str, value: object, values: int, what: str) -> None:
    """Raise a ValueError naming ``name`` (the argument, of ``value``) if a weight it
    shapes, ``what``, holds more than ``MAX_WEIGHT_VALUES`` values (``values``): torch
    raised its TypeError or RuntimeError from deep inside the layer's constructor."""
    if values > MAX_WEIGHT_VALUES:
        raise ValueError(f"{name} {value!r} is too large: {what} would hold about "
                         f"10**{math.floor(math.log10(values))} values, more than torch "
                         "can hold in one tensor (2**60)")


def check_masker_layers(layers: object, name: str = "channel_masker_layers") -> None:
    """Raise a ValueError naming ``name`` unless ``layers`` (the channel MLP masker's
    depth) is the int 1 or 2 (not True, not 1.0)."""
    if isinstance(layers, bool) or not isinstance(layers, numbers.Integral) or (
            layers not in (1, 2)):
        raise ValueError(f"{name} must be 1 or 2, got {layers!r}")


def check_reduction(in_channels: int, reduction: int,
                    name: str = "channel_masker_reduction") -> None:
    """Raise a ValueError naming ``name`` if the conv-linear channel masker's
    ``in_channels // reduction`` leaves no channel."""
    if in_channels // reduction < 1:
        raise ValueError(f"{name} {reduction} leaves no channel of {in_channels}")


def mask_grid_size(out_hw: tuple[int, int], granularity: int) -> tuple[int, int]:
    """Mask grid (⌊Ho/S⌋, ⌊Wo/S⌋) for an output map of ``out_hw`` and patch size S.

    out_hw: a pair (tuple, list, torch.Size, or a 1-d integer array or tensor of two)
    of ints; sides traced while tracing are let through. Returns Python ints for int
    sides.

    Raises:
        ValueError: if S is not positive or larger than the map (``MapTooSmall``, also
            for a side 0), a side of the map is a float or a bool ((8.5, 8) gave a grid
            of (4.0, 4)), or out_hw is not a pair of ints (an int, strings or a triple
            raised Python's TypeError or unpacking error).
    """
    if not (type(out_hw) is tuple and len(out_hw) == 2  # (the common case: ~3 us less
            and type(out_hw[0]) is int and type(out_hw[1]) is int):  # in a model's blocks)
        out_hw = _pair_of_sides(out_hw)
    ho, wo = out_hw
    if not is_positive_int(granularity):
        raise ValueError(f"granularity must be a positive int, got {granularity!r}")
    if granularity > ho or granularity > wo:
        raise MapTooSmall(
            f"granularity {granularity} is larger than its feature map {ho}x{wo}; "
            "use a smaller S or a larger input"
        )
    return ho // granularity, wo // granularity


def _pair_of_sides(out_hw: object) -> tuple:
    """``mask_grid_size``'s out_hw as a pair of Python ints (sides traced while tracing
    let through).

    Raises:
        ValueError: as ``mask_grid_size`` says of out_hw.
    """
    if isinstance(out_hw, (np.ndarray, torch.Tensor)) and out_hw.ndim == 1 and (
            out_hw.dtype.kind in "iu" if isinstance(out_hw, np.ndarray)
            else _integer_tensor(out_hw)):
        out_hw = tuple(out_hw.tolist())
    if not isinstance(out_hw, (tuple, list, torch.Size)) or len(out_hw) != 2:
        raise ValueError(f"mask_grid_size: out_hw must be a pair of ints >= 1 (height, "
                         f"width), got {out_hw!r}")
    ho, wo = out_hw
    for side, v in (("height", ho), ("width", wo)):  # (tensors while tracing: let through)
        if isinstance(v, (float, bool, np.bool_, np.floating)):
            raise ValueError(f"out_hw {side} must be an int, got {v!r}")
        if not isinstance(v, (numbers.Integral, *TRACED)):
            raise ValueError(f"mask_grid_size: out_hw must be a pair of ints >= 1 (height, "
                             f"width), got {out_hw!r}")
    ho, wo = (v if isinstance(v, TRACED) else int(v) for v in (ho, wo))
    return ho, wo


def _check_input(who: str, x: torch.Tensor, channels: int) -> None:
    """Raise a ValueError naming ``who`` unless x is [B, channels, H, W] with H, W >= 1
    (a masker used on its own gave torch's matmul or conv error; on an empty map the MLP
    channel masker's mean over no pixel gave a NaN mask)."""
    if x.dim() != 4 or x.shape[1] != channels or 0 in x.shape[2:]:
        raise ValueError(f"{who}: expected a 4D input [B, {channels}, H, W] with H, W >= 1, "
                         f"got {tuple(x.shape)}")


class MaskerSpatial(nn.Module):
    """Spatial masker: pool to the mask grid, 1x1 conv with bias to 2 logits, compare.

    Input x: [B, Cin, H, W]. Output mask: [B, 1, gh, gw] (float 0/1).
    ``grid=(1, 1)`` makes it the layer gate (one decision per sample).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        check_positive_ints(in_channels=in_channels)
        check_weight_size("in_channels", in_channels, 2 * in_channels, "the conv's weight")
        self.conv = nn.Conv2d(in_channels, 2, kernel_size=1, bias=True)
        # Official initialisation: the "keep" logit starts at +5, so training starts dense.
        with torch.no_grad():
            self.conv.bias[0] = 5.0

    def logits(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[B, Cin, H, W] -> [B, 2, gh, gw].

        Raises:
            ValueError: unless grid is a pair of ints >= 1 (a side 0 or a float gave
                torch's pooling or conv error), or if it is larger than x's map (pooling
                would upsample).
        """
        _check_input("MaskerSpatial", x, self.conv.in_channels)
        grid = check_map_size("MaskerSpatial", "grid", grid)
        if _smaller(tuple(x.shape[-2:]), tuple(grid)):
            raise ValueError(f"MaskerSpatial: grid {tuple(grid)} is larger than the input's "
                             f"map {tuple(x.shape[-2:])}; a mask cell pools S x S pixels")
        pooled = x if tuple(x.shape[-2:]) == tuple(grid) else F.adaptive_avg_pool2d(x, grid)
        return self.conv(pooled)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], temperature: float = 1.0
                ) -> tuple[torch.Tensor, int]:
        """(mask, flops) for x [B, Cin, H, W]: the hard 0/1 mask [B, 1, gh, gw] of
        ``grid`` = (gh, gw) (float; in training a straight-through Gumbel-softmax sample at
        ``temperature``, which eval ignores), and the masker's FLOPs per image with the
        official accounting, 4·Cin·gh·gw. ``grid`` (1, 1): the layer gate."""
        logits = self.logits(x, grid)
        mask = _hard_decision(logits, self.training, temperature).unsqueeze(1)
        cin = self.conv.weight.shape[1]
        pooled_hw = logits.shape[2] * logits.shape[3]  # the grid's cells
        flops = cin * pooled_hw + (2 * cin + cin) * pooled_hw  # official accounting
        return mask, flops


class MaskerChannelMLP(nn.Module):
    """Channel masker: global average pool, MLP (1 or 2 layers) to 2G logits, compare.

    Input x: [B, Cin, H, W]. Output mask: [B, G] (float 0/1).
    """

    def __init__(self, in_channels: int, groups: int, layers: int = 2,
                 reduction: int = 16) -> None:
        super().__init__()
        check_masker_layers(layers, "layers")  # a block checks its own name first
        check_positive_ints(in_channels=in_channels, groups=groups, reduction=reduction)
        self.groups = groups
        hidden = max(groups // reduction, 16)
        check_weight_size("groups", groups, 2 * groups * hidden, "the MLP's last weight")
        check_weight_size("in_channels", in_channels, in_channels * hidden, "the MLP's weight")
        if layers == 2:
            self.conv = nn.Sequential(
                nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, 2 * groups)
            )
            last = self.conv[-1]
            self.mlp_flops = in_channels * hidden + hidden * 2 * groups
        else:
            self.conv = nn.Linear(in_channels, 2 * groups)
            last = self.conv
            self.mlp_flops = in_channels * 2 * groups
        with torch.no_grad():  # official initialisation: start with every group on
            last.bias[:groups] = 2.0
            last.bias[groups + 1 :] = -2.0

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[B, Cin, H, W] -> [B, 2, G]."""
        _check_input("MaskerChannelMLP", x, self.linears()[0].in_features)
        b = x.shape[0]
        return self.conv(x.mean(dim=(2, 3))).view(b, 2, self.groups)

    def last_linear(self) -> nn.Linear:
        """The MLP's last linear layer, which gives the 2G logits (outputs [:G] the
        "keep" logits, [G:] the "drop" ones), e.g. to set its bias."""
        return self.conv[-1] if isinstance(self.conv, nn.Sequential) else self.conv

    def linears(self) -> list[nn.Linear]:
        """The linear layers of the MLP in order (a ReLU between consecutive ones)."""
        return [m for m in self.conv if isinstance(m, nn.Linear)] if isinstance(
            self.conv, nn.Sequential) else [self.conv]

    def forward(self, x: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, int]:
        """(mask, flops) for x [B, Cin, H, W]: the hard 0/1 channel-group mask [B, G]
        (float; in training a straight-through Gumbel-softmax sample at ``temperature``,
        which eval ignores), and the masker's FLOPs per image with the official
        accounting: Cin·H·W for the pooling plus the MLP's (``mlp_flops``)."""
        mask = _hard_decision(self.logits(x), self.training, temperature)
        c, h, w = x.shape[1:]
        return mask, c * h * w + self.mlp_flops


class MaskerChannelConvLinear(nn.Module):
    """Channel masker: 1x1 conv + BN + ReLU (Cin -> Cin/reduction), pool, linear to 2G.

    Input x: [B, Cin, H, W]. Output mask: [B, G] (float 0/1).
    """

    def __init__(self, in_channels: int, groups: int, reduction: int = 16) -> None:
        super().__init__()
        check_positive_ints(in_channels=in_channels, groups=groups, reduction=reduction)
        check_reduction(in_channels, reduction, "reduction")  # a block checks its own first
        red = in_channels // reduction
        check_weight_size("in_channels", in_channels, in_channels * red, "the 1x1 conv's weight")
        check_weight_size("groups", groups, 2 * groups * red, "the linear's weight")
        self.groups = groups
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, red, kernel_size=1, bias=False), nn.BatchNorm2d(red), nn.ReLU()
        )
        self.linear = nn.Linear(red, 2 * groups)
        with torch.no_grad():
            self.linear.bias[:groups] = 2.0
            self.linear.bias[groups + 1 :] = -2.0
        self.masker_flops = in_channels * in_channels // reduction + red * 2 * groups

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[B, Cin, H, W] -> [B, 2, G]."""
        _check_input("MaskerChannelConvLinear", x, self.conv[0].in_channels)
        b = x.shape[0]
        return self.linear(self.conv(x).mean(dim=(2, 3))).view(b, 2, self.groups)

    def last_linear(self) -> nn.Linear:
        """The linear layer that gives the 2G logits (``linear``; outputs [:G] the "keep"
        logits, [G:] the "drop" ones), as ``MaskerChannelMLP.last_linear``."""
        return self.linear

    def forward(self, x: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, int]:
        """(mask, flops) for x [B, Cin, H, W]: the hard 0/1 channel-group mask [B, G]
        (float; in training a straight-through Gumbel-softmax sample at ``temperature``,
        which eval ignores), and the masker's FLOPs per image with the official
        accounting: (Cin/reduction)·H·W for the pooling plus ``masker_flops`` (the 1x1
        conv counted once, not per pixel, as the official code does, and the linear)."""
        mask = _hard_decision(self.logits(x), self.training, temperature)
        red = self.linear.in_features
        h, w = x.shape[2:]
        return mask, red * h * w + self.masker_flops


def check_mask_shape(who: str, name: str, mask: object) -> None:
    """Raise a ValueError naming ``who`` and ``name`` unless mask is a [B, 1, h, w]
    tensor."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[1] != 1:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{who}: {name} must be a [B, 1, h, w] tensor, got {got}")


TRACED = (torch.Tensor, torch.SymInt)  # a map side while tracing (jit.trace; export)


def _integer_tensor(t: torch.Tensor) -> bool:
    """Whether t's dtype is an integer one (not floating, complex or bool)."""
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def check_map_size(who: str, name: str, hw: object) -> tuple:
    """hw as a tuple if it is a pair of ints >= 1 (a tuple, list or torch.Size; a 1-D
    integer numpy array or tensor of two; numpy ints taken; tensors and SymInts let
    through, as while tracing or exporting a map's sides are); else a ValueError naming
    ``who`` and ``name``."""
    pair = None
    if isinstance(hw, (tuple, list, torch.Size)):
        pair = tuple(hw)
    elif isinstance(hw, (np.ndarray, torch.Tensor)) and hw.ndim == 1 and (
            hw.dtype.kind in "iu" if isinstance(hw, np.ndarray) else _integer_tensor(hw)):
        pair = tuple(int(v) for v in hw.tolist())
    if pair is None or len(pair) != 2 or not all(
            isinstance(v, TRACED) or is_positive_int(v) for v in pair):
        raise ValueError(f"{who}: {name} must be a pair of ints >= 1 (height, width), got "
                         f"{hw!r}")
    return tuple(v if isinstance(v, TRACED) else int(v) for v in pair)


def _smaller(hw, grid) -> bool:
    """Whether a side of the map hw is smaller than the grid's (sides traced while
    tracing are let through)."""
    return any(not isinstance(v, TRACED) and not isinstance(g, TRACED) and v < g
               for v, g in zip(hw, grid))


def upsample_mask(grid_mask: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling of the mask grid: [B, 1, gh, gw] -> [B, 1, Ho, Wo] (mask2 = mask3),
    of grid_mask's dtype (float, or bool or integer 0/1).

    Output pixel i belongs to cell min(⌊i·(gh/Ho)⌋, gh−1) with the scale gh/Ho in
    float32 (PyTorch's ``nearest`` rule): ⌊i·gh/Ho⌋, except at a few sizes where the
    rounded scale puts a pixel one cell lower (Ho = 74, gh = 24: pixel 37 is in cell
    11, not 12).

    Raises:
        ValueError: unless grid_mask is a [B, 1, gh, gw] tensor and out_hw a pair of
            ints >= 1 (a mask of 3 channels was upsampled, a side 0 gave torch's error),
            or if a side of out_hw is smaller than the grid's (the mask was down-sampled,
            its cells dropped).
    """
    check_mask_shape("upsample_mask", "grid_mask", grid_mask)
    out_hw = check_map_size("upsample_mask", "out_hw", out_hw)
    grid = tuple(grid_mask.shape[-2:])
    if _smaller(out_hw, grid):  # "nearest" would drop cells: a down-sample, not mask3
        raise ValueError(f"upsample_mask: out_hw {tuple(out_hw)} is smaller than the mask "
                         f"grid {grid[0]}x{grid[1]}; the grid is (Ho // S, Wo // S) of the map")
    if not grid_mask.is_floating_point():  # bool and integer masks: torch's nearest
        # kernels take floating types only; 0/1 values come back exactly
        return F.interpolate(grid_mask.double(), size=out_hw,
                             mode="nearest").to(grid_mask.dtype)
    return F.interpolate(grid_mask, size=out_hw, mode="nearest")


def expand_mask1(mask2: torch.Tensor, stride: int, in_hw: tuple[int, int]) -> torch.Tensor:
    """Receptive field of the active conv2 outputs at conv1 resolution.

    mask2: [B, 1, Ho, Wo] (0/1; float, bool or integer). Returns a bool [B, 1, H, W]: every
    input pixel within Chebyshev distance 1 of (i·s, j·s) for an active output (i, j),
    clipped to the image.

    Raises:
        ValueError: unless mask2 is a [B, 1, Ho, Wo] tensor, stride an int >= 1 and in_hw
            a pair of ints >= 1 whose output map at that stride, (⌊(H−1)/s⌋+1,
            ⌊(W−1)/s⌋+1), is (Ho, Wo): another in_hw gave a mask of the wrong pixels.
    """
    check_mask_shape("expand_mask1", "mask2", mask2)
    if isinstance(stride, torch.Tensor) and stride.dim() == 0 and _integer_tensor(stride):
        stride = int(stride)  # (a 0-d integer tensor, as before these checks)
    if not is_positive_int(stride):
        raise ValueError(f"expand_mask1: stride must be an int >= 1, got {stride!r}")
    b, _, ho, wo = mask2.shape
    h, w = check_map_size("expand_mask1", "in_hw", in_hw)
    stride = int(stride)
    if all(isinstance(v, int) for v in (h, w, ho, wo)) and (
            ((h - 1) // stride + 1, (w - 1) // stride + 1) != (ho, wo)):
        raise ValueError(f"expand_mask1: mask2 is {ho}x{wo}, but a 3x3 convolution at "
                         f"stride {stride} on in_hw {h}x{w} gives "
                         f"{(h - 1) // stride + 1}x{(w - 1) // stride + 1}")
    # (float: torch's max pooling refuses bool masks, e.g. a BlockMasks' mask1 as mask2)
    dtype = mask2.dtype if mask2.is_floating_point() else torch.float32
    placed = mask2.new_zeros(b, 1, max(h, ho * stride), max(w, wo * stride), dtype=dtype)
    placed[:, :, : ho * stride : stride, : wo * stride : stride] = (mask2 > 0.5).to(dtype)
    dil = F.max_pool2d(placed, kernel_size=3, stride=1, padding=1)
    return dil[:, :, :h, :w] > 0.5


def expand_channel_mask(mask: torch.Tensor, channels: int) -> torch.Tensor:
    """[B, G] group mask -> [B, C, 1, 1]; group i covers channels [i·k, (i+1)·k), k = C/G.

    Raises:
        ValueError: unless mask is a [B, G] tensor with G >= 1 and channels a multiple of
            G (another C gave a mask of G·⌊C/G⌋ channels).
    """
    if not isinstance(mask, torch.Tensor):  # (a numpy mask raised AttributeError)
        raise ValueError(f"expand_channel_mask: a [B, G] mask tensor (G >= 1) and channels "
                         f"a positive multiple of G, got a mask {type(mask).__name__}")
    if mask.dim() != 2 or mask.shape[1] < 1 or not is_positive_int(channels) or (
            channels % mask.shape[1]):
        raise ValueError(f"expand_channel_mask: a [B, G] mask (G >= 1) and channels a "
                         f"positive multiple of G, got a mask {tuple(mask.shape)} and "
                         f"channels {channels!r}")
    k = channels // mask.shape[1]
    return mask.repeat_interleave(k, dim=1)[:, :, None, None]
