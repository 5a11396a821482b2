"""Spatial variants of the torch sparse engine: ``gather`` and ``patch`` (DESIGN.md
section 3), modes ``spatial`` and ``both`` (spatial + channel masks, exact κ correction of
``ops.kappa``).

Pipeline (NHWC rows throughout; x is channels_last so its NHWC view is free):

1. conv1 on the mask1 pixels only: row gather of x, one GEMM with bias, ReLU, scattered
   into a zero-bordered buffer [B, H+2, W+2, m] (its border and unwritten rows stay zero:
   conv2's zero padding is zero, not relu(b1)).
2. conv2 on the active output pixels: ``gather`` builds the im2col matrix [n, 9·m] with one
   row gather of the buffer and runs one GEMM; ``patch`` cuts a halo patch per active S x S
   cell ((S+2)² at stride 1, (2S+1)² at stride 2) and runs a dense F.conv2d, padding 0.
3. conv3 GEMM (with b3) on the active pixels, ``index_add_`` into the identity rows (a
   copy of x, the downsample's output, or x itself in place), one ReLU pass:
   relu(identity) everywhere, relu(identity + conv3) where active.

GEMMs run through oneDNN on CPU fp32 (``rows.PackedRows`` with the full weights, packed
per row bucket; ``rows_linear`` for a channel group), torch.addmm elsewhere.

In ``both`` mode the samples are grouped by equal channel mask (``kappa.channel_groups``)
and each group uses only its m active channels; the inactive ones contribute the exact
κ correction: b3 + W3[:, off] @ κ2[off] in conv3 and Σ_t valid_t · v_t in conv2.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nn.block import BlockMasks
from ..nn.maskers import upsample_mask
from . import masks as mk
from .channel import slice_cache
from .fold import FoldedBlock, derived
from .kappa import channel_groups, conv3_bias
from .packed import PackedConv
from .registry import Variant, register
from .rows import DENSE_CONV1_FRACTION, PackedRows, packs_rows, row_bucket, rows_linear
from .spatial_cost import gather_cost, patch_cost
from .spec import BlockSpec

CL = torch.channels_last

def _identity_rows(fb: FoldedBlock, x: torch.Tensor) -> torch.Tensor:
    """[B·Ho·Wo, Cout] NHWC rows of the identity path: x, or its folded downsample run as
    the block's cached PackedConv (packed per input shape; the unpacked oneDNN call was
    2.6x slower for 64->256 at 56x56, batch 1, and 3x at batch 359)."""
    b, c, h, w = x.shape
    if fb.wd is None:
        return x.permute(0, 2, 3, 1).reshape(b * h * w, c)
    y = slice_cache(fb).downsample(fb, (h, w))(x.contiguous(memory_format=CL), relu=False)
    return y.permute(0, 2, 3, 1).reshape(-1, fb.wd.shape[0])


@dataclass(frozen=True)
class _Weights:
    """Weights of one channel group (m active channels of the width w).

    w1 [m, Cin], b1 [m], w2 [m, m, 3, 3] (None when not needed), w2col [m, 9·m] (columns t·m + c_in,
    t = 3·dy+dx), b2 [m], w3 [Cout, m], b3 [Cout] (κ2 folded in), taps [9, m] κ1
    response or None; packed: oneDNN-packed convolutions of the full weights (None for a
    channel group).
    """

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor | None
    w2col: torch.Tensor
    b2: torch.Tensor
    w3: torch.Tensor
    b3: torch.Tensor
    taps: torch.Tensor | None
    packed: dict | None = None


def _w2col(w2: torch.Tensor) -> torch.Tensor:
    """[o, i, 3, 3] -> [o, 9·i] (a new tensor): im2col rows [n, 9·i] times its transpose."""
    return w2.permute(0, 2, 3, 1).reshape(w2.shape[0], 9 * w2.shape[1]).clone()


def _full_weights(fb: FoldedBlock) -> _Weights:
    """The whole block's weights with the im2col conv2 weight, cached on ``fb`` (attribute
    ``_spatial_weights``) and rebuilt when its tensors change. ``packed`` collects the
    pre-packed patch convolutions (``_patch_conv``) and the row GEMMs' packings, one per
    row bucket (``_linear``): a oneDNN weight packed for one row count can run 10-20x
    slower on another (128->512 over 384 rows: 0.21 ms packed for 384, 2.2 ms packed for
    1024; 1 thread), and the row count changes with every mask."""
    return derived(fb, "_spatial_weights", fb.fingerprint(), lambda: _Weights(
        fb.w1, fb.b1, fb.w2, _w2col(fb.w2), fb.b2, fb.w3, fb.b3, None, {}))


def _patch_conv(fb: FoldedBlock, wt: _Weights, p: int) -> PackedConv:
    """conv2 over P x P halo patches (padding 0), packed once per P (full weights only).
    Packed for [1, w, P, P], it runs any number of patches at full speed
    (``PackedConv.make(any_batch=True)``; 128 ch, 6x6 patches: 0.47 ms packed vs 0.56 ms
    F.conv2d for 24 patches; 1 thread). Before session 20 each new patch count was
    packed again (up to 1.7 ms at 512 channels), which timings on a fixed mask never
    paid and a stream of images did."""
    key = ("patch", p)
    if key not in wt.packed:
        wt.packed[key] = PackedConv.make(fb.w2, fb.b2, fb.stride, 0, (p, p), any_batch=True)
    return wt.packed[key]


# Row GEMMs on CPU fp32 run with weights pre-packed for oneDNN, which saves the per-call
# weight reorder (1024->256 over 163 rows: 0.19 vs 0.25 ms, 2 threads). A packed weight is
# only fast for the row count it was packed for (another count can be 10-20x slower), so
# row counts are rounded up to a bucket (at most 15 more rows, 1/8 more from 128 on; the
# extra rows repeat a valid one and are dropped) and one packing is cached per bucket.
MAX_PACKED = 96  # packed row GEMMs kept per block


def _bucketed(wt: _Weights, a: torch.Tensor) -> bool:
    return wt.packed is not None and packs_rows(a)


def _pad_index(idx: torch.Tensor, wt: _Weights, like: torch.Tensor) -> torch.Tensor:
    """idx padded to its row bucket (repeating idx[0]) when the GEMMs are bucketed."""
    n = idx.numel()
    if n == 0 or not _bucketed(wt, like):
        return idx
    nb = row_bucket(n)
    return idx if nb == n else torch.cat([idx, idx[:1].expand(nb - n)])


def _linear(a: torch.Tensor, wt: _Weights, name: str, w: torch.Tensor,
            bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
    """a [n, k] @ wᵀ + bias, then ReLU if asked -> [n, o]. With bucketed GEMMs (full
    weights on CPU fp32) a packed weight for exactly n rows is used (n is a bucket when
    the caller padded it; otherwise it is packed for this n)."""
    n = a.shape[0]
    if n == 0 or not _bucketed(wt, a):
        y = rows_linear(a, w, bias)
        return y.relu_() if relu else y
    key = (name, n)
    pr = wt.packed.get(key)
    if pr is None:
        if len(wt.packed) >= MAX_PACKED:
            for kk in [kk for kk in wt.packed if kk[0] != "patch"]:
                del wt.packed[kk]
        pr = wt.packed[key] = PackedRows(w, bias, n)
    return pr(a, relu)


def _group_weights(fb: FoldedBlock, active: torch.Tensor, need_w2: bool) -> _Weights:
    """Weights restricted to ``active`` channels [m], with the κ correction terms.

    need_w2: also slice the [m, m, 3, 3] conv2 weight (``patch``); ``gather`` slices only
    the cached im2col weight (two row/column gathers, no permute copy).
    """
    w, m = fb.width, active.numel()
    if m == w:
        return _full_weights(fb)
    rows = _full_weights(fb).w2col.view(w, 9, w).index_select(0, active)  # [m, 9, w]
    w2col = rows.index_select(2, active)
    w2 = fb.w2.index_select(0, active).index_select(1, active) if need_w2 else None
    taps = None
    if m:  # = kappa.conv2_taps: response of the active outputs to κ1 on inactive inputs
        kappa_off = fb.kappa1.clone().index_fill_(0, active, 0.0)
        taps = (rows @ kappa_off).t()  # [9, m]
    return _Weights(
        fb.w1.index_select(0, active), fb.b1.index_select(0, active), w2,
        w2col.reshape(m, 9 * m), fb.b2.index_select(0, active),
        fb.w3.index_select(1, active), conv3_bias(fb, active), taps,
    )


def _check(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks) -> None:
    fb.check_input(x, masks.channel, "spatial")
    if masks.mask3 is None or masks.mask1 is None or masks.grid is None:
        raise ValueError("spatial variants need masks.grid, mask3 and mask1; got None")
    ho, wo = mk.out_hw_of(tuple(x.shape[-2:]), fb.stride)
    b = x.shape[0]
    g = masks.grid
    if g.dim() != 4 or tuple(g.shape[:2]) != (b, 1):
        raise ValueError(f"masks.grid has shape {tuple(g.shape)}; expected [{b}, 1, gh, gw] "
                         f"for x {tuple(x.shape)}")
    if tuple(masks.mask3.shape) != (b, 1, ho, wo):
        raise ValueError(f"masks.mask3 has shape {tuple(masks.mask3.shape)}; expected "
                         f"{(b, 1, ho, wo)} for x {tuple(x.shape)} at stride {fb.stride}")
    if tuple(masks.mask1.shape) != (b, 1) + tuple(x.shape[-2:]):
        raise ValueError(f"masks.mask1 has shape {tuple(masks.mask1.shape)}; expected "
                         f"{(b, 1) + tuple(x.shape[-2:])}")


def _granularity(masks: BlockMasks, out_hw: tuple[int, int]) -> int:
    """S of uniform cells, from the grid; raises if the cells are not S x S patches."""
    gh, gw = masks.grid.shape[-2:]
    ho, wo = out_hw
    s = ho // gh
    if gh * s != ho or gw * s != wo:
        raise ValueError(f"mask grid {gh}x{gw} does not cut the output map {ho}x{wo} into "
                         "equal S x S cells; use the 'gather' variant")
    if not nearest_cells_are_patches((ho, wo), s):
        raise ValueError(f"on the output map {ho}x{wo} the reference's nearest upsampling "
                         f"of the {gh}x{gw} grid does not make {s}x{s} patches "
                         "(nearest_cells_are_patches); use the 'gather' variant")
    return s


def _conv1_into_buffer(x2d, pix1, wt: _Weights, batch, in_hw, dense: bool):
    """conv1 + bias + ReLU of the mask1 rows into a zero-bordered [B·(H+2)·(W+2), m]."""
    h, w = in_hw
    m = wt.b1.numel()
    buf = x2d.new_zeros(batch, h + 2, w + 2, m)
    if dense:  # every pixel: one GEMM, then a strided copy into the interior
        h1 = _linear(x2d, wt, "w1", wt.w1, wt.b1, relu=True)
        buf[:, 1:h + 1, 1:w + 1].copy_(h1.view(batch, h, w, m))
    else:
        rows = _pad_index(pix1, wt, x2d)
        h1 = _linear(x2d.index_select(0, rows), wt, "w1", wt.w1, wt.b1, relu=True)
        h1 = h1[:pix1.numel()]
        # rows are distinct and the buffer is zero: index_add_ is a copy, and 2.7x faster
        # than index_copy_ on CPU (0.05 vs 0.13 ms for 1568 x 256 floats)
        buf.view(-1, m).index_add_(0, mk.buffer_rows(pix1, batch, in_hw), h1)
    return buf.view(-1, m)


def _conv2_bias(wt: _Weights, pix, batch, in_hw, stride) -> torch.Tensor:
    """b2, plus the κ1 response of the inactive channels at ``pix`` ([n, m]) if any."""
    if wt.taps is None:
        return wt.b2
    valid = mk.tap_validity_rows(pix, batch, in_hw, stride, wt.taps.dtype)
    return torch.addmm(wt.b2, valid, wt.taps)


def _conv2_gather(buf2d, pix, wt: _Weights, batch, in_hw, stride):
    """[n] output pixels -> [n', m] relu(conv2 + bias) by im2col GEMM; n' >= n rows (the
    row bucket when GEMMs are bucketed; rows past n are padding)."""
    m = wt.b2.numel()
    rows = mk.tap_rows(_pad_index(pix, wt, buf2d), batch, in_hw, stride).reshape(-1)
    cols = buf2d.index_select(0, rows).view(-1, 9 * m)
    if wt.taps is None:
        return _linear(cols, wt, "w2col", wt.w2col, wt.b2, relu=True)
    return rows_linear(cols, wt.w2col, None).add_(
        _conv2_bias(wt, pix, batch, in_hw, stride)).relu_()


def _conv2_patch(fb, buf2d, cells, pix, wt: _Weights, batch, in_hw, stride, s):
    """[n] active cells -> [n·S·S, m] relu(conv2 + bias), rows in ``pix`` order."""
    m = wt.b2.numel()
    p = mk.patch_size(s, stride)
    rows, _ = mk.patch_rows(cells, batch, in_hw, stride, s)
    patches = buf2d.index_select(0, rows.reshape(-1)).view(-1, p, p, m).permute(0, 3, 1, 2)
    if wt.taps is None:  # [n, m, S, S], bias and ReLU fused where packed
        y = _patch_conv(fb, wt, p)(patches, relu=True)
        return y.permute(0, 2, 3, 1).reshape(-1, m)
    y = F.conv2d(patches, wt.w2, None, stride=stride)
    y = y.permute(0, 2, 3, 1).reshape(-1, m)
    return y.add_(_conv2_bias(wt, pix, batch, in_hw, stride)).relu_()


def _run(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks, use_patch: bool,
         inplace: bool = False) -> torch.Tensor:
    _check(fb, x, masks)
    batch, cin, h, w = x.shape
    in_hw = (h, w)
    stride = fb.stride
    ho, wo = mk.out_hw_of(in_hw, stride)
    cout = fb.out_channels
    s = _granularity(masks, (ho, wo)) if use_patch else 0

    x2d = x.permute(0, 2, 3, 1).reshape(batch * h * w, cin)  # a view for channels_last x
    idn2d = _identity_rows(fb, x)

    if use_patch:
        cells = mk.active_cells(masks.grid)
        pix = mk.patch_rows(cells, batch, in_hw, stride, s)[1].reshape(-1)
    else:
        cells = None
        pix = mk.active_pixels(masks.mask3)
    inplace = inplace and fb.wd is None and x.is_contiguous(memory_format=CL)
    if pix.numel() == 0:
        if inplace:  # x >= 0: relu(x) is x
            return x
        return torch.relu(idn2d).view(batch, ho, wo, cout).permute(0, 3, 1, 2)
    # out = relu(identity + scatter(conv3)): index_add_ of the active rows, one ReLU pass;
    # the downsample output is a new tensor, ours to overwrite; x only when given away
    # (every conv1 gather below reads a sample's rows before its own scatter)
    out2d = idn2d if fb.wd is not None or inplace else idn2d.clone()
    pix1 = mk.active_pixels(masks.mask1)

    if masks.channel is None:
        groups = [(None, None)]
    else:
        groups = channel_groups(masks.channel, fb.width)
        if len(groups) == 1:
            groups = [(None, groups[0][1])]

    for samples, active in groups:
        g_pix, g_pix1, g_cells = pix, pix1, cells
        if samples is not None:  # keep the pixels of this group's samples
            member = torch.zeros(batch, dtype=torch.bool, device=x.device)
            member[samples] = True
            if use_patch:
                keep = member.index_select(0, cells // (masks.grid.shape[-2]
                                                        * masks.grid.shape[-1]))
                g_cells = cells[keep]
                g_pix = mk.patch_rows(g_cells, batch, in_hw, stride, s)[1].reshape(-1)
            else:
                g_pix = pix[member.index_select(0, pix // (ho * wo))]
            g_pix1 = pix1[member.index_select(0, pix1 // (h * w))]
            if g_pix.numel() == 0:
                continue
        wt = _full_weights(fb) if active is None else _group_weights(fb, active, use_patch)
        if wt.b2.numel() == 0:  # no active channel: conv3 sees the constant κ2 only
            y = wt.b3.expand(g_pix.numel(), cout)
        else:
            dense1 = samples is None and g_pix1.numel() >= DENSE_CONV1_FRACTION * x2d.shape[0]
            buf2d = _conv1_into_buffer(x2d, g_pix1, wt, batch, in_hw, dense1)
            if use_patch:
                h2 = _conv2_patch(fb, buf2d, g_cells, g_pix, wt, batch, in_hw, stride, s)
            else:
                h2 = _conv2_gather(buf2d, g_pix, wt, batch, in_hw, stride)
            n2 = g_pix.numel()
            if h2.shape[0] == n2 and _bucketed(wt, h2) and row_bucket(n2) != n2:
                h2 = torch.cat([h2, h2.new_zeros(row_bucket(n2) - n2, h2.shape[1])])
            y = _linear(h2, wt, "w3", wt.w3, wt.b3, relu=False)[:n2]
        out2d.index_add_(0, g_pix, y)
    return out2d.relu_().view(batch, ho, wo, cout).permute(0, 3, 1, 2)


def gather_block(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks) -> torch.Tensor:
    """Sparse block, conv2 as im2col GEMM over the active output pixels.

    fb: folded block; x: [B, Cin, H, W] channels_last; masks: spatial masks (and the
    channel mask in ``both`` mode). Returns [B, Cout, Ho, Wo] channels_last.

    Raises:
        ValueError: on a shape, dtype or device mismatch, or missing spatial masks.
    """
    return _run(fb, x, masks, use_patch=False)


def patch_block(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks) -> torch.Tensor:
    """Sparse block, conv2 as a dense conv over the halo patch of each active S x S cell.

    Same arguments and result as ``gather_block``.

    Raises:
        ValueError: as ``gather_block``, and when the mask grid does not cut the output
            map into equal cells (``patch_supports`` asks for S dividing Ho and Wo; a grid
            of equal cells larger than S, e.g. S=3 on 8x8, also runs), or the reference's
            cells are not those patches (``nearest_cells_are_patches``).
    """
    return _run(fb, x, masks, use_patch=True)


def patch_supports(spec: BlockSpec) -> bool:
    """Uniform S x S cells (S divides Ho and Wo) with S >= 2, where the reference's cells
    are those patches (``nearest_cells_are_patches``: without that check patch gave
    relative error 0.44 at S >= 41 on maps S divides, 82x82 and S = 41 the smallest)."""
    return (spec.spatial and spec.granularity >= 2 and spec.uniform_patches
            and nearest_cells_are_patches(tuple(spec.out_hw), spec.granularity))


@functools.lru_cache(maxsize=1024)
def nearest_cells_are_patches(out_hw: tuple[int, int], s: int) -> bool:
    """Whether the reference's nearest upsampling of the mask grid
    (``nn.maskers.upsample_mask``: float32 scale, PyTorch's rule) puts output pixel (i, j)
    in cell (i // s, j // s), the S x S patches ``patch`` cuts: S dividing the map is not
    enough, at 82x82 with S = 41 pixel 41 falls in cell 0 (41 x float32(2/82) < 1)."""
    ho, wo = out_hw
    if s < 1 or ho % s or wo % s:
        return False
    gh, gw = ho // s, wo // s
    ids = torch.arange(gh * gw, dtype=torch.float32).view(1, 1, gh, gw)
    want = (torch.arange(ho)[:, None] // s) * gw + torch.arange(wo)[None, :] // s
    return bool(torch.equal(upsample_mask(ids, (ho, wo))[0, 0].long(), want))


def _gather_run(fb, x, masks, config=None):
    return gather_block(fb, x, masks)


def _patch_run(fb, x, masks, config=None):
    return patch_block(fb, x, masks)


def _gather_run_inplace(fb, x, masks, config=None):
    return _run(fb, x, masks, use_patch=False, inplace=True)


def _patch_run_inplace(fb, x, masks, config=None):
    return _run(fb, x, masks, use_patch=True, inplace=True)


GATHER = register(Variant(
    name="gather", modes=("spatial", "both"), backends=("cpu", "cuda"), run=_gather_run,
    run_inplace=_gather_run_inplace,
    cost=gather_cost, supports=lambda spec: spec.spatial,
    description="conv1 on mask1 rows, conv2 as im2col GEMM on active pixels, conv3 GEMM",
))

PATCH = register(Variant(
    name="patch", modes=("spatial", "both"), backends=("cpu", "cuda"), run=_patch_run,
    run_inplace=_patch_run_inplace,
    cost=patch_cost, supports=patch_supports,
    description="as gather, conv2 as dense conv over (S+2)^2 / (2S+1)^2 halo patches",
))
