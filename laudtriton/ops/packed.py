"""Convolutions with weights pre-packed for oneDNN and fused epilogues (CPU float32).

On CPU, F.conv2d re-orders its weight on every call; at batch 1 on small maps that
reorder dominates (512->512 3x3 at 7x7: 8.2 ms plain vs 1.1 ms packed, 1 thread). Every
CPU engine path (the sparse variants and the honest dense baseline alike) runs its
convolutions through :class:`PackedConv`, which packs once and fuses bias, residual add
and ReLU; elsewhere (CUDA, other dtypes, a torch without these ops) it runs F.conv2d.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CL = torch.channels_last


def _can_pack(w: torch.Tensor) -> bool:
    return (w.device.type == "cpu" and w.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


def _pack(weight: torch.Tensor, stride: int, padding: int, in_hw, batch: int = 1):
    return torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.to_mkldnn(), [padding] * 2, [stride] * 2, [1, 1], 1,
        [batch, weight.shape[1], *in_hw])


def probe_tensors(*shapes) -> list[torch.Tensor]:
    """Random CPU float32 tensors of ``shapes`` for a capability probe, drawn from a
    private generator: probing leaves the caller's torch RNG state as it was, and its
    answer (cached for the process) does not depend on torch's default dtype."""
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=torch.float32) for s in shapes]


@functools.lru_cache(maxsize=1)
def onednn_fusion_available() -> bool:
    """Whether this torch build runs oneDNN convolutions with pre-packed weights and fused
    add/ReLU epilogues (``torch.ops.mkldnn._convolution_pointwise``, CPU float32)
    and its in-place form (``_convolution_pointwise_``, for ``PackedConv.add_into_``).
    Probed once on a tiny input against F.conv2d; on any failure PackedConv runs F.conv2d."""
    w, b, x, add = probe_tensors((3, 2, 3, 3), (3,), (2, 2, 5, 4), (1, 3, 3, 2))
    x, add = x.contiguous(memory_format=CL), add.contiguous(memory_format=CL)
    if not _can_pack(w):
        return False
    try:
        op = torch.ops.mkldnn._convolution_pointwise
        wp = _pack(w, 2, 1, (5, 4))
        y1 = op(x, wp, b, [1, 1], [2, 2], [1, 1], 1, "relu", [], "")
        y2 = op.binary(x, add.expand(2, -1, -1, -1), wp, b, [1, 1], [2, 2], [1, 1], 1, "add",
                       1.0, "relu", [], "")
        y3 = add.expand(2, -1, -1, -1).contiguous(memory_format=CL)
        torch.ops.mkldnn._convolution_pointwise_.binary(
            y3, x, wp, b, [1, 1], [2, 2], [1, 1], 1, "add", 1.0, "relu", [], "")
    except Exception:  # noqa: BLE001 - any failure of these private ops: not available
        return False
    ref = F.conv2d(x, w, b, stride=2, padding=1)
    return bool(torch.allclose(y1, ref.relu(), atol=1e-5)
                and torch.allclose(y2, (ref + add).relu(), atol=1e-5)
                and torch.allclose(y3, (ref + add).relu(), atol=1e-5))


# Packed weights kept per PackedConv, one per input shape: oneDNN picks the weight format
# for the exact input shape it is packed for, and another shape can run 10-20x slower
# (256->1024 1x1 at 14x14 packed for batch 1: 0.25 ms at batch 1, 4.6 ms at batch 2).
SHAPES_PER_CONV = 8


@dataclass(frozen=True)
class PackedConv:
    """One convolution with its bias, weights pre-packed for oneDNN where possible.

    weight: [Cout, Cin, k, k]; bias: [Cout] | None; stride, padding: the convolution's.
    packed: {input shape: oneDNN-packed weight} (CPU float32; a bounded LRU filled on
    first use of each shape), or None when oneDNN packing is unavailable (then F.conv2d
    runs). On CPU, F.conv2d re-orders its weight on every call; for small maps at batch 1
    that reorder dominates (512->512 3x3 at 7x7: 8.2 ms plain vs 1.1 ms packed, 1 thread).
    seen: for a lazy PackedConv (``make(..., lazy=True)``), the input shapes used once:
    a shape's first call runs oneDNN on the plain weight, its second packs (else None).
    any_batch: one packing, for batch 1, serves inputs of every batch size (``make``).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: int
    padding: int
    packed: OrderedDict | None
    seen: set | None = None
    any_batch: bool = False

    @staticmethod
    def make(weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
             in_hw: tuple[int, int], pack: bool = True, batch: int = 1,
             lazy: bool = False, any_batch: bool = False) -> PackedConv:
        """Pack ``weight`` for inputs [batch, Cin, *in_hw] when possible; other input
        shapes get their own packing on first use.

        any_batch: pack for batch 1 only and run every batch size on that packing, for
        convolutions whose batch changes from call to call: the patch variant's 3x3 conv
        over halo patches (batch = active cells) runs as fast on the batch-1 packing as
        on its own at every count measured (64-512 channels, 3x3 to 9x9 patches, stride 1
        and 2, 3-150 patches: within 9% either way in loops of their own, 0.98-1.03x
        alternating in one loop at ResNet-101's shapes; /tmp/s20/patch*.py), where a
        packing costs 0.05-1.7 ms. Not so for every convolution: a 1x1 at 14x14 packed
        for batch 1 ran 18x slower at batch 2 (below).

        lazy: pack nothing now; each input shape runs on the plain weight the first time
        and is packed the second. For weights that may serve one call only (a channel
        pattern seen once): packing costs about one to two such calls (layer4 of
        ResNet-50, 2048->256 1x1 at 7x7: 0.35 ms to pack, 0.14 ms packed, 0.24 ms plain).
        """
        weight = weight.contiguous()
        packed = None
        batch = 1 if any_batch else batch
        if pack and _can_pack(weight) and onednn_fusion_available():
            packed = OrderedDict()
            if not lazy:
                shape = (batch, weight.shape[1], *in_hw)
                packed[shape] = _pack(weight, stride, padding, in_hw, batch)
        return PackedConv(weight, None if bias is None else bias.contiguous(), stride,
                          padding, packed, set() if lazy and packed is not None else None,
                          any_batch)

    def _onednn(self, x: torch.Tensor) -> bool:
        """Whether x runs through the packed oneDNN ops (else F.conv2d)."""
        return self.packed is not None and x.dtype == torch.float32 and x.device.type == "cpu"

    def _out_hw(self, x: torch.Tensor) -> tuple[int, int]:
        """The output map size of x [n, Cin, H, W]."""
        kh, kw = self.weight.shape[-2:]
        return ((x.shape[2] + 2 * self.padding - kh) // self.stride + 1,
                (x.shape[3] + 2 * self.padding - kw) // self.stride + 1)

    def _packed_for(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, *x.shape[1:]) if self.any_batch else tuple(x.shape)
        w = self.packed.get(shape)
        if w is None:
            if self.seen is not None and shape not in self.seen:
                if len(self.seen) >= 4 * SHAPES_PER_CONV:
                    self.seen.clear()
                self.seen.add(shape)
                return self.weight  # oneDNN takes the plain weight and reorders it itself
            w = _pack(self.weight, self.stride, self.padding, shape[2:], shape[0])
            if len(self.packed) >= SHAPES_PER_CONV:
                self.packed.popitem(last=False)
            self.packed[shape] = w
        else:
            self.packed.move_to_end(shape)
        return w

    def __call__(self, x: torch.Tensor, relu: bool, add: torch.Tensor | None = None):
        """relu?(conv(x) + bias + add): [n, Cin, H, W] channels_last -> [n, Cout, Ho, Wo]
        channels_last; ``add`` broadcasts to the output (e.g. a [1, Cout, Ho, Wo] map)."""
        p, s = [self.padding] * 2, [self.stride] * 2
        if self._onednn(x):
            op = torch.ops.mkldnn._convolution_pointwise
            w = self._packed_for(x)
            if add is None:
                return op(x, w, self.bias, p, s, [1, 1], 1, "relu" if relu else "none", [], "")
            if add.shape[0] != x.shape[0]:
                add = add.expand(x.shape[0], -1, -1, -1)
            if self._out_hw(x) == (1, 1):
                # torch 2.11's oneDNN refuses the out-of-place binary op on a 1x1 output
                # map ("could not create a memory", any batch; 2.13 runs it): the in-place
                # op on a copy of add computes the same sum
                return self.add_into_(add.clone(memory_format=CL), x, relu)
            return op.binary(x, add, w, self.bias, p, s, [1, 1], 1, "add", 1.0,
                             "relu" if relu else None, [], "")
        y = F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)
        if add is not None:
            y = y.add_(add)
        return (y.relu_() if relu else y).contiguous(memory_format=CL)

    def add_into_(self, out: torch.Tensor, x: torch.Tensor, relu: bool) -> torch.Tensor:
        """out = relu?(conv(x) + bias + out), in place (the fused residual of a block whose
        identity buffer may be overwritten): no output allocation, one pass over ``out``.
        out: [n, Cout, Ho, Wo] channels_last (a batch slice of a larger one is fine)."""
        if self._onednn(x):
            p, s = [self.padding] * 2, [self.stride] * 2
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                out, x, self._packed_for(x), self.bias, p, s, [1, 1], 1, "add", 1.0,
                "relu" if relu else None, [], "")
        y = F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)
        out.add_(y)
        return out.relu_() if relu else out
