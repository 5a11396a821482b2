"""Variants per dynamic paradigm, their registry, BlockSpec and BN folding.

Importing this package registers every variant: torch ones (any device) and Triton ones
(CUDA; they import triton only when run).
"""

import torch

from . import channel, dense, fold, layer, spatial, triton_channel, triton_spatial
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


__all__ = [
    "BlockSpec", "Cost", "FoldedBlock", "Variant", "all_variants", "channel", "dense", "fold",
    "fold_block", "get_variant", "layer", "register", "spatial", "triton_channel", "triton_spatial",
    "variants_for",
]
