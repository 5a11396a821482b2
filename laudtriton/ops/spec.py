"""BlockSpec: the one description of "a dynamic block of this shape" (DESIGN.md section 1).

The cache keys on it, the predictor takes it, the scheduler plans per it, the CLI prints it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import torch

from ..nn.block import LaudBottleneck


@dataclass(frozen=True)
class BlockSpec:
    """Shape and dynamic configuration of one LAUD bottleneck at one input size.

    in_channels: Cin; width: w (conv1/conv2 channels); out_channels: 4·planes.
    stride: of conv2 and the downsample; downsample: whether the identity is a 1x1 conv.
    in_hw: (H, W) of the block input. mode: spatial | channel | layer | both.
    granularity: patch size S (1 where there is no spatial mask; layer gate: 1).
    channel_groups: G channel-mask groups (0 where there is no channel mask).
    batch: B. dtype: "float32" | "float16" | "bfloat16".
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
