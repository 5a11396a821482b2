"""Masks at an exact activation rate, for tests, sweeps and benchmarks (DESIGN.md
section 5: exactly round(r·N) active cells, random or clustered)."""

from __future__ import annotations

import dataclasses

import torch

from ..nn.block import BlockMasks
from ..nn.maskers import expand_mask1, upsample_mask
from .spec import BlockSpec


def _exact_rate(b: int, n: int, rate: float, g: torch.Generator, clustered: bool,
                shape2d: tuple[int, int] | None = None) -> torch.Tensor:
    """[b, n] 0/1 with exactly round(rate·n) ones per row."""
    k = int(round(rate * n))
    out = torch.zeros(b, n)
    for i in range(b):
        if clustered and shape2d is not None and 0 < k < n:
            # one blob: the k cells nearest to a random centre (ties broken randomly)
            gh, gw = shape2d
            cy, cx = torch.randint(gh, (1,), generator=g), torch.randint(gw, (1,), generator=g)
            yy, xx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            d = ((yy - cy) ** 2 + (xx - cx) ** 2).flatten().float()
            d = d + torch.rand(n, generator=g) * 0.5
            out[i, torch.argsort(d)[:k]] = 1.0
        else:
            out[i, torch.randperm(n, generator=g)[:k]] = 1.0
    return out


def synthetic_masks(spec: BlockSpec, rate: float, seed: int = 0, clustered: bool = False,
                    channel_rate: float | None = None, device=None) -> BlockMasks:
    """BlockMasks for ``spec`` with exactly round(rate·N) active cells.

    Spatial: N = grid cells per sample. Layer: N = batch (round(rate·B) samples on).
    Channel: N = groups per sample, at ``channel_rate`` (default ``rate``).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    g = torch.Generator().manual_seed(seed)
    b = spec.batch
    grid = mask3 = mask1 = channel = None
    if spec.mode == "layer":
        grid = _exact_rate(1, b, rate, g, False).view(b, 1, 1, 1)
    elif spec.spatial:
        gh, gw = spec.grid
        grid = _exact_rate(b, gh * gw, rate, g, clustered, (gh, gw)).view(b, 1, gh, gw)
    if grid is not None:
        mask3 = upsample_mask(grid, spec.out_hw)
        mask1 = expand_mask1(mask3, spec.stride, spec.in_hw)
    if spec.channel:
        cr = rate if channel_rate is None else channel_rate
        channel = _exact_rate(b, spec.channel_groups, cr, g, False)
    masks = BlockMasks(grid, mask3, mask1, channel)
    if device is not None:
        masks = BlockMasks(*(None if t is None else t.to(device) for t in
                             (getattr(masks, f.name) for f in dataclasses.fields(masks))))
    return masks
