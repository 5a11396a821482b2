"""Fused maskers (DESIGN.md section 2): exactly the eval semantics of
``laudtriton.nn.maskers``, computed in fp32 on NHWC input.

- spatial masker / layer gate: adaptive average pool to the grid (cell (u, v) covers rows
  [⌊u·H/gh⌋, ⌈(u+1)·H/gh⌉), PyTorch's rule) + 1x1 conv with bias to 2 logits + compare
  (mask = logit0 >= logit1), in one kernel: one program per (cell, sample);
- channel MLP masker: global average pool (programs per channel block and sample), then
  one launch per linear layer; the last one computes the pairs (g, G + g) and compares.

Logits are fp32 whatever the input dtype; a half-precision reference that rounds the
logits to fp16 can disagree on near-ties (|logit0 − logit1| at the rounding level).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .aot import AOTSpec
from .channel_gemm import DTYPE_NAMES, DTYPES, check_tensor
from .tiles import check_launch_config, launch


@dataclass(frozen=True)
class MaskerConfig:
    """block_pix pixels x block_c channels per pooling tile; block_n x block_k per MLP tile."""

    block_pix: int = 16
    block_c: int = 64
    block_n: int = 32
    block_k: int = 64
    num_warps: int = 4

    def __post_init__(self):
        check_launch_config(self, ("block_pix", "block_c", "block_n", "block_k"))


DEFAULT = MaskerConfig()
CONFIGS = (DEFAULT, MaskerConfig(64, 64, 32, 128, 4), MaskerConfig(16, 128, 64, 64, 8))


@triton.jit
def _spatial_masker_kernel(
    x_ptr,  # [B, H, W, C] input (NHWC, any float dtype)
    w_ptr,  # [2, C] 1x1 conv weight
    b_ptr,  # [2] conv bias
    logits_ptr,  # [B, 2, GH, GW] fp32 output (contiguous)
    mask_ptr,  # [B, GH, GW] fp32 output (contiguous): 1.0 where logit0 >= logit1
    H, W, C, GH, GW,
    stride_xb, stride_xh, stride_xw, stride_xc, stride_wo, stride_wc,
    BLOCK_PIX: tl.constexpr, BLOCK_C: tl.constexpr,
):
    cell = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    u = cell // GW
    v = cell % GW
    y0 = (u * H) // GH
    y1 = ((u + 1) * H + GH - 1) // GH
    x0 = (v * W) // GW
    x1 = ((v + 1) * W + GW - 1) // GW
    cw = x1 - x0
    npix = (y1 - y0) * cw
    acc0 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        s = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for t0 in range(0, npix, BLOCK_PIX):
            t = t0 + tl.arange(0, BLOCK_PIX)
            yy = (y0 + t // cw).to(tl.int64)
            xx = (x0 + t % cw).to(tl.int64)
            ptr = (x_ptr + b * stride_xb + yy[:, None] * stride_xh + xx[:, None] * stride_xw
                   + offs_c[None, :] * stride_xc)
            tile = tl.load(ptr, mask=(t < npix)[:, None] & mask_c[None, :], other=0.0)
            s += tl.sum(tile.to(tl.float32), axis=0)
        w0 = tl.load(w_ptr + offs_c * stride_wc, mask=mask_c, other=0.0).to(tl.float32)
        w1 = tl.load(w_ptr + stride_wo + offs_c * stride_wc, mask=mask_c, other=0.0)
        acc0 += s * w0
        acc1 += s * w1.to(tl.float32)
    ncell = GH * GW
    l0 = tl.sum(acc0, axis=0) / npix + tl.load(b_ptr).to(tl.float32)
    l1 = tl.sum(acc1, axis=0) / npix + tl.load(b_ptr + 1).to(tl.float32)
    tl.store(logits_ptr + b * 2 * ncell + cell, l0)
    tl.store(logits_ptr + b * 2 * ncell + ncell + cell, l1)
    tl.store(mask_ptr + b * ncell + cell, (l0 >= l1).to(tl.float32))


@triton.jit
def _global_pool_kernel(
    x_ptr,  # [B, H, W, C] input (NHWC)
    y_ptr,  # [B, C] fp32 output (contiguous): channel means
    H, W, C, stride_xb, stride_xh, stride_xw, stride_xc,
    BLOCK_PIX: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    s = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for t0 in range(0, H * W, BLOCK_PIX):
        t = t0 + tl.arange(0, BLOCK_PIX)
        yy = (t // W).to(tl.int64)
        xx = (t % W).to(tl.int64)
        ptr = (x_ptr + b * stride_xb + yy[:, None] * stride_xh + xx[:, None] * stride_xw
               + offs_c[None, :] * stride_xc)
        tile = tl.load(ptr, mask=(t < H * W)[:, None] & mask_c[None, :], other=0.0)
        s += tl.sum(tile.to(tl.float32), axis=0)
    tl.store(y_ptr + b * C + offs_c, s / (H * W), mask=mask_c)


@triton.jit
def _mlp_layer_kernel(
    v_ptr,  # [B, K] fp32 input vectors (contiguous)
    w_ptr,  # [N, K] or, with COMPARE, [2N, K] linear weight
    b_ptr,  # [N] or [2N] bias
    y_ptr,  # [B, N] fp32 output, or with COMPARE the logits [B, 2N] (contiguous)
    mask_ptr,  # [B, N] fp32 (COMPARE only): 1.0 where logit[n] >= logit[N + n]
    K, N, stride_wn, stride_wk,
    RELU: tl.constexpr, COMPARE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        v = tl.load(v_ptr + b * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        m2 = mask_n[:, None] & mask_k[None, :]
        ptr = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk
        w0 = tl.load(ptr, mask=m2, other=0.0).to(tl.float32)
        acc0 += tl.sum(w0 * v[None, :], axis=1)
        if COMPARE:
            w1 = tl.load(ptr + N * stride_wn, mask=m2, other=0.0).to(tl.float32)
            acc1 += tl.sum(w1 * v[None, :], axis=1)
    acc0 += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if COMPARE:
        acc1 += tl.load(b_ptr + N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        tl.store(y_ptr + b * 2 * N + offs_n, acc0, mask=mask_n)
        tl.store(y_ptr + b * 2 * N + N + offs_n, acc1, mask=mask_n)
        tl.store(mask_ptr + b * N + offs_n, (acc0 >= acc1).to(tl.float32), mask=mask_n)
    else:
        if RELU:
            acc0 = tl.maximum(acc0, 0.0)
        tl.store(y_ptr + b * N + offs_n, acc0, mask=mask_n)


def _check_x(x: torch.Tensor) -> None:
    check_tensor("x", x, 4, DTYPES, None, last_contig=True)
    if 0 in x.shape[1:]:
        raise ValueError(f"x has an empty spatial or channel dim: shape {tuple(x.shape)}")


def _grid_pair(grid, h: int, w: int) -> tuple[int, int]:
    """(gh, gw) as Python ints: two ints (Python, NumPy or integer tensors), neither a
    bool, in [1, h] x [1, w]; else a ValueError naming the grid (a float failed in
    torch.empty, a NumPy int or a tensor in the kernel)."""
    try:
        gh, gw = grid
        if isinstance(gh, bool) or isinstance(gw, bool):
            raise TypeError
        gh, gw = operator.index(gh), operator.index(gw)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be two ints (gh, gw), got {grid!r}") from None
    if not (1 <= gh <= h and 1 <= gw <= w):
        raise ValueError(f"grid {(gh, gw)} must lie in [1, {h}] x [1, {w}] for a {h}x{w} map")
    return gh, gw


def _check_linear(name, w, b, k, device, rows=None):
    check_tensor(f"{name} weight", w, 2, DTYPES, device, last_contig=False)
    check_tensor(f"{name} bias", b, 1, DTYPES, device)
    if w.shape[1] != k or b.shape[0] != w.shape[0] or (rows is not None and w.shape[0] != rows):
        want = f"[{rows if rows is not None else 'N'}, {k}]"
        raise ValueError(f"{name} weight {tuple(w.shape)} / bias {tuple(b.shape)}: expected "
                         f"weight {want} and a matching bias")


def spatial_masker(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   grid: tuple[int, int], config: MaskerConfig | None = None):
    """Fused spatial masker / layer gate (eval).

    x: [B, H, W, C] NHWC (fp32/fp16/bf16); weight: [2, C] or [2, C, 1, 1]; bias: [2];
    grid: (gh, gw), two ints (Python, NumPy or integer tensors) with 1 <= gh <= H,
    1 <= gw <= W ((1, 1): the layer gate).
    Returns (mask [B, 1, gh, gw] fp32 0/1, logits [B, 2, gh, gw] fp32).

    Raises:
        ValueError: on wrong dims/dtypes/devices, a non-contiguous channel dim, weight or
            bias shapes that do not match C, or a grid that is not two ints in
            [1, H] x [1, W].
    """
    cfg = config or DEFAULT
    _check_x(x)
    b, h, w, c = x.shape
    weight = weight.reshape(weight.shape[0], -1) if weight.dim() == 4 else weight
    _check_linear("spatial masker", weight, bias, c, x.device, rows=2)
    gh, gw = _grid_pair(grid, h, w)
    logits = torch.empty(b, 2, gh, gw, device=x.device, dtype=torch.float32)
    mask = torch.empty(b, 1, gh, gw, device=x.device, dtype=torch.float32)
    if b:
        launch(
            _spatial_masker_kernel, (gh * gw, b), x, "spatial_masker",
            x, weight, bias, logits, mask, h, w, c, gh, gw,
            x.stride(0), x.stride(1), x.stride(2), x.stride(3), weight.stride(0),
            weight.stride(1), BLOCK_PIX=cfg.block_pix, BLOCK_C=cfg.block_c,
            num_warps=cfg.num_warps,
        )
    return mask, logits


def channel_masker_mlp(x: torch.Tensor, layers: Sequence[tuple[torch.Tensor, torch.Tensor]],
                       config: MaskerConfig | None = None):
    """Channel MLP masker (eval): global pool, linear layers (ReLU between), compare.

    x: [B, H, W, C] NHWC; layers: [(w [N_i, K_i], b [N_i])] with K_0 = C and the last
    N = 2G (``nn.Linear`` weights of ``MaskerChannelMLP.conv``, see ``mlp_layers``).
    Returns (mask [B, G] fp32 0/1, logits [B, 2, G] fp32).

    Raises:
        ValueError: on wrong dims/dtypes/devices, no layers, chained sizes that do not
            match, or an odd number of final outputs.
    """
    cfg = config or DEFAULT
    _check_x(x)
    b, h, w, c = x.shape
    if not layers:
        raise ValueError("layers is empty; accepted: 1 or more (weight, bias) pairs")
    k = c
    for i, (lw, lb) in enumerate(layers):
        _check_linear(f"layer {i}", lw, lb, k, x.device)
        k = lw.shape[0]
    if k % 2:
        raise ValueError(f"the last layer has {k} outputs; a channel masker needs 2G")
    g = k // 2
    v = torch.empty(b, c, device=x.device, dtype=torch.float32)
    logits = torch.empty(b, 2, g, device=x.device, dtype=torch.float32)
    mask = torch.empty(b, g, device=x.device, dtype=torch.float32)
    if b == 0:
        return mask, logits
    launch(
        _global_pool_kernel, (triton.cdiv(c, cfg.block_c), b), x, "channel_masker_mlp",
        x, v, h, w, c, x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        BLOCK_PIX=cfg.block_pix, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
    for i, (lw, lb) in enumerate(layers):
        last = i == len(layers) - 1
        n = g if last else lw.shape[0]
        y = logits if last else torch.empty(b, n, device=x.device, dtype=torch.float32)
        launch(
            _mlp_layer_kernel, (triton.cdiv(n, cfg.block_n), b), x, "channel_masker_mlp", v,
            lw, lb, y, mask, lw.shape[1], n, lw.stride(0), lw.stride(1),
            RELU=not last, COMPARE=last, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps)
        v = y
    return mask, logits


def mlp_layers(masker) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of each linear layer of a ``nn.maskers.MaskerChannelMLP``."""
    return [(m.weight, m.bias) for m in masker.linears()]


# -- torch references (float64) ---------------------------------------------------------
def spatial_masker_torch(x, weight, bias, grid, **_):
    """Reference of ``spatial_masker``: (mask [B, 1, gh, gw], logits [B, 2, gh, gw]) float64."""
    xc = x.double().permute(0, 3, 1, 2)
    pooled = xc if tuple(xc.shape[-2:]) == tuple(grid) else F.adaptive_avg_pool2d(xc, grid)
    logits = F.conv2d(pooled, weight.double().reshape(2, -1, 1, 1), bias.double())
    return (logits[:, 0] >= logits[:, 1]).double().unsqueeze(1), logits


def channel_masker_mlp_torch(x, layers, **_):
    """Reference of ``channel_masker_mlp``: (mask [B, G], logits [B, 2, G]) float64."""
    v = x.double().mean(dim=(1, 2))
    for i, (lw, lb) in enumerate(layers):
        v = v @ lw.double().T + lb.double()
        if i < len(layers) - 1:
            v = v.clamp_min(0)
    logits = v.unflatten(1, (2, -1))  # [B, 2, G], batch 0 included
    return (logits[:, 0] >= logits[:, 1]).double(), logits


# -- ahead-of-time compilation -----------------------------------------------------------
def aot_specs() -> list[AOTSpec]:
    """Every config with fp16 input; the default config also with bf16 and fp32."""
    specs = []
    for cfg in CONFIGS:
        default = cfg == DEFAULT
        for dt in (torch.float16, torch.bfloat16, torch.float32) if default else (
                torch.float16,):
            d = DTYPE_NAMES[dt]
            tag = f"{d},pix{cfg.block_pix}c{cfg.block_c}n{cfg.block_n}k{cfg.block_k}"
            # the launchers pass no num_stages: the JIT compiles with Triton's default, 3
            opts = {"num_warps": cfg.num_warps, "num_stages": 3, "default": default}
            pool = {"BLOCK_PIX": cfg.block_pix, "BLOCK_C": cfg.block_c, "stride_xc": 1}
            sx = {f"stride_x{s}": "i32" for s in "bhwc"}
            sig = {"x_ptr": f"*{d}", "w_ptr": f"*{d}", "b_ptr": f"*{d}", "logits_ptr": "*fp32",
                   "mask_ptr": "*fp32", **{a: "i32" for a in ("H", "W", "C", "GH", "GW")},
                   **sx, "stride_wo": "i32", "stride_wc": "i32"}
            specs.append(AOTSpec(f"spatial_masker[{tag}]", _spatial_masker_kernel, sig,
                                 pool | {"stride_wc": 1}, **opts))
            sig = {"x_ptr": f"*{d}", "y_ptr": "*fp32", "H": "i32", "W": "i32", "C": "i32", **sx}
            specs.append(AOTSpec(f"global_pool[{tag}]", _global_pool_kernel, sig, pool, **opts))
            sig = {"v_ptr": "*fp32", "w_ptr": f"*{d}", "b_ptr": f"*{d}", "y_ptr": "*fp32",
                   "mask_ptr": "*fp32", "K": "i32", "N": "i32", "stride_wn": "i32",
                   "stride_wk": "i32"}
            for relu, cmp_ in ((True, False), (False, True)):
                consts = {"RELU": relu, "COMPARE": cmp_, "BLOCK_N": cfg.block_n,
                          "BLOCK_K": cfg.block_k, "stride_wk": 1}
                specs.append(AOTSpec(f"mlp_layer[{'cmp' if cmp_ else 'relu'},{tag}]",
                                     _mlp_layer_kernel, sig, consts, **opts))
    return specs
