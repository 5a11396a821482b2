"""Degenerate sizes and argument mixes of the kernel launchers and their float64 torch
references (an audit; the fuzz of test_triton_fuzz.py runs whole blocks, not these): no
input channels, an empty map, zero output channels, batch 0, and the spatial masker's
grid given as something other than two ints. Outputs start as NaN (``nan_empty``)."""

import numpy as np
import pytest
import torch

from laudtriton.kernels import channel_conv3x3 as cc
from laudtriton.kernels import channel_gemm as cg
from laudtriton.kernels import conv1x1_residual as cr
from laudtriton.kernels import conv3x3 as c3
from laudtriton.kernels import gather_conv as gc
from laudtriton.kernels import maskers as mk
from laudtriton.testing import assert_close

pytestmark = pytest.mark.usefixtures("nan_empty")

SMALL = cg.GemmConfig(16, 16, 16, 1, 1)
TILE = gc.TileConfig(16, 16, 16, 1, 1)
I32 = torch.int32


def _no_input_case(li: int):
    """Two samples over a 5x4 map, 6 output channels: every input off (n_in = 0, in_idx
    [2, li]), outputs listed partly (3 and 2 of LO = 4 columns)."""
    x = torch.randn(2, 5, 4, li)
    w = torch.randn(6, 8, 3, 3)
    bias = torch.randn(2, 6)
    kw = dict(in_idx=torch.arange(li, dtype=I32).expand(2, li).contiguous(),
              n_in=torch.zeros(2, dtype=I32),
              out_idx=torch.tensor([[1, 3, 5, 0], [4, 0, 2, 1]], dtype=I32),
              n_out=torch.tensor([3, 2], dtype=I32))
    return x, w, bias, kw


def _bias_and_taps(bias, taps, out_idx, n_out, h, wd, stride, relu):
    """By hand: out[b, i, j, c] = bias[b, o] + Σ_t taps[b, t, o] where tap t = 3·dy + dx
    of output (i, j) reads inside the h x wd image, o = out_idx[b, c]; NaN past n_out."""
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    out = torch.full((2, ho, wo, out_idx.shape[1]), float("nan"), dtype=torch.float64)
    iy = torch.arange(ho)[:, None] * stride
    ix = torch.arange(wo)[None, :] * stride
    for b in range(2):
        for c in range(int(n_out[b])):
            o = int(out_idx[b, c])
            v = torch.full((ho, wo), float(bias[b, o]), dtype=torch.float64)
            for t in range(9 if taps is not None else 0):
                y, x = iy + t // 3 - 1, ix + t % 3 - 1
                inside = (y >= 0) & (y < h) & (x >= 0) & (x < wd)
                v = v + inside * float(taps[b, t, o])
            out[b, :, :, c] = v.clamp_min(0) if relu else v
    return out


@pytest.mark.parametrize("li", [0, 3], ids=["LI0", "LI3"])
@pytest.mark.parametrize("with_taps", [False, True], ids=["bias", "taps"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
def test_channel_conv3x3_with_no_input_channels_is_bias_and_taps(li, with_taps, stride, relu):
    """n_in = 0: the sum over input channels is empty, so each listed output is its bias
    (+ the κ1 taps that read inside the image, + ReLU); the reference crashed (torch's
    conv2d over no input channels returns no output channels), the kernel gives this."""
    x, w, bias, kw = _no_input_case(li)
    taps = torch.randn(2, 9, 6) if with_taps else None
    kw |= dict(taps=taps, stride=stride, relu=relu)
    want = _bias_and_taps(bias, taps, kw["out_idx"], kw["n_out"], 5, 4, stride, relu)
    ref = cc.channel_conv3x3_torch(x, w, bias, **kw)
    assert ref.shape == want.shape
    assert torch.allclose(ref, want, equal_nan=True)  # NaN past n_out in both
    y = cc.channel_conv3x3(x, w, bias, config=SMALL, **kw)
    for b in range(2):
        m = int(kw["n_out"][b])
        assert_close(y[b, ..., :m], want[b, ..., :m], name=f"kernel, sample {b}")


def test_channel_conv3x3_reference_on_an_empty_map():
    """A 0-row map has a 0-row output: the kernel returns it, the reference too (it
    called conv2d on the empty map, which refuses a 3x3 kernel there)."""
    x = torch.randn(2, 0, 5, 4)
    w, bias = torch.randn(6, 4, 3, 3), torch.randn(6)
    kw = dict(in_idx=torch.arange(4, dtype=I32).expand(2, 4).contiguous(),
              n_in=torch.tensor([4, 2], dtype=I32),
              out_idx=torch.arange(6, dtype=I32).expand(2, 6).contiguous(),
              n_out=torch.tensor([6, 3], dtype=I32))
    for stride in (1, 2):
        y = cc.channel_conv3x3(x, w, bias, stride=stride, config=SMALL, **kw)
        ref = cc.channel_conv3x3_torch(x, w, bias, stride=stride, **kw)
        assert y.shape == ref.shape == (2, 0, 5 if stride == 1 else 3, 6)


@pytest.mark.parametrize("grid", [(2.0, 3), 2, (2, 3, 1), (True, 3), (2, None), "23"],
                         ids=["float", "int", "three", "bool", "none", "str"])
def test_spatial_masker_names_a_grid_that_is_not_two_ints(grid):
    """A grid that is not two ints was refused by torch.empty, by tuple unpacking or by
    the interpreter, in messages that do not name it (a float, one int, three ints), or
    ran (a bool as a 1-cell side)."""
    x, w, b = torch.randn(2, 5, 7, 6), torch.randn(2, 6), torch.randn(2)
    with pytest.raises(ValueError, match=r"^grid must be two ints \(gh, gw\), got "):
        mk.spatial_masker(x, w, b, grid)


@pytest.mark.parametrize("grid", [(np.int64(2), np.int32(3)), np.array([2, 3]),
                                  torch.tensor([2, 3])], ids=["np_ints", "np_array", "tensor"])
def test_spatial_masker_takes_integer_grids_of_numpy_and_torch(grid):
    """NumPy ints and an integer tensor of two entries are the grid (2, 3): the NumPy
    array failed in the kernel, the tensor reached the kernel as two tensors."""
    x, w, b = torch.randn(2, 5, 7, 6), torch.randn(2, 6), torch.randn(2)
    mask, logits = mk.spatial_masker(x, w, b, grid)
    rmask, rlogits = mk.spatial_masker_torch(x, w, b, (2, 3))
    assert_close(logits, rlogits, 1e-4)
    assert torch.equal(mask, rmask.float())


def test_spatial_references_without_input_or_output_channels():
    """K = 0 (no input channels): gather_conv1x1 and conv3x3 give relu(bias) at the listed
    pixels, as their references now (they failed to reshape, or read conv2d's empty
    output); N = 0: conv1x1_residual and its reference give an empty output."""
    x, b = torch.randn(2, 3, 5, 0), torch.randn(6)
    idx, count = torch.tensor([0, 7, 29, 3, 0], dtype=I32), torch.tensor([4], dtype=I32)
    buf = gc.gather_conv1x1(x, idx, count, torch.randn(6, 0), b, TILE)
    ref = gc.gather_conv1x1_torch(x, idx, count, torch.randn(6, 0), b)
    assert_close(buf, ref, name="gather_conv1x1")
    assert torch.equal(ref[0, 1, 1], b.double().relu())  # pixel 0, inside the border

    buf, w2, b2 = torch.randn(2, 5, 7, 0), torch.randn(3, 3, 0, 5), torch.randn(5)
    idx = torch.tensor([0, 7, 11, 3, 0], dtype=I32)  # pixels of the 2x3 map at stride 2 too
    for stride in (1, 2):
        rows = c3.conv3x3(buf, idx, count, w2, b2, stride, TILE)
        ref = c3.conv3x3_torch(buf, idx, count, w2, b2, stride)
        assert_close(rows[:4], ref, name=f"conv3x3 s{stride}")
        assert torch.equal(ref, b2.double().relu().expand(4, 5))

    a, ident = torch.randn(5, 6), torch.randn(2, 3, 5, 0)
    out = cr.conv1x1_residual(a, idx, count, torch.randn(0, 6), torch.randn(0), ident, TILE)
    ref = cr.conv1x1_residual_torch(a, idx, count, torch.randn(0, 6), torch.randn(0), ident)
    assert out.shape == ref.shape == (2, 3, 5, 0)


def test_channel_masker_mlp_reference_at_batch_0():
    """Batch 0: the launcher returns (mask [0, G], logits [0, 2, G]); the reference failed
    to view its empty logits as [0, 2, -1]."""
    x = torch.randn(0, 5, 7, 6)
    layers = [(torch.randn(5, 6), torch.randn(5)), (torch.randn(4, 5), torch.randn(4))]
    mask, logits = mk.channel_masker_mlp(x, layers)
    rmask, rlogits = mk.channel_masker_mlp_torch(x, layers)
    assert mask.shape == rmask.shape == (0, 2)
    assert logits.shape == rlogits.shape == (0, 2, 2)
