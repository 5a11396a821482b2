"""LAUD dynamic networks with the official LAUDNet semantics and parameter names."""

from .block import BlockMasks, BlockStats, LaudBottleneck
from .calibrate import calibrate_block, calibrate_rates
from .losses import KDLoss, SparsityLoss
from .maskers import (
    MaskerChannelConvLinear,
    MaskerChannelMLP,
    MaskerSpatial,
    expand_channel_mask,
    expand_mask1,
    mask_grid_size,
    upsample_mask,
)
from .resnet import LaudResNet, ModelStats, laud_resnet50, laud_resnet101

__all__ = [
    "BlockMasks", "BlockStats", "KDLoss", "LaudBottleneck", "LaudResNet",
    "MaskerChannelConvLinear", "MaskerChannelMLP", "MaskerSpatial", "ModelStats",
    "SparsityLoss", "calibrate_block", "calibrate_rates", "expand_channel_mask",
    "expand_mask1", "laud_resnet50", "laud_resnet101", "mask_grid_size", "upsample_mask",
]
