"""1x1 conv GEMM over the active rows with a fused epilogue (conv3 of the spatial
variants): + bias, + residual gathered at the same pixel, ReLU, scattered into the
output, which holds relu(identity) everywhere else.

For every row r < count, q = idx[r] (flat b·Ho·Wo + i·Wo + j):
    out[q, :] = relu(a[r, :] @ w.T + bias + identity[q, :])
and out[q', :] = relu(identity[q', :]) at every other pixel q' (DESIGN.md section 2:
inactive positions output relu(identity) exactly).
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
from .tiles import launch, rows_dot, tile_offsets

__all__ = ["DEFAULT", "DEFAULT_FP32", "TileConfig", "aot_specs", "configs", "conv1x1_residual",
           "conv1x1_residual_torch"]


def configs() -> list[TileConfig]:
    """Config space of the residual kernel (the shared spatial GEMM space)."""
    return list(SPACE)


@triton.jit
def _conv1x1_residual_kernel(
    a_ptr,  # [L, K] conv2 output rows, row r for pixel idx[r]
    idx_ptr,  # [L] int32 flat output pixels b·Ho·Wo + i·Wo + j
    count_ptr,  # [1] int32 number of valid entries of idx
    w_ptr,  # [N, K] conv3 weight (BN folded)
    b_ptr,  # [N] bias
    id_ptr,  # [B·Ho·Wo, N] identity (x or the downsample output), NHWC
    out_ptr,  # [B·Ho·Wo, N] output, NHWC, relu(identity) outside the list
    K, N,
    UPCAST: tl.constexpr,  # upcast dot operands to fp32 (bf16 under the interpreter)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n_rows = tl.load(count_ptr)
    if tl.program_id(0) * BLOCK_M >= n_rows:  # tiles past the count exit at once (masked variant)
        return
    offs_m, offs_n, offs_k, m_mask, n_mask = tile_offsets(n_rows, N, BLOCK_M, BLOCK_N,
                                                          BLOCK_K)
    rows = offs_m.to(tl.int64)
    acc = rows_dot(a_ptr, rows, m_mask, w_ptr, offs_n, n_mask, offs_k, K, UPCAST, BLOCK_M,
                   BLOCK_N, BLOCK_K)
    q = tl.load(idx_ptr + offs_m, mask=m_mask, other=0).to(tl.int64)
    mn_mask = m_mask[:, None] & n_mask[None, :]
    off = q[:, None] * N + offs_n[None, :]
    bias = tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    res = tl.load(id_ptr + off, mask=mn_mask, other=0.0).to(tl.float32)
    acc = tl.maximum(acc + bias[None, :] + res, 0.0)
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=mn_mask)


def _prefill(identity: torch.Tensor, idx: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """relu(identity), the output at every pixel the kernel does not write (tests replace
    this to poison the listed pixels)."""
    return torch.relu(identity)


def conv1x1_residual(a: torch.Tensor, idx: torch.Tensor, count: torch.Tensor,
                     w: torch.Tensor, b: torch.Tensor, identity: torch.Tensor,
                     config: TileConfig | None = None, validate: bool = True) -> torch.Tensor:
    """relu(a @ w.T + b + identity[idx]) scattered into relu(identity).

    a: [L, K] contiguous rows (row r belongs to pixel idx[r]). idx: [L] int32 flat output
    pixels b·Ho·Wo + i·Wo + j; only idx[:count] are used. count: [1] int32 on the device
    (read by the kernel). w: [N, K] a's dtype. b: [N] fp32/fp16/bf16.
    identity: [B, Ho, Wo, N] contiguous NHWC, a's dtype. config: TileConfig (None:
    ``default_config(a.dtype)``). validate: check count and index ranges (host syncs).

    Returns out [B, Ho, Wo, N] NHWC of a's dtype.

    Raises:
        ValueError: on a wrong shape, dtype, device, non-contiguous tensor, or (validate)
            a count or index out of range.
    """
    check_tensor("a", a, (None, None), DTYPES)
    cfg = config or default_config(a.dtype)
    rows, k = a.shape
    check_tensor("w", w, (None, k), (a.dtype,), a.device)
    n = w.shape[0]
    check_tensor("b", b, (n,), DTYPES, a.device)
    check_tensor("identity", identity, (None, None, None, n), (a.dtype,), a.device)
    check_tensor("idx", idx, (rows,), (torch.int32,), a.device)
    check_index(idx, count, identity.shape[0] * identity.shape[1] * identity.shape[2],
                a.device, validate)
    out = _prefill(identity, idx, count)
    if rows == 0:
        return out
    grid = (triton.cdiv(rows, cfg.block_m), triton.cdiv(n, cfg.block_n))
    launch(
        _conv1x1_residual_kernel, grid, a, "conv1x1_residual",
        a, idx, count, w, b, identity, out, k, n,
        UPCAST=interpreter_upcast(a.dtype),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def conv1x1_residual_torch(a: torch.Tensor, idx: torch.Tensor, count: torch.Tensor,
                           w: torch.Tensor, b: torch.Tensor,
                           identity: torch.Tensor) -> torch.Tensor:
    """Reference of :func:`conv1x1_residual` in float64: out [B, Ho, Wo, N] float64."""
    c = int(count.item())
    q = idx[:c].long()
    out = torch.relu(identity.double()).flatten(0, 2)  # [B·Ho·Wo, N], N = 0 included
    ident = identity.double().flatten(0, 2)
    out[q] = torch.relu(a[:c].double() @ w.double().T + b.double() + ident[q])
    return out.reshape(identity.shape)


def aot_specs() -> list[AOTSpec]:
    """The residual kernel x ``aot_plan()`` (dtype, config) pairs for ahead-of-time compiles."""
    return stage_aot_specs("conv1x1_residual", _conv1x1_residual_kernel,
                           "a_ptr idx_ptr count_ptr w_ptr b_ptr id_ptr out_ptr K N")
