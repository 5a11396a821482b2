"""Channel-sliced 3x3 convolution (conv2 of a channel-skipping block) over per-sample
active channel lists, as an implicit GEMM (DESIGN.md 2-4). Layout, lists, configs and the
fp32 ``ieee`` rule are those of ``kernels.channel_gemm``; the κ1 correction comes in as 9
per-sample tap vectors (``ops.kappa.conv2_taps``) added where the tap reads inside the
image.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .aot import AOTSpec, interpreting
from .channel_gemm import (
    DTYPES,
    IDX_ARGS,
    GemmConfig,
    aot_variants,
    bias_2d,
    check_index_lists,
    check_tensor,
    dot_acc,
    resolve_config,
)
from .tiles import int_stride, launch


@triton.jit
def _channel_conv3x3_kernel(
    x_ptr,  # [B, H, W, CX] compact input (column k = k-th active input channel)
    w_ptr,  # [3, 3, NW, KW] weight, tap-major (dy, dx, out, in)
    bias_ptr,  # [B or 1, NW] bias indexed by output channel (stride_bb = 0: shared)
    taps_ptr,  # [B, 9, NW] fp32 κ1 response per tap t = 3·dy + dx (KAPPA only)
    y_ptr,  # [B, Ho, Wo, CY] compact output (column j = j-th active output channel)
    in_idx_ptr, n_in_ptr,  # [B, LI] int32, [B] int32
    out_idx_ptr, n_out_ptr,  # [B, LO] int32, [B] int32
    H, W, Ho, Wo, STRIDE,  # STRIDE: 1 or 2 (the JIT makes 1 a constant: two compiles)
    stride_xb, stride_xh, stride_xw, stride_xk, stride_wy, stride_wx, stride_wn, stride_wk,
    stride_bb, stride_tb, stride_tt, stride_tn, stride_yb, stride_yh, stride_yw, stride_yn,
    stride_ib, stride_ob,
    KAPPA: tl.constexpr, RELU: tl.constexpr, IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n_b = tl.load(n_out_ptr + b)
    if pid_n * BLOCK_N < n_b:
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_p = offs_p < Ho * Wo
        mask_n = offs_n < n_b
        oy = offs_p // Wo
        ox = offs_p % Wo
        rows = tl.load(out_idx_ptr + b * stride_ob + offs_n, mask=mask_n, other=0)
        k_b = tl.load(n_in_ptr + b)
        acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for t in range(9):  # a loop, not unrolled: 9 pipelined K loops compile 10x slower
            iy = oy * STRIDE + (t // 3 - 1)
            ix = ox * STRIDE + (t % 3 - 1)
            inside = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)  # zero padding outside
            valid = mask_p & inside
            x_rows = (x_ptr + b * stride_xb + iy.to(tl.int64)[:, None] * stride_xh
                      + ix.to(tl.int64)[:, None] * stride_xw)
            w_tap = w_ptr + (t // 3) * stride_wy + (t % 3) * stride_wx
            for k0 in range(0, k_b, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mask_k = offs_k < k_b
                cols = tl.load(in_idx_ptr + b * stride_ib + offs_k, mask=mask_k, other=0)
                a = tl.load(x_rows + offs_k[None, :] * stride_xk,
                            mask=valid[:, None] & mask_k[None, :], other=0.0)
                wt = tl.load(w_tap + cols[:, None] * stride_wk + rows[None, :] * stride_wn,
                             mask=mask_k[:, None] & mask_n[None, :], other=0.0)
                acc = dot_acc(a, wt, acc, UPCAST, IEEE)
            if KAPPA:  # inactive inputs carry κ1 inside the image, 0 in the padding
                tap = tl.load(taps_ptr + b * stride_tb + t * stride_tt + rows * stride_tn,
                              mask=mask_n, other=0.0)
                acc += tl.where(inside[:, None], tap.to(tl.float32)[None, :], 0.0)
        bias = tl.load(bias_ptr + b * stride_bb + rows, mask=mask_n, other=0.0)
        acc += bias.to(tl.float32)[None, :]
        if RELU:
            acc = tl.maximum(acc, 0.0)
        y = (y_ptr + b * stride_yb + oy.to(tl.int64)[:, None] * stride_yh
             + ox.to(tl.int64)[:, None] * stride_yw)
        tl.store(y + offs_n[None, :] * stride_yn, acc.to(y_ptr.dtype.element_ty),
                 mask=mask_p[:, None] & mask_n[None, :])


def channel_conv3x3(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, *,
                    in_idx: torch.Tensor, n_in: torch.Tensor, out_idx: torch.Tensor,
                    n_out: torch.Tensor, taps: torch.Tensor | None = None, stride: int = 1,
                    relu: bool = False, config: GemmConfig | dict | None = None,
                    validate: bool = True) -> torch.Tensor:
    """3x3 conv (padding 1, stride 1 or 2) over active channels, as an implicit GEMM.

    x: [B, H, W, CX] compact NHWC (column k = channel in_idx[b, k], k < n_in[b]);
    w: [NW, KW, 3, 3] any strides (a tap-major copy, ``w.permute(2, 3, 0, 1).contiguous()``
    viewed back, loads coalesced); bias: [NW] or [B, NW]; in_idx/out_idx: [B, L] int32,
    n_in/n_out: [B] int32; taps: [B, 9, NW] (tap t = 3·dy + dx) added at every output
    whose tap reads inside the image (the κ1 correction; ``ops.kappa.conv2_taps``).
    Returns y [B, Ho, Wo, LO] compact in x's dtype; columns past n_out[b] unwritten.

    Raises:
        ValueError: as ``channel_gemm``, and for a stride other than 1 or 2.
    """
    check_tensor("x", x, 4, DTYPES, None)
    cfg = resolve_config(config, x.dtype)
    dev = x.device
    check_tensor("w", w, 4, (x.dtype,), dev, last_contig=False)
    s = int_stride(stride)
    if s is None:
        raise ValueError(f"stride must be 1 or 2, got {stride!r} (accepted: the int 1 or 2)")
    stride = s
    batch, h, wd, kx = x.shape
    nw, kw = w.shape[:2]
    if tuple(w.shape[2:]) != (3, 3):
        raise ValueError(f"w must be [NW, KW, 3, 3], got {tuple(w.shape)}")
    check_index_lists("in", in_idx, n_in, batch, kw, dev, validate)
    check_index_lists("out", out_idx, n_out, batch, nw, dev, validate)
    if kx != in_idx.shape[1]:
        raise ValueError(f"compact x has {kx} columns; in_idx has {in_idx.shape[1]}")
    bias = bias_2d(bias, batch, nw, dev)
    if taps is not None:
        check_tensor("taps", taps, 3, DTYPES, dev)
        if tuple(taps.shape) != (batch, 9, nw):
            raise ValueError(f"taps has shape {tuple(taps.shape)}, expected {(batch, 9, nw)}")
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    lo = out_idx.shape[1]
    y = torch.empty(batch, ho, wo, lo, device=dev, dtype=x.dtype)
    if batch == 0 or lo == 0:
        return y
    t = taps if taps is not None else y
    grid = (triton.cdiv(ho * wo, cfg.block_p), triton.cdiv(lo, cfg.block_n), batch)
    launch(
        _channel_conv3x3_kernel, grid, x, "channel_conv3x3",
        x, w, bias, t, y, in_idx, n_in, out_idx, n_out, h, wd, ho, wo, stride,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        w.stride(2), w.stride(3), w.stride(0), w.stride(1),
        bias.stride(0) if bias.shape[0] > 1 else 0,
        t.stride(0), t.stride(1), t.stride(2), y.stride(0), y.stride(1), y.stride(2),
        y.stride(3), in_idx.stride(0), out_idx.stride(0),
        KAPPA=taps is not None, RELU=relu, IEEE=x.dtype == torch.float32,
        UPCAST=interpreting() and x.dtype == torch.bfloat16,
        BLOCK_P=cfg.block_p, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return y


# -- torch reference (float64) ----------------------------------------------------------
def channel_conv3x3_torch(x, w, bias, *, in_idx, n_in, out_idx, n_out, taps=None, stride=1,
                          relu=False, **_) -> torch.Tensor:
    """Reference of ``channel_conv3x3`` in float64; unwritten output columns are NaN.
    With no input channels (n_in[b] = 0) the listed outputs are their bias (+ taps, ReLU),
    as the kernel gives; an empty map gives an empty output."""
    batch, h, wd, _ = x.shape
    nw = w.shape[0]
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    bias = bias.double().reshape(-1, nw).expand(batch, nw)
    y = torch.full((batch, ho, wo, out_idx.shape[1]), float("nan"), dtype=torch.float64,
                   device=x.device)
    inside = torch.ones(1, 1, h, wd, dtype=torch.float64, device=x.device)
    for b in range(batch):
        ci, co = in_idx[b, : int(n_in[b])].long(), out_idx[b, : int(n_out[b])].long()
        if co.numel() == 0 or ho * wo == 0:  # nothing to write (conv2d refuses a 0-row map)
            continue
        xb = x[b, :, :, : ci.numel()].double().permute(2, 0, 1)[None]
        wb = w.double()[co][:, ci]
        if ci.numel() == 0:  # one zero channel: conv2d over none returns no output channels
            xb, wb = xb.new_zeros(1, 1, h, wd), wb.new_zeros(co.numel(), 1, 3, 3)
        yb = torch.nn.functional.conv2d(xb, wb, bias[b, co], stride, 1)
        if taps is not None:  # tap t counts where the shifted read stays inside the image
            for t in range(9):
                k = torch.zeros(1, 1, 3, 3, dtype=torch.float64, device=x.device)
                k[0, 0, t // 3, t % 3] = 1.0
                valid = torch.nn.functional.conv2d(inside, k, None, stride, 1)
                yb = yb + valid * taps[b, t, co].double()[None, :, None, None]
        yb = yb[0].permute(1, 2, 0)
        y[b, :, :, : co.numel()] = yb.clamp_min(0) if relu else yb
    return y


# -- ahead-of-time compilation -----------------------------------------------------------
def aot_specs() -> list[AOTSpec]:
    """``channel_conv3x3`` with the κ1 taps, in every build of ``aot_variants``."""
    args = ["x_ptr", "w_ptr", "bias_ptr", "taps_ptr", "y_ptr"]
    ints = ["H", "W", "Ho", "Wo", "STRIDE"] + [
        f"stride_{s}" for s in ("xb", "xh", "xw", "xk", "wy", "wx", "wn", "wk", "bb", "tb",
                                "tt", "tn", "yb", "yh", "yw", "yn", "ib", "ob")]
    specs = []
    for d, tag, common, opts in aot_variants():
        sig = {a: f"*{d}" for a in args} | {a: "*i32" for a in IDX_ARGS}
        sig |= {a: "i32" for a in ints}
        sig["bias_ptr"] = sig["taps_ptr"] = "*fp32"
        consts = {"KAPPA": True, "stride_tn": 1, "stride_wk": 1} | common
        specs.append(AOTSpec(f"channel_conv3x3[{d},{tag}]", _channel_conv3x3_kernel, sig,
                             consts, **opts))
    return specs
