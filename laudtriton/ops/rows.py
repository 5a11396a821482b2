"""Row GEMMs of the spatial variants: [n, k] rows times a weight, the way the CPU runs
them fastest, and the row-count buckets their pre-packed weights are kept for."""

from __future__ import annotations

import torch

# conv1 runs over every pixel (one GEMM, no row gather or scatter) when mask1 covers at
# least this fraction of the batch's pixels; its rows outside mask1 are never read.
# The row-gathered GEMM still won at 0.90 (0.87 vs 0.91 ms, 1024->256 at 14x14, 1 thread).
DENSE_CONV1_FRACTION = 0.95

_MKLDNN_CONV = torch.ops.aten.mkldnn_convolution


def _use_mkldnn(t: torch.Tensor) -> bool:
    return (t.device.type == "cpu" and t.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def rows_linear(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """a [n, k] @ w[o, k]ᵀ + bias [o] -> [n, o].

    On CPU fp32 it runs as a oneDNN 1x1 convolution over a [1, k, 1, n] channels_last
    view: oneDNN uses AVX-512 where MKL's sgemm falls back to AVX2 on AMD CPUs (measured
    on the 2-core EPYC: 110-120 vs 54 GMAC/s for [1568, 576] x [576, 64], 1 thread).
    Elsewhere ``torch.addmm``.
    """
    n, k = a.shape
    o = w.shape[0]
    if n == 0 or not _use_mkldnn(a):
        return torch.addmm(bias, a, w.t()) if bias is not None else a @ w.t()
    a4 = a.contiguous().view(1, n, 1, k).permute(0, 3, 1, 2)
    y = _MKLDNN_CONV(a4, w.contiguous().view(o, k, 1, 1), bias, (0, 0), (1, 1), (1, 1), 1)
    return y.permute(0, 2, 3, 1).reshape(n, o)


def row_bucket(n: int) -> int:
    """n rounded up to a multiple of max(16, 2^(⌊log2 n⌋ − 3)): at most 12.5% padding."""
    if n <= 0:
        return n
    step = max(16, 1 << max(0, n.bit_length() - 4))
    return -(-n // step) * step
