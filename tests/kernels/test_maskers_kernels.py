"""Fused masker kernels under the interpreter vs float64 references and laudtriton.nn."""

import pytest
import torch

from laudtriton.kernels import maskers as mk
from laudtriton.nn.maskers import MaskerChannelMLP, MaskerSpatial
from laudtriton.testing import assert_close

SMALL = mk.MaskerConfig(16, 16, 16, 16, 1)


# every float torch.empty (the launchers' outputs) starts as NaN (tests/kernels/conftest.py)
pytestmark = pytest.mark.usefixtures("nan_empty")


def _nhwc(x):
    return x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)


def _check_mask(mask, logits_ref, mask_ref):
    """Masks agree wherever the float64 logits' gap exceeds twice the logits' tolerance
    (1e-4 x max|ref|, asserted by every caller): only a closer tie can flip. None is
    expected here; at least 90% of the decisions must be that clear."""
    assert not torch.isnan(mask).any()
    gap = (logits_ref[:, 0] - logits_ref[:, 1]).abs().reshape(mask.shape)
    decided = gap > 2e-4 * logits_ref.abs().max()
    assert torch.equal(mask[decided].double(), mask_ref[decided])
    assert decided.float().mean() > 0.9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hw,grid", [((7, 9), (3, 4)), ((6, 5), (6, 5)), ((5, 7), (1, 1)),
                                     ((9, 9), (2, 2))])
def test_spatial_masker(dtype, hw, grid):
    b, c = 3, 21
    x = torch.randn(b, c, *hw).to(dtype)
    weight, bias = torch.randn(2, c), torch.randn(2) * 0.1
    mask, logits = mk.spatial_masker(_nhwc(x), weight, bias, grid, SMALL)
    mref, lref = mk.spatial_masker_torch(_nhwc(x), weight, bias, grid)
    assert mask.shape == (b, 1, *grid) and logits.shape == (b, 2, *grid)
    assert mask.dtype == logits.dtype == torch.float32  # whatever the input dtype
    assert_close(logits, lref, tol=1e-4)  # fp32 logits whatever the input dtype
    _check_mask(mask, lref, mref)


def test_spatial_masker_matches_module_and_mixed_rates():
    """Same weights as nn.MaskerSpatial: the module's eval mask, default config."""
    m = MaskerSpatial(19).eval()
    with torch.no_grad():
        m.conv.bias.zero_()  # about half the cells on
    x = torch.randn(2, 19, 11, 13)
    grid = (5, 6)
    with torch.no_grad():
        ref_mask, _ = m.double()(x.double(), grid)
        lref = m.logits(x.double(), grid)
    mask, logits = mk.spatial_masker(_nhwc(x), m.conv.weight.float(), m.conv.bias.float(), grid)
    assert_close(logits, lref)
    _check_mask(mask, lref, ref_mask)
    assert 0 < mask.mean() < 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layers", [1, 2])
def test_channel_masker_mlp(dtype, layers):
    b, c, groups = 3, 37, 12
    m = MaskerChannelMLP(c, groups, layers=layers, reduction=4).eval()
    with torch.no_grad():
        m.last_linear().bias.zero_()
    x = torch.randn(b, c, 5, 7).to(dtype)
    lw = [(w.to(dtype), bb.to(dtype)) for w, bb in mk.mlp_layers(m)]
    assert len(lw) == layers
    mask, logits = mk.channel_masker_mlp(_nhwc(x), lw, SMALL)
    mref, lref = mk.channel_masker_mlp_torch(_nhwc(x), lw)
    assert mask.shape == (b, groups) and logits.shape == (b, 2, groups)
    assert mask.dtype == logits.dtype == torch.float32  # whatever the input dtype
    assert_close(logits, lref, tol=1e-4)
    _check_mask(mask, lref, mref)
    if dtype == torch.float32:  # the module itself
        with torch.no_grad():
            mod_mask, _ = m.double()(x.double())
        _check_mask(mask, lref, mod_mask)


def test_rate_extremes():
    """Bias far positive: every cell on (rate 1); far negative: every cell off (rate 0)."""
    x = _nhwc(torch.randn(2, 16, 6, 6))
    w = torch.randn(2, 16) * 0.01
    on, _ = mk.spatial_masker(x, w, torch.tensor([50.0, -50.0]), (3, 3), SMALL)
    off, _ = mk.spatial_masker(x, w, torch.tensor([-50.0, 50.0]), (3, 3), SMALL)
    assert on.eq(1).all() and off.eq(0).all()


@pytest.mark.parametrize("case,match", [  # each message names the bad argument and value
    ("dims", r"x must be 4-D, got shape \(5, 5, 8\)"), ("dtype", "x has dtype torch.float64"),
    ("grid", r"grid \(6, 1\) must lie in"), ("weight", r"weight \(2, 7\)"),
    ("noncontig", "x must be contiguous"), ("layers", "layers is empty"),
    ("odd", "last layer has 5 outputs; a channel masker needs 2G"),
    ("chain", r"layer 1 weight \(4, 5\)"),
])
def test_bad_inputs(case, match):
    x = _nhwc(torch.randn(2, 8, 5, 5))
    w, b = torch.randn(2, 8), torch.zeros(2)
    with pytest.raises(ValueError, match=match):
        if case == "dims":
            mk.spatial_masker(x[0], w, b, (1, 1))
        elif case == "dtype":
            mk.spatial_masker(x.double(), w, b, (1, 1))
        elif case == "grid":
            mk.spatial_masker(x, w, b, (6, 1))
        elif case == "weight":
            mk.spatial_masker(x, torch.randn(2, 7), b, (1, 1))
        elif case == "noncontig":
            mk.spatial_masker(torch.randn(2, 5, 5, 8).transpose(1, 3), w, b, (1, 1))
        elif case == "layers":
            mk.channel_masker_mlp(x, [])
        elif case == "odd":
            mk.channel_masker_mlp(x, [(torch.randn(5, 8), torch.zeros(5))])
        else:
            mk.channel_masker_mlp(x, [(torch.randn(6, 8), torch.zeros(6)),
                                      (torch.randn(4, 5), torch.zeros(4))])


def test_aot_specs():
    specs = mk.aot_specs()
    assert len({s.name for s in specs}) == len(specs)
    assert {s.fn for s in specs if s.default} == {
        mk._spatial_masker_kernel, mk._global_pool_kernel, mk._mlp_layer_kernel}


def test_batch_past_cudas_grid_limit_is_refused():
    """The batch is grid axis y of the masker kernels (CUDA's limit 65535)."""
    x = torch.randn(65536, 1, 1, 16)
    with pytest.raises(ValueError, match="spatial_masker: 65536 programs on launch grid axis y"):
        mk.spatial_masker(x, torch.randn(2, 16), torch.zeros(2), (1, 1))
    with pytest.raises(ValueError, match="channel_masker_mlp: 65536 programs on launch grid"):
        mk.channel_masker_mlp(x, [(torch.randn(4, 16), torch.zeros(4))])


@pytest.mark.parametrize("fields,match", [
    (dict(num_warps=3), "num_warps=3"),  # runs under the interpreter; a GPU refuses it
    (dict(block_pix=24), "block_pix=24; accepted: a power of two >= 16"),
    (dict(block_k=8), "block_k=8"),
])
def test_bad_config_is_refused_at_construction(fields, match):
    with pytest.raises(ValueError, match=match):
        mk.MaskerConfig(**fields)


@pytest.mark.parametrize("grid", [(0, 1), (1, 0), (1, 6)])
def test_spatial_masker_refuses_an_empty_or_oversized_grid(grid):
    x = _nhwc(torch.randn(2, 8, 5, 5))
    says = rf"grid \({grid[0]}, {grid[1]}\) must lie in \[1, 5\] x \[1, 5\]"
    with pytest.raises(ValueError, match=says):
        mk.spatial_masker(x, torch.randn(2, 8), torch.zeros(2), grid, SMALL)


def test_maskers_refuse_an_input_without_channels():
    x = torch.randn(2, 5, 5, 0)
    says = r"x has an empty spatial or channel dim: shape \(2, 5, 5, 0\)"
    with pytest.raises(ValueError, match=says):
        mk.spatial_masker(x, torch.randn(2, 0), torch.zeros(2), (1, 1), SMALL)
    with pytest.raises(ValueError, match="x has an empty spatial or channel dim"):
        mk.channel_masker_mlp(x, [(torch.randn(4, 0), torch.zeros(4))], SMALL)


def test_spatial_masker_refuses_a_weight_without_two_rows():
    x = _nhwc(torch.randn(2, 8, 5, 5))
    with pytest.raises(ValueError, match=r"spatial masker weight \(3, 8\) / bias \(3,\): expected "
                                         r"weight \[2, 8\]"):
        mk.spatial_masker(x, torch.randn(3, 8), torch.zeros(3), (1, 1), SMALL)


def test_exact_ties_turn_the_mask_on():
    """mask = logit0 >= logit1 (``nn.maskers``' eval rule and the references'): a cell or
    group whose two logits tie exactly is on. Equal weight rows and biases make the logits
    bitwise equal; a strict > turned every such cell and group off and passed, since
    ``_check_mask`` skips near-ties (mutation audit, session 52)."""
    x = _nhwc(torch.randn(2, 21, 7, 9))
    w = torch.randn(1, 21).repeat(2, 1)
    mask, logits = mk.spatial_masker(x, w, torch.full((2,), 0.25), (3, 4), SMALL)
    mref, _ = mk.spatial_masker_torch(x, w, torch.full((2,), 0.25), (3, 4))
    assert torch.equal(logits[:, 0], logits[:, 1])
    assert torch.equal(mask, torch.ones(2, 1, 3, 4)) and torch.equal(mref, mask.double())
    hidden = (torch.randn(9, 21), torch.randn(9))
    last = (torch.randn(6, 9).repeat(2, 1), torch.randn(6).repeat(2))  # rows g, G + g equal
    mask, logits = mk.channel_masker_mlp(x, [hidden, last], SMALL)
    assert torch.equal(logits[:, 0], logits[:, 1])
    assert torch.equal(mask, torch.ones(2, 6))


def test_maskers_store_nothing_past_their_outputs_and_use_both_last_biases(guarded_empty):
    """21 channels, a 9-wide hidden layer and G = 12 groups over 16-wide tiles, 3 samples:
    the masked lanes of the last tiles store nothing. A dropped store mask wrote each
    sample's spare lanes over the next sample's values (rewritten after) and the last
    sample's past the end of the output, which only aborted the run by luck. The last
    layer's bias is random here (``test_channel_masker_mlp`` zeroes it): logit 1 adds
    b[G + g], logit 0 b[g]."""
    x = _nhwc(torch.randn(3, 21, 5, 7))
    layers = [(torch.randn(9, 21), torch.randn(9)), (torch.randn(24, 9), torch.randn(24))]
    mask, logits = mk.channel_masker_mlp(x, layers, SMALL)
    mref, lref = mk.channel_masker_mlp_torch(x, layers)
    assert_close(logits, lref, tol=1e-4)
    _check_mask(mask, lref, mref)
    w, bias = torch.randn(2, 21), torch.randn(2) * 0.1
    mask, logits = mk.spatial_masker(x, w, bias, (3, 4), SMALL)
    mref, lref = mk.spatial_masker_torch(x, w, bias, (3, 4))
    assert_close(logits, lref, tol=1e-4)
    _check_mask(mask, lref, mref)
    assert len(guarded_empty) == 6  # pool, hidden, logits and mask; spatial logits, mask
    assert all(torch.isnan(t).all() for t in guarded_empty), "a store landed past an output"
