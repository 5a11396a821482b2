"""The Triton kernels past 2³¹ elements: each widens a pixel, row or sample index to int64
before multiplying it by a stride, or an input of over 2³¹ elements would wrap.

The big tensors are ``torch.empty`` of over 2³² fp16 elements (8-10 GiB of address space
each, never touched as a whole: only the rows a test fills and the kernel reads or writes
take memory, a few tens of MiB). The spatial kernels' listed pixels sit where an int32
offset wraps back into the tensor (offsets in [2³², 2³² + 2³¹)); the channel and masker
kernels' inputs are views with one stride of 1.25·2³⁰, whose index 2 an int32 offset wraps 1.5·2³⁰
elements before the view's start, still inside its buffer. The wrapped offsets hit rows
whose data differs, so a kernel that lost a widening fails the comparison instead of
faulting. Run under the Triton interpreter, whose int32 arithmetic wraps as a GPU's does.
"""

import math

import pytest
import torch

from laudtriton.kernelchecks import _check_decisions
from laudtriton.kernels import channel_conv3x3 as cc
from laudtriton.kernels import channel_gemm as cg
from laudtriton.kernels import conv1x1_residual as res_mod
from laudtriton.kernels import conv3x3 as c3_mod
from laudtriton.kernels import gather_conv as g_mod
from laudtriton.kernels import maskers as mk
from laudtriton.testing import assert_close

WRAP = 2**32
DTYPE = torch.float16
FAR = 5 * 2**28  # 1.25·2³⁰, an int32 stride: index 2 along it lies 2.5·2³⁰ elements out,
START = 3 * 2**29  # which an int32 wraps to -1.5·2³⁰: where the far views start


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
    out = _huge(b, h, w, n)
    monkeypatch.setattr(res_mod, "_prefill", lambda ident, idx, count: out)
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

    assert res_mod.conv1x1_residual(a, idx, count, wt, bias, identity) is out

    q = idx.long()
    ref = torch.relu(a.double() @ wt.double().T + bias.double() + ident_rows[q].double())
    assert_close(out.view(-1, n)[q], ref, name="conv1x1_residual rows past 2^32")


def _nhwc_far(far: str, c: int) -> tuple[tuple[int, int, int, int], int]:
    """(shape, dim) of an NHWC input of ``c`` channels with 3 indices along the far dim."""
    return {"batch": ((3, 2, 2, c), 0), "height": ((1, 3, 2, c), 1),
            "width": ((1, 1, 3, c), 2)}[far]


def _far_view(buf: torch.Tensor, shape: tuple[int, ...], far: int, shift: int = 0):
    """A view of the 1-D ``buf`` of ``shape``, starting at START + shift, contiguous but
    along dim ``far``, whose stride is FAR (the dims before it have size 1), filled with
    random values."""
    assert all(size == 1 for size in shape[:far]), shape
    strides = [0] * len(shape)
    strides[far] = FAR
    for d in range(len(shape) - 1, far, -1):
        strides[d] = math.prod(shape[d + 1:])
    view = buf.as_strided(shape, strides, START + shift)
    view.copy_(torch.randn(shape, generator=torch.Generator().manual_seed(far + shift)))
    return view


@pytest.mark.parametrize("far", ["batch", "rows"])
def test_channel_gemm_reads_input_and_residual_past_2_to_the_31(far):
    k, n = 32, 48
    shape, dim = {"batch": ((3, 2, k), 0), "rows": ((1, 3, k), 1)}[far]
    step = math.prod(shape[dim + 1:])  # x's elements per index of the far dim
    buf = _huge(START + 2 * FAR + step + step // k * n)  # x's rows, then the residual's
    x = _far_view(buf, shape, dim)
    residual = _far_view(buf, shape[:-1] + (n,), dim, shift=step)  # beside x's rows
    g = torch.Generator().manual_seed(3)
    wt = (torch.randn(n, k, generator=g) / 8).to(DTYPE)
    bias = torch.randn(n, generator=g)

    y = cg.channel_gemm(x, wt, bias, residual=residual, relu=True)

    ref = cg.channel_gemm_torch(x, wt, bias, residual=residual, relu=True)
    assert_close(y, ref, name=f"channel_gemm, {far} past 2^31")


@pytest.mark.parametrize("far", ["batch", "height", "width"])
def test_channel_conv3x3_reads_input_past_2_to_the_31(far):
    k = n = 16
    shape, dim = _nhwc_far(far, k)
    buf = _huge(START + 2 * FAR + math.prod(shape[dim + 1:]))
    x = _far_view(buf, shape, dim)
    g = torch.Generator().manual_seed(4)
    wt = (torch.randn(n, k, 3, 3, generator=g) / 12).to(DTYPE)
    bias = torch.randn(n, generator=g)
    idx = torch.arange(k, dtype=torch.int32).repeat(shape[0], 1)  # every channel on
    count = torch.full((shape[0],), k, dtype=torch.int32)
    kw = dict(in_idx=idx, n_in=count, out_idx=idx, n_out=count, relu=True)

    y = cc.channel_conv3x3(x, wt, bias, **kw)

    assert_close(y, cc.channel_conv3x3_torch(x, wt, bias, **kw),
                 name=f"channel_conv3x3, {far} past 2^31")


@pytest.mark.parametrize("far", ["batch", "height", "width"])
@pytest.mark.parametrize("masker", ["spatial", "channel"])
def test_maskers_read_input_past_2_to_the_31(masker, far):
    c = 24
    shape, dim = _nhwc_far(far, c)
    buf = _huge(START + 2 * FAR + math.prod(shape[dim + 1:]))
    x = _far_view(buf, shape, dim)
    g = torch.Generator().manual_seed(5)
    if masker == "spatial":  # one cell per pixel: every pixel's read decides a logit
        args = (torch.randn(2, c, generator=g), torch.randn(2, generator=g), shape[1:3])
        run, ref = mk.spatial_masker, mk.spatial_masker_torch
    else:
        args = ([(torch.randn(8, c, generator=g), torch.randn(8, generator=g))],)
        run, ref = mk.channel_masker_mlp, mk.channel_masker_mlp_torch

    mask, logits = run(x, *args)

    assert_close(logits, ref(x, *args)[1], name=f"{masker} masker logits, {far} past 2^31")
    # the decisions of its own logits (a near-tie with the reference's may go either way)
    _check_decisions(mask, logits.unsqueeze(2) if masker == "spatial" else logits, masker)
