"""Variants per dynamic paradigm, their registry, BlockSpec and BN folding."""

from . import dense
from .fold import FoldedBlock, fold_block
from .registry import Cost, Variant, all_variants, get_variant, register, variants_for
from .spec import BlockSpec

__all__ = [
    "BlockSpec", "Cost", "FoldedBlock", "Variant", "all_variants", "dense", "fold_block",
    "get_variant", "register", "variants_for",
]
