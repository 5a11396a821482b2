"""CUDA variants of the spatial paradigm built from the Triton kernels: ``fused`` and
``masked`` (DESIGN.md sections 2-4).

Both run the same three kernels on device index lists (``kernels/indices.py``):
    conv1: gather the union of mask1 input pixels, 1x1 GEMM + bias + ReLU, into a
           zero-bordered NHWC buffer [B, H+2, W+2, w] (conv2's padding stays zero);
    conv2: implicit-GEMM 3x3 (stride 1 or 2) over the active output pixels -> rows [n, w];
    conv3: 1x1 GEMM + bias + identity (x, or the dense downsample output) + ReLU, scattered
           into relu(identity), which is the exact output at every inactive pixel.
Pixel lists follow the actual mask, so cells of unequal size (S not dividing Ho) and any
S need nothing special.

- ``fused`` reads the two counts on the host (one sync) and launches exact grids; at
  rate 0 it launches no kernel at all.
- ``masked`` never syncs: its grids cover every tile of the dense problem and each
  program reads the count on the device, so the tiles past it exit at once; every
  tensor it allocates has a fixed size, so a CUDA graph can capture it.

Triton is imported only inside ``run`` (registration works without it).
"""

from __future__ import annotations

import torch

from ..nn.block import BlockMasks
from .dense import conv1x1
from .fold import FoldedBlock, derived
from .registry import Cost, Variant, register
from .spatial import _check as check_spatial
from .spec import BlockSpec

STAGES = ("conv1", "conv2", "conv3")
# The shared spatial GEMM space of kernels/gather_conv.py (kept here as plain data so that
# registration needs no Triton): (block_m, block_n, block_k, num_warps, num_stages).
_SPACE = ((32, 64, 32, 4, 2), (64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (128, 128, 32, 8, 3))


def _tile(d: tuple) -> dict:
    return dict(zip(("block_m", "block_n", "block_k", "num_warps", "num_stages"), d))


def spatial_configs(spec: BlockSpec) -> list[dict]:
    """Config space: one tile config for all three kernels ({"conv1": tile, "conv2": ...}),
    without N tiles much wider than the block's channels. ``{}`` means the defaults."""
    widest = max(spec.width, spec.out_channels)
    out = []
    for t in _SPACE:
        if t[1] > 64 and t[1] > widest:
            continue
        out.append({s: _tile(t) for s in STAGES})
    return out


def _supports(spec: BlockSpec) -> bool:
    return (spec.mode == "spatial" and spec.stride in (1, 2)
            and spec.dtype in ("float32", "float16", "bfloat16"))


def spatial_cost(spec: BlockSpec, rate: float) -> Cost:
    """Multiply-adds, fewest bytes and launches of one block at activation rate ``rate``.

    The conv1 rate r1 is estimated from isolated cells: an S x S output cell needs
    ((S−1)·s + 3)² input pixels of (S·s)², so r1 = min(1, r · that ratio).
    """
    b, cin, w, cout = spec.batch, spec.in_channels, spec.width, spec.out_channels
    h, wd = spec.in_hw
    ho, wo = spec.out_hw
    s, g = spec.stride, spec.granularity
    r3 = float(rate)
    r1 = min(1.0, r3 * ((g - 1) * s + 3) ** 2 / (g * s) ** 2)
    el = 2 if spec.dtype in ("float16", "bfloat16") else 4
    flops = b * (cin * w * h * wd * r1 + 9 * w * w * ho * wo * r3 + w * cout * ho * wo * r3)
    act = b * (
        cin * h * wd * r1  # gathered conv1 input rows
        + (h + 2) * (wd + 2) * w  # conv1 buffer: zero fill (written rows are a subset)
        + w * h * wd * r1  # conv2 reads the written buffer rows (halo reuse from cache)
        + 2 * w * ho * wo * r3  # conv2 rows written, read by conv3
        + 2 * cout * ho * wo  # identity read, output written (relu(identity) prefill)
        + 2 * cout * ho * wo * r3  # conv3 epilogue: identity and output at active pixels
    )
    wts = cin * w + 9 * w * w + w * cout
    launches = 10  # index lists (cumsum/where/scatter x 2), buffer fill, 3 kernels, relu
    if spec.downsample:
        flops += b * cin * cout * ho * wo
        act += b * (cin * h * wd + cout * ho * wo)
        wts += cin * cout
        launches += 1
    idx_bytes = 4 * b * (h * wd + ho * wo) * 3  # masks -> int32 lists: read, scan, write
    return Cost(flops=float(flops), bytes=float(el * (act + wts) + idx_bytes),
                launches=launches)


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] (channels_last or not) -> contiguous NHWC [B, H, W, C]."""
    return t.permute(0, 2, 3, 1).contiguous()


def _run(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks, config: dict | None,
         sync: bool) -> torch.Tensor:
    from ..kernels import indices
    from ..kernels.conv1x1_residual import conv1x1_residual
    from ..kernels.conv3x3 import conv3x3, hwio
    from ..kernels.gather_conv import TileConfig, gather_conv1x1

    if masks is None or masks.mask3 is None or masks.mask1 is None:
        raise ValueError("masks must carry mask3 and mask1 (a spatial block's BlockMasks)")
    who = "fused" if sync else "masked"
    if masks.channel is not None:  # the kernels have no channel lists and no κ correction
        raise ValueError(f"{who}: masks.channel is set (a 'both' block's masks); this "
                         "variant runs spatial masks only and would drop the channel mask "
                         "and its κ correction: use 'gather', 'patch' or 'dense'")
    # shapes only, no host sync (``masked`` stays capturable): the kernels index the
    # output and the conv1 buffer by the masks' positions, unchecked (validate=False)
    fb.check_input(x, None, who)
    check_spatial(fb, x, masks)
    unknown = set(config or {}) - set(STAGES)
    if unknown:
        raise ValueError(f"config has keys {sorted(unknown)}; accepted {STAGES}")
    # a stage without a config launches on its kernel's default for the dtype
    cfg = {s: TileConfig.from_dict(c) if (c := (config or {}).get(s)) else None
           for s in STAGES}
    dt, dev = x.dtype, x.device
    xh = _nhwc(x)
    if fb.wd is None:
        ident = xh
    else:
        ident = _nhwc(conv1x1(x, fb.wd.to(dt), fb.bd.to(dt), fb.stride))
    idx1, c1 = indices.active_rows(masks.mask1.to(dev))
    idx3, c3 = indices.active_pixels(masks.mask3.to(dev))
    if sync:  # fused: exact grids from the host counts (one sync for both)
        n1, n3 = indices.host_counts(c1, c3)
        if n3 == 0:
            return torch.relu(ident).permute(0, 3, 1, 2)
        idx1, idx3 = idx1[:n1], idx3[:n3]
    buf = gather_conv1x1(xh, idx1, c1, fb.w1.to(dt).contiguous(), fb.b1, cfg["conv1"],
                         validate=False)
    w2 = derived(fb, f"_hwio_w2_{str(dt)[6:]}", fb.fingerprint(),  # not copied per call
                 lambda: hwio(fb.w2.to(dt)))
    h2 = conv3x3(buf, idx3, c3, w2, fb.b2, fb.stride, cfg["conv2"], validate=False)
    out = conv1x1_residual(h2, idx3, c3, fb.w3.to(dt).contiguous(), fb.b3, ident,
                           cfg["conv3"], validate=False)
    return out.permute(0, 3, 1, 2)  # [B, Cout, Ho, Wo] view, channels_last memory


def run_fused(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks,
              config: dict | None = None) -> torch.Tensor:
    """``fused``: [B, Cin, H, W] channels_last -> [B, Cout, Ho, Wo] channels_last."""
    return _run(fb, x, masks, config, sync=True)


def run_masked(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks,
               config: dict | None = None) -> torch.Tensor:
    """``masked`` (no host sync): [B, Cin, H, W] channels_last -> [B, Cout, Ho, Wo]."""
    return _run(fb, x, masks, config, sync=False)


FUSED = register(Variant(
    name="fused", modes=("spatial",), backends=("cuda",), run=run_fused, cost=spatial_cost,
    supports=_supports, configs=spatial_configs, needs_triton=True,
    description="Triton: gather+conv1 into a bordered buffer, implicit-GEMM 3x3 over "
                "active pixels, conv3 with residual scatter + ReLU; exact grids (1 sync)",
))

MASKED = register(Variant(
    name="masked", modes=("spatial",), backends=("cuda",), run=run_masked,
    cost=spatial_cost, supports=_supports, configs=spatial_configs, needs_triton=True,
    description="Triton kernels of `fused` on dense-sized grids with device counts: no "
                "host sync, CUDA-graph capturable",
))

__all__ = ["FUSED", "MASKED", "run_fused", "run_masked", "spatial_configs", "spatial_cost"]
