"""Variants per dynamic paradigm, their registry, BlockSpec and BN folding.

Importing this package registers every variant: torch ones (any device) and Triton ones
(CUDA; they import triton only when run).
"""

import dataclasses
import functools

import torch

from . import channel, dense, fold, layer, registry, spatial, triton_channel, triton_spatial
from .fold import FoldedBlock
from .registry import Cost, Variant, all_variants, get_variant, register, variants_for
from .spec import BlockSpec


def fold_block(block, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> FoldedBlock:
    """``ops.fold.fold_block`` (BNs folded into the convolutions), also when called under
    ``torch.inference_mode()``: folded there, the weights would be inference tensors,
    whose version counters the variants' weight caches read (``fold.Fingerprint``), and
    every variant but channel ``dense`` raised on them. Folding runs once, outside any
    timing, so this guard lives here, outside the variants' source hash."""
    with torch.inference_mode(False):
        return fold.fold_block(block, dtype, device)


@functools.lru_cache(maxsize=1024)
def nearest_cells_are_patches(out_hw: tuple[int, int], s: int) -> bool:
    """Whether the reference's nearest upsampling of the mask grid
    (``nn.maskers.upsample_mask``: float32 scale, PyTorch's rule) puts output pixel (i, j)
    in cell (i // s, j // s), the S x S patches ``patch`` cuts: S dividing the map is not
    enough, at 82x82 with S = 41 pixel 41 falls in cell 0 (41 x float32(2/82) < 1)."""
    from ..nn.maskers import upsample_mask

    ho, wo = out_hw
    if s < 1 or ho % s or wo % s:
        return False
    gh, gw = ho // s, wo // s
    ids = torch.arange(gh * gw, dtype=torch.float32).view(1, 1, gh, gw)
    want = (torch.arange(ho)[:, None] // s) * gw + torch.arange(wo)[None, :] // s
    return bool(torch.equal(upsample_mask(ids, (ho, wo))[0, 0].long(), want))


def _patch_supports(spec: BlockSpec, _base=spatial.patch_supports) -> bool:
    return _base(spec) and nearest_cells_are_patches(tuple(spec.out_hw), spec.granularity)


# ``patch`` runs only where the reference's cells are its patches (it gave relative error
# 0.44, unreported, at S >= 41 on maps S divides: 82x82 and S = 41 the smallest). The
# guard wraps the registered ``supports`` here, not in ops/spatial.py, whose code is in
# the variants' source hash (the shipped caches would go stale): compile, sweep, bench
# and the dispatch's fallback all ask the registry; a direct ``spatial.patch_block`` call
# at those sizes is not guarded.
registry._REGISTRY["patch"] = dataclasses.replace(spatial.PATCH, supports=_patch_supports)

__all__ = [
    "BlockSpec", "Cost", "FoldedBlock", "Variant", "all_variants", "channel", "dense", "fold",
    "fold_block", "get_variant", "layer", "nearest_cells_are_patches", "register", "spatial",
    "triton_channel", "triton_spatial", "variants_for",
]
