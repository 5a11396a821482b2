"""The spatial kernels past 2³² elements: each widens a gathered pixel index to int64
before multiplying it by a row width, or an input of B·H·W·K >= 2³¹ elements would wrap.

The big tensors are ``torch.empty`` of over 2³² fp16 elements (about 10 GiB each, never
touched as a whole: only the rows a test fills and the kernel reads or writes take
memory, about 0.3 GiB in all). The listed pixels sit where an int32 offset wraps back
into the tensor (offsets in [2³², 2³² + 2³¹)), on rows whose data differs from the rows
the wrapped offsets hit, so a kernel that lost a widening fails the comparison instead of
faulting. Run under the Triton interpreter, whose int32 arithmetic wraps as a GPU's does.
"""

import pytest
import torch

from laudtriton.kernels import conv1x1_residual as res_mod
from laudtriton.kernels import conv3x3 as c3_mod
from laudtriton.kernels import gather_conv as g_mod
from laudtriton.testing import assert_close

WRAP = 2**32
DTYPE = torch.float16


def _huge(*shape: int) -> torch.Tensor:
    """An uninitialised fp16 tensor of over 2³² elements (pages taken only when touched)."""
    n = torch.Size(shape).numel()
    assert WRAP < n, f"{shape} has {n} elements, not past 2^32"
    try:
        return torch.empty(shape, dtype=DTYPE)
    except RuntimeError as e:  # a host that refuses a 10 GiB virtual allocation
        pytest.skip(f"cannot reserve {n * 2 / 2**30:.0f} GiB of address space: {e}")


def _wrapping(index: int, width: int) -> int:
    """index, asserted to be one whose offset index·width an int32 wraps into [0, 2³¹)."""
    assert WRAP <= index * width < WRAP + 2**31, (index, width)
    return index


def _lists(pixels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(pixels, dtype=torch.int32),
            torch.tensor([len(pixels)], dtype=torch.int32))


def test_gather_conv1x1_reads_input_rows_past_2_to_the_32():
    b, h, w, k, n = 5, 256, 256, 2**14, 16
    x = _huge(b, h, w, k)
    rows = x.view(-1, k)
    low = [3, 7]  # where the high rows' offsets wrap to, without the int64 widening
    pixels = low + [_wrapping(WRAP // k + p, k) for p in low] + [_wrapping(b * h * w - 1, k)]
    g = torch.Generator().manual_seed(0)
    for p in pixels:
        rows[p] = torch.randn(k, generator=g).to(DTYPE)
    wt = (torch.randn(n, k, generator=g) / 64).to(DTYPE)
    bias = torch.randn(n, generator=g)
    idx, count = _lists(pixels)

    out = g_mod.gather_conv1x1(x, idx, count, wt, bias)

    got = torch.stack([out[p // (h * w), p % (h * w) // w + 1, p % w + 1] for p in pixels])
    ref = torch.relu(rows[idx.long()].double() @ wt.double().T + bias.double())
    assert_close(got, ref, name="gather_conv1x1 rows past 2^32")


def test_conv3x3_reads_buffer_cells_past_2_to_the_32():
    b, h, w, k, n = 5, 1022, 1022, 1024, 16  # buffer [5, 1024, 1024, 1024]
    buf = _huge(b, h + 2, w + 2, k)
    # output pixels (image, i, j): image 4's cells lie past 2^32 / K, and an int32 offset
    # wraps them onto the same (i, j) of image 0, which holds other data
    sites = [(0, 5, 9), (4, 5, 9), (4, 0, 0), (4, h - 1, w - 1), (1, 17, 3)]
    g = torch.Generator().manual_seed(1)
    for bi, i, j in sites:
        if bi == 4:
            _wrapping((bi * (h + 2) + i) * (w + 2) + j, k)
        buf[bi, i:i + 3, j:j + 3] = torch.randn(3, 3, k, generator=g).to(DTYPE)
    wt = (torch.randn(3, 3, k, n, generator=g) / 96).to(DTYPE)  # HWIO
    bias = torch.randn(n, generator=g)
    idx, count = _lists([(bi * h + i) * w + j for bi, i, j in sites])

    out = c3_mod.conv3x3(buf, idx, count, wt, bias, stride=1)

    ref = torch.stack([
        torch.einsum("yxk,yxkn->n", buf[bi, i:i + 3, j:j + 3].double(), wt.double())
        for bi, i, j in sites])
    assert_close(out, torch.relu(ref + bias.double()), name="conv3x3 cells past 2^32")


def test_conv1x1_residual_reads_and_writes_identity_rows_past_2_to_the_32(monkeypatch):
    b, h, w, k, n = 5, 1024, 1024, 48, 1024
    identity = _huge(b, h, w, n)
    # the output is as big: an uninitialised one, where the kernel writes the listed rows
    monkeypatch.setattr(res_mod, "_prefill", lambda ident, idx, count: torch.empty_like(ident))
    low = [11, 2**19 + 5]
    pixels = low + [_wrapping(WRAP // n + p, n) for p in low] + [_wrapping(b * h * w - 1, n)]
    ident_rows = identity.view(-1, n)
    g = torch.Generator().manual_seed(2)
    for p in pixels:
        ident_rows[p] = torch.randn(n, generator=g).to(DTYPE)
    a = torch.randn(len(pixels), k, generator=g).to(DTYPE)
    wt = (torch.randn(n, k, generator=g) / 8).to(DTYPE)
    bias = torch.randn(n, generator=g)
    idx, count = _lists(pixels)

    out = res_mod.conv1x1_residual(a, idx, count, wt, bias, identity)

    q = idx.long()
    ref = torch.relu(a.double() @ wt.double().T + bias.double() + ident_rows[q].double())
    assert_close(out.view(-1, n)[q], ref, name="conv1x1_residual rows past 2^32")
