"""Tile offsets and the K loop over listed rows, shared by the spatial GEMM kernels, and
the checks of the kernels' launch configs (``GemmConfig``, ``TileConfig``).

The kernels (gather_conv, conv3x3, conv1x1_residual) still read the count and return
early themselves: a helper cannot end its caller's program. No ``aot_specs()`` here: the
helpers are compiled inside each kernel that calls them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator

import torch
import triton
import triton.language as tl

GRID_YZ_MAX = 65535  # CUDA's limit on a launch grid's y and z dims (x: 2**31 - 1)


def launch(kernel, grid: tuple, like: torch.Tensor, who: str, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` on the device of ``like`` (Triton launches on the
    current CUDA device, which need not be the tensors'). Raises a ValueError naming
    ``who`` when grid dim y or z exceeds CUDA's 65535 (the batch, on the channel and
    masker kernels), which the interpreter does not check and CUDA refuses only as an
    invalid argument at launch."""
    for axis, n in zip("yz", grid[1:]):
        if n > GRID_YZ_MAX:
            raise ValueError(f"{who}: {n} programs on launch grid axis {axis} exceed CUDA's "
                             f"limit of {GRID_YZ_MAX}; split the batch")
    guard = torch.cuda.device(like.device) if like.is_cuda else contextlib.nullcontext()
    with guard:
        kernel[grid](*args, **kwargs)


def check_launch_config(cfg, tiles: tuple[str, ...]) -> None:
    """Raise a ValueError naming the first bad field of a kernel config dataclass: the
    ``tiles`` fields must be powers of two >= 16 (``tl.dot`` on sm_80/sm_90 refuses K < 16
    at compile time, which the interpreter does not check), num_warps a power of two
    in [1, 32], num_stages (where the config has one) >= 1."""
    for name in tiles:
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 16 or v & (v - 1):
            raise ValueError(f"{name}={v!r}; accepted: a power of two >= 16")
    if cfg.num_warps not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"num_warps={cfg.num_warps!r}; accepted: 1, 2, 4, 8, 16 or 32")
    stages = getattr(cfg, "num_stages", 1)
    if not isinstance(stages, int) or stages < 1:
        raise ValueError(f"num_stages={stages!r}; accepted: an int >= 1")


def int_stride(stride) -> int | None:
    """``stride`` as an int if it is the integer 1 or 2 (a Python or NumPy int), else
    None: a float 2.0 passed the launchers' ``stride in (1, 2)`` and failed inside the
    kernel (an fp32 pointer offset) or in the output's allocation, a bool passed as 1."""
    if isinstance(stride, bool):
        return None
    try:
        s = operator.index(stride)
    except TypeError:
        return None
    return s if s in (1, 2) else None


def config_from_dict(cls, d: dict | None):
    """``cls`` (a kernel config dataclass) from a config dict (a cache entry's, or a
    caller's; None or {}: the class's field defaults, the 64x64 tile; a launcher given no
    config uses its dtype's ``default_config`` instead). Raises a ValueError naming
    unknown keys."""
    if not d:
        return cls()
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; accepted: "
                         f"{', '.join(f.name for f in dataclasses.fields(cls))}")
    return cls(**d)


@triton.jit
def tile_offsets(n_rows, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """(offs_m, offs_n, offs_k, m_mask, n_mask) of this program's tile: rows
    program_id(0)·BLOCK_M.. of the first n_rows, output channels program_id(1)·BLOCK_N..
    of N, and the K offsets of one reduction block."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    return offs_m, offs_n, offs_k, offs_m < n_rows, offs_n < N


@triton.jit
def rows_dot(a_ptr, rows, m_mask, w_ptr, offs_n, n_mask, offs_k, K,
             UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_K: tl.constexpr):
    """fp32 [BLOCK_M, BLOCK_N] = a[rows] @ w[offs_n].T over all K, for a [*, K] row-major
    input read at the int64 row indices ``rows`` (contiguous or gathered) and a [N, K]
    weight. UPCAST: dot operands to fp32 (bf16 under the interpreter)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < K
        a = tl.load(a_ptr + rows[:, None] * K + k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w_ptr + offs_n[None, :].to(tl.int64) * K + k[:, None],
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision="ieee")
    return acc
