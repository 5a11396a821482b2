"""``planning.plan_block``: defects found by an audit of its arguments (session 58)."""

import pytest
import torch

from laudtriton.compile_checks import TUNE_MODES
from laudtriton.ops import BlockSpec, fold_block
from laudtriton.planning import candidate_variants, plan_block
from laudtriton.testing import make_block

CL = torch.channels_last


def _block_inputs():
    """(spec, folded block, example input, masks, candidates) of a small spatial block."""
    blk = make_block(16, 4, 1, mode="spatial")
    x = torch.randn(1, 16, 6, 7).contiguous(memory_format=CL)
    spec = BlockSpec.from_block(blk, x.shape, torch.float32)
    with torch.no_grad():
        masks, _ = blk.compute_masks(x)
    return spec, fold_block(blk), x, masks, candidate_variants(spec, "cpu")


@pytest.mark.parametrize("tune", ["fast", 3, None, "OFF"])
def test_plan_block_refuses_an_unknown_tune(tune):
    """An unknown ``tune`` planned as "off" (timing every variant on the example) in
    silence; ``compile`` refuses it, and so does plan_block now, naming the modes."""
    spec, fb, x, masks, cands = _block_inputs()
    said = []
    with pytest.raises(ValueError, match=rf"tune {tune!r} unknown; accepted: "
                                         + ", ".join(TUNE_MODES)):
        plan_block(spec, fb, x, masks, cands, tune, None, None, said.append)
    assert said == []  # refused before anything is timed


def test_plan_block_still_plans_tune_off():
    spec, fb, x, masks, cands = _block_inputs()
    table = plan_block(spec, fb, x, masks, cands, "off", None, None)
    assert table.entries and all(c.source in ("measured", "rule")
                                 for c in table.entries.values())
