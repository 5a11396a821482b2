"""A spatial block's masks computed on the host: ``host_spatial_masks``, what
``ops.masks.Gates`` gives a block with a spatial masker and no channel masker, for a
float32 CPU input, with numpy after the pooling.

After the pooling, a spatial masker is a dot product per grid cell, a sign test and two
small table operations (mask3 by cell, mask1 by two products with the cover tables of
``ops.masks.spatial_masks_from_grid``): about ten torch operators in ``Gates``, each
costing 10-40 us inside a model on a 2-core CPU (BENCHMARKS.md, session 14), where numpy
takes a few microseconds. In a compiled ResNet-101 with spatial masks 4-4-2-1 at rate 0.5,
batch 1 (AMD EPYC with AVX-512, session 56; the two paths and dense interleaved in one
process, the same masks), this code was faster in 7 of 10 rounds, by a median of 0.008 of
dense (from 0.039 faster to 0.018 slower), and its first form (a BLAS product for the
logits) in 12 of 18 rounds, median 0.015: a small gain, near the machine's noise.
"""

from __future__ import annotations

import numpy as np
import torch

from .nn.block import BlockMasks
from .ops.masks import Gates, _mask_tables, grid_pool, out_hw_of

# the most multiply-adds done on the host, for the logits (B·cells·C) and for the cover
# products (B·(gh·gw·W + H·gh·W)). The logits are an einsum (numpy's own loop): OpenBLAS
# ran a 196x256 matrix-vector product on two threads (session 56), and its worker spins
# on beside torch's; it keeps a matrix product this small on one
MAX_HOST_MACS = 1 << 18


def host_spatial_masks(gates: Gates, x: torch.Tensor) -> BlockMasks | None:
    """``gates(x)`` for a block with a spatial masker and no channel masker, x [B, C, H, W]
    float32 on CPU: the same grid (float32), mask3 (float32) and mask1 (bool), the grid
    pooled by ``ops.masks.grid_pool`` and the rest computed with numpy. The logits are
    summed in numpy's order, which may differ from ``Gates``' in the last bits, as
    ``Gates``' differ from the reference's (``Gates`` says so).

    Returns None where this does not apply, and the caller calls ``gates``: a channel
    masker, a layer gate (a 1x1 grid), another dtype or device, an x that needs grad, or
    a grid whose logits or cover products take more than ``MAX_HOST_MACS`` multiply-adds.
    """
    if gates.spatial is None or gates.mlp is not None or gates.conv_linear is not None:
        return None
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.requires_grad:
        return None
    block = gates.block
    b, c, h, w = x.shape
    g = block.grid_size((h, w))
    if g == (1, 1) or b * max(g[0] * g[1] * c, (g[0] * g[1] + h * g[0]) * w) > MAX_HOST_MACS:
        return None
    bias, weight = gates.spatial
    rows = grid_pool(x, g).numpy().transpose(0, 2, 3, 1).reshape(-1, c)
    logits = np.einsum("rc,c->r", rows, weight.numpy()) + bias.numpy()
    # keep where logit difference >= 0: torch.heaviside(·, 1) as Gates takes it, NaN -> 0
    # (np.heaviside gives NaN there)
    grid = (logits >= 0).astype(np.float32)
    cell, ay, axt = _mask_tables((h, w), block.stride, g, "cpu", torch.float32)
    ho, wo = out_hw_of((h, w), block.stride)
    mask3 = np.take(grid.reshape(b, -1), cell.numpy(), axis=1).reshape(b, 1, ho, wo)
    # cover counts of active cells per input pixel: small integers, exact in any order;
    # the product grouped as MAX_HOST_MACS counts it
    mask1 = (ay.numpy() @ (grid.reshape(b, *g) @ axt.numpy()) > 0.5).reshape(b, 1, h, w)
    return BlockMasks(torch.from_numpy(grid.reshape(b, 1, *g)), torch.from_numpy(mask3),
                      torch.from_numpy(mask1), None)
