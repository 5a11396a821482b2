"""laudtriton.host_gates: a spatial block's masks on the host equal the reference's and
``Gates``' (values, dtypes, shapes); the blocks it does not apply to are left to
``Gates``; a compiled spatial model uses it."""

import pytest
import torch

import laudtriton
from laudtriton import host_gates
from laudtriton.host_gates import host_spatial_masks
from laudtriton.nn import LaudResNet, calibrate_block, calibrate_rates
from laudtriton.ops.masks import Gates
from laudtriton.testing import assert_close, assert_same_masks, make_block

# (inplanes, planes, stride, S, batch, map): S dividing the output map or not, stride 1
# and 2, S = 1 (one cell per pixel), batch 1 and 3, a map with one side of 1
CASES = [(64, 16, 1, 2, 1, (8, 8)), (64, 16, 2, 2, 3, (9, 11)), (32, 16, 1, 3, 3, (12, 13)),
         (64, 32, 2, 1, 1, (7, 7)), (64, 16, 1, 1, 2, (16, 1)), (16, 8, 1, 7, 1, (15, 14))]


@pytest.mark.parametrize("inplanes,planes,stride,s,batch,hw", CASES)
@pytest.mark.parametrize("channels_last", [True, False])
@torch.no_grad()
def test_host_masks_equal_the_reference_and_gates(inplanes, planes, stride, s, batch, hw,
                                                  channels_last):
    blk = make_block(inplanes, planes, stride, "spatial", s, seed=s + batch)
    x = torch.randn(batch, inplanes, *hw, generator=torch.Generator().manual_seed(batch))
    x = x.relu()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    calibrate_block(blk, x, 0.5)
    ref, _ = blk.compute_masks(x)
    gates = Gates(blk)
    got = host_spatial_masks(gates, x)
    assert got is not None and got.channel is None
    assert 0 < float(ref.grid.mean()) < 1 or ref.grid.numel() == 1
    for name in ("grid", "mask3", "mask1"):
        want, have = getattr(ref, name), getattr(got, name)
        assert have.dtype == getattr(gates(x), name).dtype, name
        assert have.shape == want.shape, name
        assert torch.equal(have.to(want.dtype), want), name


@torch.no_grad()
def test_host_masks_leave_other_blocks_to_the_gates(monkeypatch):
    """None (the caller then runs ``Gates``) for a channel or both block, a layer gate,
    float64, an x that needs grad, and a grid past ``MAX_HOST_MACS``."""
    x = torch.rand(1, 64, 8, 8)
    for mode in ("channel", "both", "layer"):
        assert host_spatial_masks(Gates(make_block(64, 16, 1, mode, 2)), x) is None
    spatial = Gates(make_block(64, 16, 1, "spatial", 2))
    assert host_spatial_masks(spatial, x) is not None
    with torch.enable_grad():
        assert host_spatial_masks(spatial, x.clone().requires_grad_()) is None
    assert host_spatial_masks(Gates(make_block(64, 16, 1, "spatial", 2).double()),
                              x.double()) is None
    monkeypatch.setattr(host_gates, "MAX_HOST_MACS", 64 * 16 - 1)  # 4x4 cells, 64 channels
    assert host_spatial_masks(spatial, x) is None
    # the cover products: B·(gh·gw·W + H·gh·W) = 16·8 + 8·4·8 = 384 for 16 channels
    narrow = Gates(make_block(16, 4, 1, "spatial", 2))
    x16 = torch.rand(1, 16, 8, 8)
    monkeypatch.setattr(host_gates, "MAX_HOST_MACS", 384)
    assert host_spatial_masks(narrow, x16) is not None
    monkeypatch.setattr(host_gates, "MAX_HOST_MACS", 383)
    assert host_spatial_masks(narrow, x16) is None


def test_a_compiled_spatial_model_decides_on_the_host(monkeypatch):
    """Every spatial block of a compiled model takes its masks from the host path (a spy
    counts the calls), and they are the reference's."""
    torch.manual_seed(0)
    model = LaudResNet((1, 2, 1, 1), mode="spatial", granularity="2-2-1-1", width_mult=0.25,
                       input_size=None, num_classes=7).eval()
    x = torch.randn(3, 3, 45, 37)
    calibrate_rates(model, x, 0.5)
    cm = laudtriton.compile(model, x, backend="cpu", tune="off")
    from laudtriton import compiled_block

    calls = []

    def spy(gates, xx):
        out = host_spatial_masks(gates, xx)
        calls.append(out is not None)
        return out
    monkeypatch.setattr(compiled_block, "host_spatial_masks", spy)
    with torch.no_grad():
        assert_close(cm(x), model(x))
    assert_same_masks(cm, model)
    assert calls == [True] * len(cm.blocks)


@torch.no_grad()
def test_a_tie_decides_as_the_reference_does():
    """Keep and skip logits equal (a zero masker): every cell is on, as in the reference."""
    blk = make_block(64, 16, 1, "spatial", 2)
    blk.masker_spatial.conv.weight.zero_()
    blk.masker_spatial.conv.bias.fill_(0.25)
    x = torch.rand(2, 64, 8, 8)
    ref, _ = blk.compute_masks(x)
    got = host_spatial_masks(Gates(blk), x)
    assert bool(ref.grid.all())
    for name in ("grid", "mask3", "mask1"):
        assert torch.equal(getattr(got, name).to(getattr(ref, name).dtype), getattr(ref, name))


@torch.no_grad()
def test_a_nan_cell_is_off_as_in_gates_and_the_reference():
    """np.heaviside gives NaN for a NaN logit, where torch.heaviside (Gates) and the
    reference's comparison give 0: a NaN grid then reached the dispatch rate (a ValueError
    in a block with several table entries) and the masks."""
    blk = make_block(64, 16, 1, "spatial", 2)
    x = torch.rand(2, 64, 8, 8)
    calibrate_block(blk, x, 0.5)
    x[1, 0, 5, 5] = float("nan")
    ref, _ = blk.compute_masks(x)
    got = host_spatial_masks(Gates(blk), x)
    assert not bool(got.grid.isnan().any()) and not bool(got.mask3.isnan().any())
    for name in ("grid", "mask3", "mask1"):
        assert torch.equal(getattr(got, name).to(getattr(ref, name).dtype), getattr(ref, name))
        assert torch.equal(getattr(got, name), getattr(Gates(blk)(x), name))
        assert getattr(got, name).is_contiguous()
