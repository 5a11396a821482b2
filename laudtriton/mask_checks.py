"""The masks a user may give a compiled block (``CompiledBlock.check_masks``, and
``testing.reference_on_masks``): a BlockMasks whose tensors have the block's shapes for
the input, on its device, with values 0 and 1, mask3 and mask1 the grid's expansion."""

from __future__ import annotations

import torch
from torch import nn

from .guards import strided_refusal
from .nn.block import BlockMasks
from .ops.masks import spatial_masks_from_grid


def check_block_masks(block: nn.Module, masks: BlockMasks, x: torch.Tensor, who: str,
                      channel_groups: int) -> None:
    """``CompiledBlock.check_masks`` for the LaudBottleneck ``block`` with G =
    ``channel_groups`` channel-mask groups (0: none), naming ``who`` in the message.

    Raises:
        ValueError: as ``CompiledBlock.check_masks``.
    """
    if not isinstance(masks, BlockMasks):
        raise ValueError(f"{who}: masks must be a BlockMasks, got {type(masks).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who}: x must be a tensor [B, C, H, W], got {got}")
    b, _, h, w = x.shape
    ho, wo = block.out_hw((h, w))
    g = block.grid_size((h, w))
    expected = {
        "grid": None if g is None else (b, 1, *g),
        "mask3": None if g is None else (b, 1, ho, wo),
        "mask1": None if g is None else (b, 1, h, w),
        "channel": (b, channel_groups) if channel_groups else None,
    }
    for name, shape in expected.items():
        t = getattr(masks, name)
        where = f"{who}: masks.{name}"
        if t is not None:
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{where} must be a tensor, got {type(t).__name__}")
            if t.layout != torch.strided:
                raise ValueError(strided_refusal(where, t))
            if t.device != x.device:
                raise ValueError(f"{where} is on {t.device}; the block runs on {x.device}")
            if t.is_complex():
                raise ValueError(f"{where} is {str(t.dtype).replace('torch.', '')}; "
                                 "give real values (0 and 1)")
        got = None if t is None else tuple(t.shape)
        if got != shape:
            raise ValueError(f"{where} has shape {got}; this block on an input of "
                             f"{b}x{h}x{w} takes {shape}")
        if t is not None and name in ("grid", "channel") and not bool(
                ((t == 0) | (t == 1)).all()):
            raise ValueError(f"{where} holds values other than 0 and 1")
    if g is not None:  # mask3 and mask1 equal to the grid's 0/1 expansion, values too
        want = spatial_masks_from_grid(masks.grid.to(torch.float32), (h, w), block.stride)
        for name, w01 in zip(("mask3", "mask1"), want):
            if not torch.equal(getattr(masks, name).to(torch.float32), w01.float()):
                raise ValueError(f"{who}: masks.{name} is not the expansion of masks.grid "
                                 "(spatial_masks_from_grid): other pixels or values "
                                 "other than 0 and 1")
