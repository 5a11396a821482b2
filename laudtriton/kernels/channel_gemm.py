"""Channel-sliced GEMM over per-sample active channel lists (DESIGN.md 2-4); the 3x3 conv
over the same lists is ``kernels.channel_conv3x3``.

Channel skipping (``channel_gemm`` variant): sample b has m_b active channels, listed in
``idx[b, :m_b]`` (int32; the rest of the row is padding that is never read). Activations
between the three convolutions are *compact*: column j of sample b holds channel
``idx[b, j]``, so that every load is contiguous. The K loop visits only the active input
channels; weight rows and columns are gathered through the lists. Counts stay on the
device: the grid covers the full width and programs past ``n[b]`` exit at once, so there
is no host sync (CUDA-graph capturable).

The κ correction of DESIGN.md section 2 is supplied by the caller: a per-sample bias (conv3:
b3 + W3[:, inactive] @ κ2) and, for the 3x3 conv, 9 per-sample tap vectors
(``ops.kappa.conv2_taps``) added where the tap reads inside the image.

fp32 dots use ``input_precision="ieee"``: fp32 exactness (1e-4 of max|ref|) is part of the
contract, tf32 (~3e-4) would break it. fp16/bf16 use tensor cores with fp32 accumulation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import triton
import triton.language as tl

from .aot import AOTSpec, interpreting
from .tiles import check_launch_config, config_from_dict, launch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class GemmConfig:
    """Tile sizes (powers of two, >= 16 for tl.dot) and launch options."""

    block_p: int = 64
    block_n: int = 64
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self):
        check_launch_config(self, ("block_p", "block_n", "block_k"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> GemmConfig:
        return config_from_dict(cls, d)


DEFAULT = GemmConfig()
# Small maps at batch 1 (7x7 = 49 rows per sample) need small P tiles; large maps and
# wide layers want 128-wide tiles. On an H200 (session 38; BENCHMARKS.md, "GPU: NVIDIA
# H200", its tiles table) 128x64x32 was the fastest on the 56x56 blocks at batch 64 (the
# only ones where a tile beat cuDNN's dense block), and 32x64x64 on most blocks at batch 8.
CONFIGS = (
    DEFAULT,
    GemmConfig(128, 64, 32, 4, 3),
    GemmConfig(128, 128, 32, 8, 3),
    GemmConfig(32, 64, 64, 4, 3),
    GemmConfig(16, 32, 64, 2, 2),
)
# In float32 (IEEE dots, no tensor cores) the 64x64 tile's accumulators take 255 registers
# on sm_80, where channel_conv3x3 spills (docs/kernels.md): float32's default is the
# smallest tile, which does not.
DEFAULT_FP32 = CONFIGS[-1]


def default_config(dtype: torch.dtype) -> GemmConfig:
    """The config the channel kernels launch without one: DEFAULT_FP32 in float32, DEFAULT
    in the half types."""
    return DEFAULT_FP32 if dtype == torch.float32 else DEFAULT


def resolve_config(config: GemmConfig | dict | None, dtype: torch.dtype) -> GemmConfig:
    """A launcher's config: ``config`` itself, from its dict, or (None or {}) the default
    of ``dtype``."""
    if isinstance(config, GemmConfig):
        return config
    return GemmConfig.from_dict(config) if config else default_config(dtype)


@triton.jit
def dot_acc(a, wt, acc, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """acc + a @ wt in fp32, shared by the channel kernels. UPCAST: fp32 operands (the
    interpreter cannot multiply bf16 in tl.dot); IEEE: exact fp32 products (fp32 inputs,
    the 1e-4 contract), else tensor cores."""
    if UPCAST:
        a = a.to(tl.float32)
        wt = wt.to(tl.float32)
    if IEEE:
        acc = tl.dot(a, wt, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, wt, acc)
    return acc


@triton.jit
def _channel_gemm_kernel(
    x_ptr,  # [B, P, KX] input rows; compact (column k = k-th active channel) if IN_IDX
    w_ptr,  # [NW, KW] weight: output channel x input channel
    bias_ptr,  # [B or 1, NW] bias indexed by weight row (stride_bb = 0: shared)
    res_ptr,  # [B, P, N] residual added before the ReLU (RESIDUAL only)
    y_ptr,  # [B, P, NY] output rows; column j = j-th output (compact if OUT_IDX)
    in_idx_ptr, n_in_ptr,  # [B, LI] int32 active input channels, [B] int32 counts
    out_idx_ptr, n_out_ptr,  # [B, LO] int32 active output channels, [B] int32 counts
    P, K, N,  # rows per sample; K, N: dense sizes (used without IN_IDX / OUT_IDX)
    stride_xb, stride_xp, stride_xk, stride_wn, stride_wk, stride_bb,
    stride_rb, stride_rp, stride_rn, stride_yb, stride_yp, stride_yn, stride_ib, stride_ob,
    IN_IDX: tl.constexpr, OUT_IDX: tl.constexpr, RESIDUAL: tl.constexpr,
    RELU: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    if OUT_IDX:
        n_b = tl.load(n_out_ptr + b)
    else:
        n_b = N
    if pid_n * BLOCK_N < n_b:  # programs past the active outputs exit at once
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_p = offs_p < P
        mask_n = offs_n < n_b
        if OUT_IDX:
            rows = tl.load(out_idx_ptr + b * stride_ob + offs_n, mask=mask_n, other=0)
        else:
            rows = offs_n
        if IN_IDX:
            k_b = tl.load(n_in_ptr + b)
        else:
            k_b = K
        x_rows = x_ptr + b * stride_xb + offs_p.to(tl.int64)[:, None] * stride_xp
        acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, k_b, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < k_b
            if IN_IDX:
                cols = tl.load(in_idx_ptr + b * stride_ib + offs_k, mask=mask_k, other=0)
            else:
                cols = offs_k
            a = tl.load(x_rows + offs_k[None, :] * stride_xk,
                        mask=mask_p[:, None] & mask_k[None, :], other=0.0)
            wt = tl.load(w_ptr + cols[:, None] * stride_wk + rows[None, :] * stride_wn,
                         mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc = dot_acc(a, wt, acc, UPCAST, IEEE)
        bias = tl.load(bias_ptr + b * stride_bb + rows, mask=mask_n, other=0.0)
        acc += bias.to(tl.float32)[None, :]
        mask = mask_p[:, None] & mask_n[None, :]
        if RESIDUAL:
            r = tl.load(res_ptr + b * stride_rb + offs_p.to(tl.int64)[:, None] * stride_rp
                        + offs_n[None, :] * stride_rn, mask=mask, other=0.0)
            acc += r.to(tl.float32)
        if RELU:
            acc = tl.maximum(acc, 0.0)
        y = y_ptr + b * stride_yb + offs_p.to(tl.int64)[:, None] * stride_yp
        tl.store(y + offs_n[None, :] * stride_yn, acc.to(y_ptr.dtype.element_ty), mask=mask)


# -- checks -----------------------------------------------------------------------------
def check_tensor(name: str, t: torch.Tensor, dim: int, dtypes, device, last_contig: bool = True):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} has dtype {t.dtype}; accepted {tuple(dtypes)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} like the input")
    if last_contig and t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dim, got strides {t.stride()}")


def check_index_lists(prefix: str, idx, n, batch: int, limit: int, device, validate: bool):
    """idx [B, L] int32 in [0, limit), n [B] int32 in [0, L]."""
    check_tensor(f"{prefix}_idx", idx, 2, (torch.int32,), device)
    check_tensor(f"n_{prefix}", n, 1, (torch.int32,), device)
    if idx.shape[0] != batch or n.shape[0] != batch:
        raise ValueError(f"{prefix}_idx {tuple(idx.shape)} / n_{prefix} {tuple(n.shape)} "
                         f"must have the batch size {batch} as first dim")
    if not validate:  # the checks below sync with the host: variants' launchers skip them
        return
    if idx.numel():  # an empty list has no values; its counts must then all be 0
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= limit:
            raise ValueError(f"{prefix}_idx values in [{lo}, {hi}]; accepted [0, {limit})")
    if n.numel():
        nlo, nhi = int(n.min()), int(n.max())
        if nlo < 0 or nhi > idx.shape[1]:
            raise ValueError(f"n_{prefix} values in [{nlo}, {nhi}]; accepted [0, {idx.shape[1]}]")


def bias_2d(bias: torch.Tensor, batch: int, n: int, device) -> torch.Tensor:
    check_tensor("bias", bias, bias.dim(), DTYPES, device)
    if bias.dim() == 1:
        bias = bias[None]
    if bias.dim() != 2 or bias.shape[1] != n or bias.shape[0] not in (1, batch):
        raise ValueError(f"bias has shape {tuple(bias.shape)}; accepted [{n}] or [{batch}, {n}]")
    return bias


def channel_gemm(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, *,
                 in_idx: torch.Tensor | None = None, n_in: torch.Tensor | None = None,
                 out_idx: torch.Tensor | None = None, n_out: torch.Tensor | None = None,
                 residual: torch.Tensor | None = None, relu: bool = False,
                 config: GemmConfig | dict | None = None, validate: bool = True) -> torch.Tensor:
    """y[b, p, j] = act(Σ_k x[b, p, k] · w[row_j, col_k] + bias[b, row_j] (+ residual)).

    x: [B, P, KX]; w: [NW, KW] (same dtype: fp32/fp16/bf16), contiguous along either
    dim: with in_idx give it n-major (``w.t().contiguous().t()``), so that a tile of
    listed input channels loads contiguous output channels; bias: [NW] or [B, NW].
    in_idx/n_in: [B, LI] int32 / [B] int32: x is compact (KX = LI), col_k = in_idx[b, k],
    k < n_in[b]; without them col_k = k over KX = KW. out_idx/n_out: [B, LO] / [B]:
    row_j = out_idx[b, j] for j < n_out[b], output columns past n_out[b] are left
    unwritten; without them row_j = j over NW. residual: [B, P, NY] (dense outputs only).
    config: GemmConfig or its dict (None: ``default_config(x.dtype)``).
    Returns y [B, P, NY] in x's dtype, NY = LO or NW; accumulation in fp32.

    Raises:
        ValueError: on wrong dims, dtypes, devices, non-contiguous last dims, shapes that do
            not match, or (validate=True, a host sync) index values out of range.
    """
    check_tensor("x", x, 3, DTYPES, None)
    cfg = resolve_config(config, x.dtype)
    dev = x.device
    check_tensor("w", w, 2, (x.dtype,), dev, last_contig=False)
    if 1 not in w.stride() and w.numel() > 1:
        raise ValueError(f"w must be contiguous along one dim, got strides {w.stride()}")
    batch, p, kx = x.shape
    nw, kw = w.shape
    if (in_idx is None) != (n_in is None) or (out_idx is None) != (n_out is None):
        raise ValueError("pass in_idx with n_in and out_idx with n_out, or neither")
    if in_idx is not None:
        check_index_lists("in", in_idx, n_in, batch, kw, dev, validate)
        if kx != in_idx.shape[1]:
            raise ValueError(f"compact x has {kx} columns; in_idx has {in_idx.shape[1]}")
    elif kx != kw:
        raise ValueError(f"x has {kx} channels but w has {kw} input channels")
    ny = nw
    if out_idx is not None:
        check_index_lists("out", out_idx, n_out, batch, nw, dev, validate)
        ny = out_idx.shape[1]
        if residual is not None:
            raise ValueError("residual is only accepted with dense outputs (out_idx=None)")
    bias = bias_2d(bias, batch, nw, dev)
    if residual is not None:
        check_tensor("residual", residual, 3, DTYPES, dev)
        if tuple(residual.shape) != (batch, p, ny):
            raise ValueError(f"residual has shape {tuple(residual.shape)}, expected "
                             f"{(batch, p, ny)}")
    y = torch.empty(batch, p, ny, device=dev, dtype=x.dtype)
    if batch == 0 or p == 0 or ny == 0:
        return y
    dummy = n_out if n_out is not None else (n_in if n_in is not None else y)
    ii, ni = (in_idx, n_in) if in_idx is not None else (dummy, dummy)
    oi, no = (out_idx, n_out) if out_idx is not None else (dummy, dummy)
    r = residual if residual is not None else y
    grid = (triton.cdiv(p, cfg.block_p), triton.cdiv(ny, cfg.block_n), batch)
    launch(
        _channel_gemm_kernel, grid, x, "channel_gemm", x, w, bias, r, y, ii, ni, oi, no, p, kw, nw,
        x.stride(0), x.stride(1), x.stride(2), w.stride(0), w.stride(1),
        bias.stride(0) if bias.shape[0] > 1 else 0,
        r.stride(0), r.stride(1), r.stride(2), y.stride(0), y.stride(1), y.stride(2),
        ii.stride(0), oi.stride(0),
        IN_IDX=in_idx is not None, OUT_IDX=out_idx is not None,
        RESIDUAL=residual is not None, RELU=relu, IEEE=x.dtype == torch.float32,
        UPCAST=interpreting() and x.dtype == torch.bfloat16,
        BLOCK_P=cfg.block_p, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return y


# -- torch references (float64) ---------------------------------------------------------
def _lists(idx, n, batch, dense):
    if idx is None:
        return [torch.arange(dense, device=n.device if n is not None else None)] * batch
    return [idx[b, : int(n[b])].long() for b in range(batch)]


def channel_gemm_torch(x, w, bias, *, in_idx=None, n_in=None, out_idx=None, n_out=None,
                       residual=None, relu=False, **_) -> torch.Tensor:
    """Reference of ``channel_gemm`` in float64; unwritten output columns are NaN."""
    batch, p, _ = x.shape
    nw, kw = w.shape
    ins = _lists(in_idx, n_in, batch, kw)
    outs = _lists(out_idx, n_out, batch, nw)
    ny = out_idx.shape[1] if out_idx is not None else nw
    bias = bias.double().reshape(-1, nw).expand(batch, nw)
    y = torch.full((batch, p, ny), float("nan"), dtype=torch.float64, device=x.device)
    for b in range(batch):
        ci, co = ins[b].to(x.device), outs[b].to(x.device)
        xb = x[b, :, : ci.numel()].double()
        yb = xb @ w.double()[co][:, ci].T + bias[b, co]
        if residual is not None:
            yb = yb + residual[b].double()
        y[b, :, : co.numel()] = yb.clamp_min(0) if relu else yb
    return y


# -- ahead-of-time compilation -----------------------------------------------------------
def aot_variants():
    """(dtype name, config tag, constexprs, launch options) of every AOT build of the
    channel kernels: every config in fp16, the default config and the smallest (what
    gpucheck's variant checks launch on their width-16 blocks) also in bf16 and fp32
    (GPU.md section 2). Unit strides are constexprs, as the JIT specialises them."""
    for cfg in CONFIGS:
        dtypes = (torch.float16, torch.bfloat16, torch.float32) if cfg in (
            DEFAULT, DEFAULT_FP32) else (torch.float16,)
        for dt in dtypes:
            consts = {"IEEE": dt == torch.float32, "UPCAST": False, "RELU": True,
                      "BLOCK_P": cfg.block_p, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k,
                      "stride_xk": 1, "stride_yn": 1}
            tag = f"p{cfg.block_p}n{cfg.block_n}k{cfg.block_k}w{cfg.num_warps}s{cfg.num_stages}"
            opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                    "default": cfg == default_config(dt)}
            yield DTYPE_NAMES[dt], tag, consts, opts


IDX_ARGS = ["in_idx_ptr", "n_in_ptr", "out_idx_ptr", "n_out_ptr"]


def aot_specs() -> list[AOTSpec]:
    """``channel_gemm`` as conv1 (output list) and conv3 (input list, residual), in every
    build of :func:`aot_variants`."""
    args = ["x_ptr", "w_ptr", "bias_ptr", "res_ptr", "y_ptr"]
    ints = ["P", "K", "N"] + [
        f"stride_{s}" for s in ("xb", "xp", "xk", "wn", "wk", "bb", "rb", "rp", "rn", "yb",
                                "yp", "yn", "ib", "ob")]
    specs = []
    for d, tag, common, opts in aot_variants():
        sig = {a: f"*{d}" for a in args} | {a: "*i32" for a in IDX_ARGS}
        sig |= {a: "i32" for a in ints}
        sig["bias_ptr"] = "*fp32"
        for stage, flags in (("conv1", (False, True, False)), ("conv3", (True, False, True))):
            consts = dict(zip(("IN_IDX", "OUT_IDX", "RESIDUAL"), flags)) | common
            # conv1 reads W1 k-major (its K tiles are contiguous), conv3 W3 n-major (its
            # K tiles are listed channels, its N tiles contiguous): one unit stride each
            consts |= {"stride_rn": 1, "stride_wn": 1} if stage == "conv3" else {
                "stride_wk": 1}
            specs.append(AOTSpec(f"channel_gemm[{stage},{d},{tag}]", _channel_gemm_kernel,
                                 sig, consts, divisible=("K", "N"), **opts))
    return specs
