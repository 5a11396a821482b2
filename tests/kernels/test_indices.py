"""Masks -> device index lists and counts (laudtriton.kernels.indices)."""

import pytest
import torch

from laudtriton.kernels import indices


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 1, 7, 9), (3, 1, 5, 4)])
@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_compact_matches_nonzero(shape, rate):
    mask = torch.rand(shape) < rate if 0 < rate < 1 else torch.full(shape, bool(rate))
    idx, count = indices.compact(mask)
    ref = indices.compact_torch(mask)
    n = mask.numel()
    assert idx.dtype == torch.int32 and idx.shape == (n,)
    assert count.dtype == torch.int32 and count.shape == (1,)
    assert int(count) == ref.numel()
    assert torch.equal(idx[: int(count)].long(), ref)
    assert torch.all(idx[int(count):] == 0)


def test_float_mask_and_entry_points():
    grid = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 0.0], [1.0, 0.0]]]])
    idx, count = indices.active_patches(grid)
    assert int(count) == 3
    assert idx[:3].tolist() == [0, 3, 6]
    m3 = torch.zeros(1, 1, 3, 5)
    m3[0, 0, 2, 4] = 1.0
    m3[0, 0, 0, 1] = 1.0
    idx, count = indices.active_pixels(m3)
    assert idx[: int(count)].tolist() == [1, 14]
    m1 = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    m1[1, 0, 1, 0] = True
    idx, count = indices.active_rows(m1)
    assert idx[: int(count)].tolist() == [6]


def test_host_counts_one_list():
    a = torch.tensor([3], dtype=torch.int32)
    b = torch.tensor([0], dtype=torch.int32)
    assert indices.host_counts(a, b) == [3, 0]


@pytest.mark.parametrize("bad", [torch.zeros(2, 2, 3, 3), torch.zeros(3, 3), "mask"])
def test_bad_mask_shape(bad):
    with pytest.raises(ValueError, match="mask3"):
        indices.active_pixels(bad)


def test_empty_mask_rejected():
    with pytest.raises(ValueError, match="0 entries"):
        indices.compact(torch.zeros(0))


def test_no_triton_kernels():
    assert indices.aot_specs() == []
