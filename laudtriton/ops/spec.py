"""BlockSpec: the one description of "a dynamic block of this shape" (DESIGN.md section 1).

The cache keys on it, the predictor takes it, the scheduler plans per it, the CLI prints it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import torch

from ..nn.block import MODES, LaudBottleneck

DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class BlockSpec:
    """Shape and dynamic configuration of one LAUD bottleneck at one input size.

    in_channels: Cin; width: w (conv1/conv2 channels); out_channels: 4·planes.
    stride: of conv2 and the downsample; downsample: whether the identity is a 1x1 conv.
    in_hw: (H, W) of the block input. mode: spatial | channel | layer | both.
    granularity: patch size S (1 where there is no spatial mask; layer gate: 1).
    channel_groups: G channel-mask groups (0 where there is no channel mask).
    batch: B. dtype: "float32" | "float16" | "bfloat16" | "float64".

    Raises:
        ValueError: naming the field, when built with a field of the wrong type or out of
            range: ints (never bools) >= 1, channel_groups >= 0; in_hw a tuple of two such
            ints; an unknown mode or dtype; a spatial mode with S larger than the output
            map; channel_groups not dividing the width. (Fields a mode does not read, S
            without a spatial mask, G without a channel mask, are not checked.)
    """

    in_channels: int
    width: int
    out_channels: int
    stride: int
    downsample: bool
    in_hw: tuple[int, int]
    mode: str
    granularity: int = 1
    channel_groups: int = 0
    batch: int = 1
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("in_channels", "width", "out_channels", "stride", "granularity",
                     "channel_groups", "batch"):
            v = getattr(self, name)
            least = 0 if name == "channel_groups" else 1
            if type(v) is not int or v < least:
                raise ValueError(f"BlockSpec.{name} must be an int >= {least}, got {v!r}")
        hw = self.in_hw
        if (type(hw) is not tuple or len(hw) != 2
                or any(type(v) is not int or v < 1 for v in hw)):
            raise ValueError(f"BlockSpec.in_hw must be a tuple of two ints >= 1, got {hw!r}")
        if type(self.downsample) is not bool:
            raise ValueError(f"BlockSpec.downsample must be a bool, got {self.downsample!r}")
        if self.mode not in MODES:
            raise ValueError(f"BlockSpec.mode {self.mode!r} unknown; accepted: "
                             f"{', '.join(MODES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"BlockSpec.dtype {self.dtype!r} unknown; accepted: "
                             f"{', '.join(DTYPES)}")
        if self.spatial and self.granularity > min(self.out_hw):
            raise ValueError(f"BlockSpec.granularity {self.granularity} is larger than the "
                             f"output map {self.out_hw[0]}x{self.out_hw[1]}")
        if self.channel_groups and self.width % self.channel_groups:
            raise ValueError(f"BlockSpec.channel_groups {self.channel_groups} does not "
                             f"divide the width {self.width}")

    @property
    def out_hw(self) -> tuple[int, int]:
        h, w = self.in_hw
        return ((h - 1) // self.stride + 1, (w - 1) // self.stride + 1)

    @property
    def grid(self) -> tuple[int, int] | None:
        """Mask grid (gh, gw); (1, 1) for the layer gate; None without a spatial mask."""
        if self.mode == "layer":
            return (1, 1)
        if self.mode == "channel":
            return None
        ho, wo = self.out_hw
        return (ho // self.granularity, wo // self.granularity)

    @property
    def uniform_patches(self) -> bool:
        """True when every mask cell is an S x S patch (S divides Ho and Wo)."""
        ho, wo = self.out_hw
        return ho % self.granularity == 0 and wo % self.granularity == 0

    @property
    def spatial(self) -> bool:
        return self.mode in ("spatial", "both")

    @property
    def channel(self) -> bool:
        return self.mode in ("channel", "both")

    def conv_macs(self) -> tuple[int, int, int, int]:
        """Multiply-adds per sample of conv1, conv2, conv3 and the downsample (0 without)."""
        h, w = self.in_hw
        ho, wo = self.out_hw
        ds = self.in_channels * self.out_channels * ho * wo if self.downsample else 0
        return (self.in_channels * self.width * h * w, self.width * self.width * 9 * ho * wo,
                self.width * self.out_channels * ho * wo, ds)

    def dense_flops(self) -> int:
        """Multiply-adds of the dense block per batch (convs and downsample; no maskers)."""
        return sum(self.conv_macs()) * self.batch

    def weight_count(self) -> int:
        """Weights of the block's convolutions (W1, W2, W3 and the downsample's)."""
        c, w, o = self.in_channels, self.width, self.out_channels
        return c * w + 9 * w * w + w * o + (c * o if self.downsample else 0)

    def with_(self, **changes) -> BlockSpec:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["in_hw"] = list(self.in_hw)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BlockSpec:
        d = dict(d)
        d["in_hw"] = tuple(d["in_hw"])
        return cls(**d)

    def key(self) -> str:
        """Stable string key (JSON with sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def short(self) -> str:
        """Human-readable one-liner for tables; the dtype is named when not float32."""
        h, w = self.in_hw
        s = f"{self.in_channels}->{self.width}->{self.out_channels} {h}x{w}/s{self.stride}"
        s += f" {self.mode}"
        if self.spatial:
            s += f" S={self.granularity}"
        if self.channel:
            s += f" G={self.channel_groups}"
        s += f" b{self.batch}"
        return s if self.dtype == "float32" else f"{s} {self.dtype}"

    @classmethod
    def from_block(cls, block: LaudBottleneck, x_shape, dtype: torch.dtype | str = "float32"):
        """Spec of ``block`` for an input of shape [B, Cin, H, W]."""
        b, c, h, w = x_shape
        groups = block.masker_channel.groups if block.masker_channel is not None else 0
        dt = dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")
        return cls(
            in_channels=c, width=block.width, out_channels=block.out_channels,
            stride=block.stride, downsample=block.downsample is not None, in_hw=(h, w),
            mode=block.dyn_mode, granularity=block.granularity, channel_groups=groups,
            batch=b, dtype=dt,
        )
