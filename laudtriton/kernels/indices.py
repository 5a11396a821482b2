"""Masks -> index lists on the device, with their counts on the device too.

The spatial kernels (gather_conv, conv3x3, conv1x1_residual) read an int32 list of flat
positions and an int32 count tensor [1]. The lists are built here without a host sync, so
the ``masked`` variant can launch a grid sized for the dense problem and let every
program read the count (CUDA-graph capturable); the ``fused`` variant reads the counts
once on the host to size its grids exactly.

Implementation: torch (cumsum + scatter), not Triton. A stream compaction is one cumsum
and one scatter over the mask; a Triton kernel would need a decoupled look-back scan to
beat torch's and adds nothing at these sizes (a mask is B·H·W bytes, <1 MB for ResNet).
So this family has no @triton.jit kernel and ``aot_specs()`` is empty.
"""

from __future__ import annotations

import torch


def compact(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the non-zero entries of a flattened mask, without a host sync.

    mask: any shape (bool or 0/1 numeric), N = mask.numel() < 2**31.
    Returns (idx, count): idx [N] int32 whose first ``count`` entries are the flat
    positions of the active entries in increasing order (the rest are 0, never read by
    the kernels); count [1] int32 on the same device.

    Raises:
        ValueError: if the mask is empty or has 2**31 entries or more.
    """
    n = mask.numel()
    if n == 0 or n >= 2**31:
        raise ValueError(f"mask has {n} entries; accepted 1 .. 2**31 - 1")
    on = mask.reshape(-1) != 0
    pos = torch.cumsum(on, 0, dtype=torch.int32)  # 1-based rank of each active entry
    count = pos[-1:].clone()
    # inactive entries go to the trash slot n; active ones to rank - 1
    target = torch.where(on, pos - 1, torch.full_like(pos, n)).long()
    out = torch.zeros(n + 1, dtype=torch.int32, device=mask.device)
    out.scatter_(0, target, torch.arange(n, dtype=torch.int32, device=mask.device))
    idx = out[:n]
    # the trash slot may have been written by several inactive entries; the slice drops it
    return idx, count


def _check_mask(name: str, mask: torch.Tensor) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[1] != 1:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a [B, 1, H, W] tensor, got {shape}")


def active_pixels(mask3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Active output pixels: mask3 [B, 1, Ho, Wo] -> (idx [B·Ho·Wo] int32, count [1] int32).

    idx[:count] are flat positions b·Ho·Wo + i·Wo + j, in increasing order.
    """
    _check_mask("mask3", mask3)
    return compact(mask3)


def active_rows(mask1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Union of the conv1 input pixels: mask1 [B, 1, H, W] -> (idx [B·H·W] int32, count [1]).

    idx[:count] are flat positions b·H·W + y·W + x, in increasing order.
    """
    _check_mask("mask1", mask1)
    return compact(mask1)


def active_patches(grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Active mask cells (S x S patches, or the unequal cells when S does not divide Ho):
    grid [B, 1, gh, gw] -> (idx [B·gh·gw] int32, count [1] int32), idx[:count] =
    b·gh·gw + r·gw + c. Which output pixels a cell covers is the maskers' nearest rule
    (``nn.maskers.upsample_mask``, PyTorch's, as the official code; not DESIGN.md's
    ⌊i·gh/Ho⌋ at every size, docs/layout.md).
    """
    _check_mask("grid", grid)
    return compact(grid)


def host_counts(*counts: torch.Tensor) -> list[int]:
    """The counts as Python ints, with one host sync for all of them."""
    return [int(v) for v in torch.cat([c.reshape(1) for c in counts]).tolist()]


def compact_torch(mask: torch.Tensor) -> torch.Tensor:
    """Reference of :func:`compact`: the active flat positions [count] int64 (syncs)."""
    return torch.nonzero(mask.reshape(-1) != 0).flatten()


def aot_specs() -> list:
    """No Triton kernels in this family (see the module docstring)."""
    return []
