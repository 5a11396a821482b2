"""Implicit-GEMM 3x3 conv + bias + ReLU over a list of active output pixels (conv2 of the
spatial variants), reading the zero-bordered conv1 buffer with its halo.

For every listed output pixel q (flat b·Ho·Wo + i·Wo + j), row r of the output:
    out[r, :] = relu(Σ_{ty,tx} buf[b, i·s + ty, j·s + tx, :] @ w[ty, tx] + bias)
The buffer is padded by one pixel, so tap (ty, tx) of output (i, j) is buffer cell
(i·s + ty, j·s + tx) and never leaves it: no bounds test on the halo, and the padding
reads the zeros the gather kernel left there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .aot import AOTSpec
from .gather_conv import (
    DEFAULT,
    DEFAULT_FP32,
    DTYPES,
    SPACE,
    TileConfig,
    check_index,
    check_tensor,
    default_config,
    interpreter_upcast,
    stage_aot_specs,
)
from .tiles import int_stride, launch, tile_offsets

__all__ = ["DEFAULT", "DEFAULT_FP32", "TileConfig", "aot_specs", "configs", "conv3x3",
           "conv3x3_torch", "hwio"]


def configs() -> list[TileConfig]:
    """Config space of the 3x3 kernel (the shared spatial GEMM space)."""
    return list(SPACE)


def hwio(w: torch.Tensor) -> torch.Tensor:
    """[Cout, Cin, 3, 3] (torch layout) -> [3, 3, Cin, Cout] contiguous (the kernel's)."""
    return w.permute(2, 3, 1, 0).contiguous()


@triton.jit
def _conv3x3_kernel(
    buf_ptr,  # [B, H+2, W+2, K] zero-bordered input
    idx_ptr,  # [L] int32 flat output pixels b·Ho·Wo + i·Wo + j
    count_ptr,  # [1] int32 number of valid entries of idx
    w_ptr,  # [3, 3, K, N] weight (HWIO, BN folded)
    b_ptr,  # [N] bias
    out_ptr,  # [L, N] output rows, row r for pixel idx[r]
    H, W, Ho, Wo, K, N, stride,
    UPCAST: tl.constexpr,  # upcast dot operands to fp32 (bf16 under the interpreter)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n_rows = tl.load(count_ptr)
    if tl.program_id(0) * BLOCK_M >= n_rows:  # tiles past the count exit at once (masked variant)
        return
    offs_m, offs_n, offs_k, m_mask, n_mask = tile_offsets(n_rows, N, BLOCK_M, BLOCK_N,
                                                          BLOCK_K)
    q = tl.load(idx_ptr + offs_m, mask=m_mask, other=0).to(tl.int64)
    hw = Ho * Wo
    bi = q // hw
    rem = q - bi * hw
    i = rem // Wo
    j = rem - i * Wo
    base = (bi * (H + 2) + i * stride) * (W + 2) + j * stride  # buffer cell of tap (0, 0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for ty in tl.static_range(3):
        for tx in tl.static_range(3):
            row = base + ty * (W + 2) + tx
            for k0 in range(0, K, BLOCK_K):
                k = k0 + offs_k
                k_mask = k < K
                a = tl.load(buf_ptr + row[:, None] * K + k[None, :],
                            mask=m_mask[:, None] & k_mask[None, :], other=0.0)
                wk = ((ty * 3 + tx) * K + k).to(tl.int64)
                b = tl.load(w_ptr + wk[:, None] * N + offs_n[None, :],
                            mask=k_mask[:, None] & n_mask[None, :], other=0.0)
                if UPCAST:
                    a = a.to(tl.float32)
                    b = b.to(tl.float32)
                acc = tl.dot(a, b, acc, input_precision="ieee")
    bias = tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    acc = tl.maximum(acc + bias[None, :], 0.0)
    tl.store(out_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def _alloc_rows(rows: int, n: int, dtype, device) -> torch.Tensor:
    """The output rows (tests replace this to poison them)."""
    return torch.empty(rows, n, dtype=dtype, device=device)


def conv3x3(buf: torch.Tensor, idx: torch.Tensor, count: torch.Tensor, w: torch.Tensor,
            b: torch.Tensor, stride: int, config: TileConfig | None = None,
            validate: bool = True) -> torch.Tensor:
    """relu(conv3x3(buf, stride, no extra padding) + b) at the listed output pixels.

    buf: [B, H+2, W+2, K] contiguous zero-bordered NHWC (from ``gather_conv1x1``).
    idx: [L] int32 flat output pixels b·Ho·Wo + i·Wo + j, Ho = ⌊(H−1)/s⌋+1; only
    idx[:count] are used. count: [1] int32 on the device (read by the kernel).
    w: [3, 3, K, N] contiguous (``hwio(w2)``), buf's dtype. b: [N] fp32/fp16/bf16.
    stride: 1 or 2. config: TileConfig (None: ``default_config(buf.dtype)``).
    validate: check count and index ranges (host syncs).

    Returns rows [L, N] of buf's dtype; row r < count is output pixel idx[r], rows from
    count on are not written.

    Raises:
        ValueError: on a wrong shape, dtype, device, stride, non-contiguous tensor, or
            (validate) a count or index out of range.
    """
    check_tensor("buf", buf, (None, None, None, None), DTYPES)
    cfg = config or default_config(buf.dtype)
    bsz, hp, wp, k = buf.shape
    if hp < 3 or wp < 3:
        raise ValueError(f"buf has spatial size {hp}x{wp}; a bordered buffer is >= 3x3")
    s = int_stride(stride)
    if s is None:
        raise ValueError(f"stride is {stride!r}; accepted the int 1 or 2")
    stride = s
    h, wd = hp - 2, wp - 2
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    check_tensor("w", w, (3, 3, k, None), (buf.dtype,), buf.device)
    n = w.shape[3]
    check_tensor("b", b, (n,), DTYPES, buf.device)
    check_index(idx, count, bsz * ho * wo, buf.device, validate)
    out = _alloc_rows(idx.shape[0], n, buf.dtype, buf.device)
    if idx.shape[0] == 0:
        return out
    grid = (triton.cdiv(idx.shape[0], cfg.block_m), triton.cdiv(n, cfg.block_n))
    launch(
        _conv3x3_kernel, grid, buf, "conv3x3",
        buf, idx, count, w, b, out, h, wd, ho, wo, k, n, stride,
        UPCAST=interpreter_upcast(buf.dtype),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def conv3x3_torch(buf: torch.Tensor, idx: torch.Tensor, count: torch.Tensor, w: torch.Tensor,
                  b: torch.Tensor, stride: int) -> torch.Tensor:
    """Reference of :func:`conv3x3` in float64: rows [count, N] float64 (relu(b) with no
    input channels, K = 0)."""
    c = int(count.item())
    x, wt = buf.double().permute(0, 3, 1, 2), w.double().permute(3, 2, 0, 1)
    if x.shape[1] == 0:  # one zero channel: conv2d over none returns no output channels
        x, wt = x.new_zeros(x.shape[0], 1, *x.shape[2:]), wt.new_zeros(wt.shape[0], 1, 3, 3)
    dense = torch.nn.functional.conv2d(x, wt, b.double(), stride=stride)
    rows = dense.permute(0, 2, 3, 1).reshape(-1, w.shape[3])
    return torch.relu(rows[idx[:c].long()])


def aot_specs() -> list[AOTSpec]:
    """The 3x3 kernel x ``aot_plan()`` (dtype, config) pairs for ahead-of-time compiles."""
    return stage_aot_specs("conv3x3", _conv3x3_kernel,
                           "buf_ptr idx_ptr count_ptr w_ptr b_ptr out_ptr H W Ho Wo K N stride")
