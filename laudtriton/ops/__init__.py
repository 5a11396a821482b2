"""Variants per dynamic paradigm, their registry, BlockSpec and BN folding.

Importing this package registers every variant: torch ones (any device) and Triton ones
(CUDA; they import triton only when run).
"""

from . import channel, dense, fold, layer, registry, spatial, triton_channel, triton_spatial
from .fold import FoldedBlock, fold_block
from .registry import Cost, Variant, all_variants, get_variant, register, variants_for
from .spatial import nearest_cells_are_patches
from .spec import BlockSpec

__all__ = [
    "BlockSpec", "Cost", "FoldedBlock", "Variant", "all_variants", "channel", "dense", "fold",
    "fold_block", "get_variant", "layer", "nearest_cells_are_patches", "register", "registry",
    "spatial", "triton_channel", "triton_spatial", "variants_for",
]
