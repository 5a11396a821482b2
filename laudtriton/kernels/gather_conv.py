"""Gather + 1x1 conv + bias + ReLU into a zero-bordered NHWC buffer (conv1 of the
spatial variants).

For every listed input pixel p (flat b·H·W + y·W + x) one GEMM row:
    buf[b, y+1, x+1, :] = relu(x[b, y, x, :] @ w.T + bias)
Every other cell of buf [B, H+2, W+2, Cout] (its 1-pixel border and the pixels outside
the list) stays zero: conv2's zero padding is zero, not relu(bn1(conv1(0))) (DESIGN.md 2).

Also holds what the spatial families share: ``TileConfig`` and the launcher checks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import triton
import triton.language as tl

from .aot import AOTSpec, interpreting
from .tiles import check_launch_config, config_from_dict, launch, rows_dot, tile_offsets

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class TileConfig:
    """GEMM tiling of one launch: rows x output channels x reduction block (powers of two,
    >= 16 for tl.dot), warps and software-pipelining stages."""

    block_m: int = 64
    block_n: int = 64
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self):
        check_launch_config(self, ("block_m", "block_n", "block_k"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> TileConfig:
        return config_from_dict(cls, d)


# The space the tuner explores; the default (64x64x32, 4 warps, 3 stages) is the usual
# middle of a Triton GEMM space: wide enough for tl.dot on sm_80/sm_90. In float32 (IEEE
# dots, no tensor cores) its accumulators take 255 registers on sm_80, where conv3x3
# spills (docs/kernels.md): float32's default is the 32-row tile, which does not.
SPACE = (
    TileConfig(32, 64, 32, 4, 2),
    TileConfig(64, 64, 32, 4, 3),
    TileConfig(128, 64, 32, 4, 3),
    TileConfig(128, 128, 32, 8, 3),
)
DEFAULT = TileConfig(64, 64, 32, 4, 3)
DEFAULT_FP32 = SPACE[0]


def default_config(dtype: torch.dtype) -> TileConfig:
    """The config the spatial GEMM kernels launch without one: DEFAULT_FP32 in float32,
    DEFAULT in the half types."""
    return DEFAULT_FP32 if dtype == torch.float32 else DEFAULT


def configs() -> list[TileConfig]:
    """The config space of the spatial GEMM kernels (this family and its two siblings)."""
    return list(SPACE)


def aot_plan() -> list[tuple[torch.dtype, TileConfig]]:
    """(dtype, config) pairs each spatial GEMM kernel is compiled for ahead of time: every
    config in fp16 (the GPU dtype the tuner sweeps), the default and the first config
    (what gpucheck's fp32 and bf16 variant checks launch on their small blocks) also in
    fp32 and bf16 (whole space x 3 dtypes took ~9 min of compiles on 2 busy cores)."""
    return [(torch.float16, c) for c in SPACE] + [
        (dt, c) for c in dict.fromkeys((DEFAULT, SPACE[0]))
        for dt in (torch.float32, torch.bfloat16)]


def interpreter_upcast(dtype: torch.dtype) -> bool:
    """Whether dot operands must be upcast: bf16 under the interpreter (GPU.md 1)."""
    return dtype == torch.bfloat16 and interpreting()


# -- launcher checks shared by the spatial families ------------------------------------
def check_tensor(name: str, t, shape: tuple | None = None, dtypes=None, device=None) -> None:
    """ValueError naming ``name`` unless t is a contiguous tensor of the given shape (None
    entries are free), one of ``dtypes``, on ``device``."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if shape is not None:
        ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
        if not ok:
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {want}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} has dtype {t.dtype}; accepted {', '.join(map(str, dtypes))}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}; expected {device} (same as the input)")
    if not t.is_contiguous():
        raise ValueError(f"{name} is not contiguous (strides {t.stride()}); pass .contiguous()")


def check_index(idx: torch.Tensor, count: torch.Tensor, limit: int, device,
                validate: bool) -> None:
    """Check an index list [L] int32 and its count [1] int32; with ``validate`` also that
    count <= L and idx[:count] lies in [0, limit) (two host syncs)."""
    check_tensor("idx", idx, (None,), (torch.int32,), device)
    check_tensor("count", count, (1,), (torch.int32,), device)
    if not validate:
        return
    c = int(count.item())
    if not 0 <= c <= idx.shape[0]:
        raise ValueError(f"count is {c}; accepted 0 .. len(idx) = {idx.shape[0]}")
    if c:
        lo, hi = (int(v) for v in torch.aminmax(idx[:c]))
        if lo < 0 or hi >= limit:
            raise ValueError(f"idx[:count] spans [{lo}, {hi}]; accepted [0, {limit})")


@triton.jit
def _gather_conv1x1_kernel(
    x_ptr,  # [B·H·W, K] NHWC input rows
    idx_ptr,  # [L] int32 flat input pixels b·H·W + y·W + x
    count_ptr,  # [1] int32 number of valid entries of idx
    w_ptr,  # [N, K] conv1 weight (BN folded)
    b_ptr,  # [N] bias
    out_ptr,  # [B, H+2, W+2, N] zero-bordered buffer
    H, W, K, N,
    UPCAST: tl.constexpr,  # upcast dot operands to fp32 (bf16 under the interpreter)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n_rows = tl.load(count_ptr)
    if tl.program_id(0) * BLOCK_M >= n_rows:  # tiles past the count exit at once (masked variant)
        return
    offs_m, offs_n, offs_k, m_mask, n_mask = tile_offsets(n_rows, N, BLOCK_M, BLOCK_N,
                                                          BLOCK_K)
    p = tl.load(idx_ptr + offs_m, mask=m_mask, other=0).to(tl.int64)
    acc = rows_dot(x_ptr, p, m_mask, w_ptr, offs_n, n_mask, offs_k, K, UPCAST, BLOCK_M,
                   BLOCK_N, BLOCK_K)
    bias = tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    acc = tl.maximum(acc + bias[None, :], 0.0)
    hw = H * W
    bi = p // hw
    rem = p - bi * hw
    y = rem // W
    x = rem - y * W
    row = (bi * (H + 2) + y + 1) * (W + 2) + x + 1
    tl.store(out_ptr + row[:, None] * N + offs_n[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def _alloc_buffer(bsz: int, h: int, wd: int, n: int, dtype, device) -> torch.Tensor:
    """The zero-bordered output buffer (tests replace this to poison the listed cells)."""
    return torch.zeros(bsz, h + 2, wd + 2, n, dtype=dtype, device=device)


def gather_conv1x1(x: torch.Tensor, idx: torch.Tensor, count: torch.Tensor, w: torch.Tensor,
                   b: torch.Tensor, config: TileConfig | None = None,
                   validate: bool = True) -> torch.Tensor:
    """relu(x[idx] @ w.T + b) written into a zero-bordered buffer.

    x: [B, H, W, K] contiguous NHWC (fp32/fp16/bf16). idx: [L] int32 flat input pixels
    b·H·W + y·W + x; only idx[:count] are used. count: [1] int32 on the device (read by
    the kernel: no host sync). w: [N, K] same dtype as x. b: [N] fp32/fp16/bf16.
    config: TileConfig (None: ``default_config(x.dtype)``). validate: check count and
    index ranges (two host syncs; the masked variant passes False).

    Returns buf [B, H+2, W+2, N] of x's dtype, zero except at the listed pixels.

    Raises:
        ValueError: on a wrong shape, dtype, device, non-contiguous tensor, or (validate)
            a count or index out of range.
    """
    check_tensor("x", x, (None, None, None, None), DTYPES)
    cfg = config or default_config(x.dtype)
    bsz, h, wd, k = x.shape
    check_tensor("w", w, (None, k), (x.dtype,), x.device)
    n = w.shape[0]
    check_tensor("b", b, (n,), DTYPES, x.device)
    check_index(idx, count, bsz * h * wd, x.device, validate)
    out = _alloc_buffer(bsz, h, wd, n, x.dtype, x.device)
    if idx.shape[0] == 0:
        return out
    grid = (triton.cdiv(idx.shape[0], cfg.block_m), triton.cdiv(n, cfg.block_n))
    launch(
        _gather_conv1x1_kernel, grid, x, "gather_conv1x1", x, idx, count, w, b, out, h, wd, k, n,
        UPCAST=interpreter_upcast(x.dtype),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def gather_conv1x1_torch(x: torch.Tensor, idx: torch.Tensor, count: torch.Tensor,
                         w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference of :func:`gather_conv1x1` in float64: buf [B, H+2, W+2, N] float64."""
    bsz, h, wd, _ = x.shape
    c = int(count.item())
    p = idx[:c].long()
    rows = torch.relu(x.flatten(0, 2)[p].double() @ w.double().T + b.double())  # any K
    out = torch.zeros(bsz, h + 2, wd + 2, w.shape[0], dtype=torch.float64, device=x.device)
    inner = out[:, 1:-1, 1:-1]
    bi, rem = p // (h * wd), p % (h * wd)
    inner[bi, rem // wd, rem % wd] = rows
    return out


def stage_aot_specs(stem: str, fn: object, args: str) -> list[AOTSpec]:
    """The spatial stage kernel ``fn`` x ``aot_plan()`` (dtype, config) pairs for
    ahead-of-time compiles, named ``{stem}_{dtype}_m{M}n{N}k{K}``. ``args``: the kernel's
    runtime arguments in order, space-separated: ``idx_ptr`` and ``count_ptr`` are int32
    pointers, every other ``*_ptr`` a pointer of the dtype, the rest i32; K and N are
    divisible by 16."""
    out = []
    for dt, cfg in aot_plan():
        t = TRITON_DTYPE[dt]
        sig = {name: ("*i32" if name in ("idx_ptr", "count_ptr") else f"*{t}")
               if name.endswith("_ptr") else "i32"
               for name in args.split()}
        out.append(AOTSpec(
            name=f"{stem}_{t}_m{cfg.block_m}n{cfg.block_n}k{cfg.block_k}",
            fn=fn, signature=sig,
            constexprs={"UPCAST": False, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
                        "BLOCK_K": cfg.block_k},
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            default=cfg == default_config(dt),
            divisible=("K", "N"),
        ))
    return out


def aot_specs() -> list[AOTSpec]:
    """The gather kernel x ``aot_plan()`` (dtype, config) pairs for ahead-of-time compiles."""
    return stage_aot_specs("gather_conv1x1", _gather_conv1x1_kernel,
                           "x_ptr idx_ptr count_ptr w_ptr b_ptr out_ptr H W K N")
