"""Row GEMMs of the spatial variants: [n, k] rows times a weight, the way the CPU runs
them fastest, and the row-count buckets their pre-packed weights are kept for."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .packed import PackedConv, onednn_fusion_available, probe_tensors

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


def packs_rows(t: torch.Tensor) -> bool:
    """Whether row GEMMs on tensors like ``t`` run pre-packed (:class:`PackedRows`, the
    spatial variants' row-bucketed GEMMs; ``predict.calibration.gemm_peak`` times them so):
    on CPU, float32, where oneDNN's fused ops are available."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and onednn_fusion_available()


def row_bucket(n: int) -> int:
    """n rounded up to a multiple of max(16, 2^(⌊log2 n⌋ − 3)): at most 15 rows of
    padding below 128 rows, at most 12.5% from 128 on."""
    if n <= 0:
        return n
    step = max(16, 1 << max(0, n.bit_length() - 4))
    return -(-n // step) * step


@functools.lru_cache(maxsize=1)
def onednn_linear_available() -> bool:
    """Whether this torch build runs oneDNN's linear op on a pre-packed weight
    (``torch.ops.mkldnn._reorder_linear_weight`` and ``_linear_pointwise``, CPU float32).
    Probed once on a tiny input against F.linear; on any failure :class:`PackedRows`
    runs its GEMM as a packed 1x1 convolution."""
    if not torch.backends.mkldnn.is_available():
        return False
    w, b, a = probe_tensors((5, 3), (5,), (4, 3))
    try:
        wp = torch.ops.mkldnn._reorder_linear_weight(w, 4)
        y1 = torch.ops.mkldnn._linear_pointwise(a, wp, b, "relu", [], "")
        y2 = torch.ops.mkldnn._linear_pointwise(a, wp, None, "none", [], "")
    except Exception:  # noqa: BLE001 - any failure of these private ops: not available
        return False
    ref = F.linear(a, w)
    return bool(torch.allclose(y1, (ref + b).relu(), atol=1e-5)
                and torch.allclose(y2, ref, atol=1e-5))


class PackedRows:
    """rows [n, k] @ wᵀ + bias, then ReLU if asked -> [n, o], with w [o, k] pre-packed for
    n rows (CPU float32; other row counts run, more slowly: the spatial variants pad
    their row counts to a ``row_bucket`` and keep one packing per bucket).

    Runs oneDNN's linear op where available (``onednn_linear_available``): it costs about
    half the fixed time per call of the 1x1 convolution it replaced (15 vs 27-31 us on a
    tiny GEMM); with the numpy reads of ``masks.active_pixels`` and
    ``masks.dispatch_rate`` it took 2.5-3.8% off ResNet-101's spatial forward at rate
    0.5 (BENCHMARKS.md, session 14); else a packed 1x1 convolution over a [1, k, 1, n]
    channels_last view.
    """

    def __init__(self, w: torch.Tensor, bias: torch.Tensor | None, n: int):
        w = w.contiguous()
        self.bias = None if bias is None else bias.contiguous()
        self.weight = self.conv = None  # the packed linear weight, or the packed conv
        if onednn_linear_available():
            self.weight = torch.ops.mkldnn._reorder_linear_weight(w, n)
        else:
            self.conv = PackedConv.make(w[:, :, None, None], self.bias, 1, 0, (1, n))

    def __call__(self, a: torch.Tensor, relu: bool) -> torch.Tensor:
        a = a.contiguous()
        if self.conv is None:
            return torch.ops.mkldnn._linear_pointwise(a, self.weight, self.bias,
                                                      "relu" if relu else "none", [], "")
        n, k = a.shape
        y = self.conv(a.view(1, 1, n, k).permute(0, 3, 1, 2), relu=relu)
        return y.permute(0, 2, 3, 1).reshape(n, -1)
