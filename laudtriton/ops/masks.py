"""Masks -> index lists for the torch sparse engine (DESIGN.md sections 2 and 3).

Every index is int64 on the masks' device. Pixels are flat over the batch: an output
pixel (b, i, j) is ``(b·Ho + i)·Wo + j``, an input pixel (b, y, x) is ``(b·H + y)·W + x``.
Conv1 results live in a zero-bordered NHWC buffer [B, H+2, W+2, w] whose row
``(b·(H+2) + y + 1)·(W+2) + x + 1`` holds input pixel (b, y, x); its border rows stay zero,
which is conv2's zero padding.

The tables that turn pixels into buffer rows depend only on shapes, so they are built
once per shape (``functools.lru_cache``, the explicit cache of this module) and gathered
with one ``index_select`` per call.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import numpy as np
import torch

from ..nn.block import BlockMasks
from ..nn.maskers import MaskerChannelMLP

NUMPY_DTYPES = (torch.bool, torch.float32, torch.float64)  # read through numpy on CPU


def host_array(t: torch.Tensor) -> np.ndarray | None:
    """t's numpy view (no copy, no torch op) when t is a CPU tensor of a dtype in
    NUMPY_DTYPES that needs no grad; else None. Small reads of masks go through it: a
    torch op costs 10-40 us inside a model (BENCHMARKS.md, session 14)."""
    if t.device.type == "cpu" and t.dtype in NUMPY_DTYPES and not t.requires_grad:
        return t.numpy()
    return None


def dispatch_rate(spec, masks: BlockMasks) -> float:
    """The rate a block's dispatch table (``schedule.DispatchTable``) is read at, for
    ``spec`` (a BlockSpec): the mean of its channel mask (mode ``channel``) or of its grid
    (spatial mask or layer gate). Timings are recorded at the rate their masks give this
    way. Compile, its tuning and ``tune.sweep`` read ``schedule.run_rate``, the same mean
    in float64 for masks of a half type (whose own mean is rounded). A CPU mask is read through
    numpy, without the two torch ops (mean, item) that cost about 40 us per block inside
    a model (BENCHMARKS.md, session 14)."""
    t = masks.channel if spec.mode == "channel" else masks.grid
    a = host_array(t)
    if a is not None:
        return float(a.mean(dtype=np.float64))
    return float(t.mean() if t.is_floating_point() else t.float().mean())


def active_pixels(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the nonzero entries of a [B, 1, h, w] 0/1 mask (float or bool).

    Returns [n] int64, ascending, over B·h·w (mask3: active output pixels; mask1: the
    union of conv1 input pixels). A CPU mask of a numpy dtype is read through numpy:
    no torch op, where compare, nonzero and squeeze cost 10-40 us each inside a model
    (BENCHMARKS.md, session 14).
    """
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape [B, 1, h, w], got {tuple(mask.shape)}")
    a = host_array(mask)
    if a is not None:
        return torch.from_numpy(np.flatnonzero(a if a.dtype == np.bool_ else a > 0.5))
    flat = mask.reshape(-1)
    if flat.dtype != torch.bool:
        flat = flat > 0.5
    return torch.nonzero(flat).squeeze(1)


def active_cells(grid: torch.Tensor) -> torch.Tensor:
    """Flat indices (b·gh + cy)·gw + cx of the active cells of a [B, 1, gh, gw] grid: [n]."""
    return active_pixels(grid)


def cells_to_bcxy(cells: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """[n] flat cell indices -> [n, 3] int64 rows (b, cell_y, cell_x)."""
    gh, gw = grid_hw
    return torch.stack((cells // (gh * gw), (cells // gw) % gh, cells % gw), dim=1)


def out_hw_of(in_hw: tuple[int, int], stride: int) -> tuple[int, int]:
    """Output size (⌊(H−1)/s⌋+1, ⌊(W−1)/s⌋+1) of a 3x3 conv, padding 1, stride s."""
    return ((in_hw[0] - 1) // stride + 1, (in_hw[1] - 1) // stride + 1)


def _key(device) -> str:
    return str(torch.device(device))


@lru_cache(maxsize=256)
def _pad_rows(batch: int, h: int, w: int, device: str) -> torch.Tensor:
    b = torch.arange(batch, device=device)[:, None, None]
    y = torch.arange(h, device=device)[None, :, None]
    x = torch.arange(w, device=device)[None, None, :]
    return ((b * (h + 2) + y + 1) * (w + 2) + x + 1).reshape(-1)


def buffer_rows(pixels: torch.Tensor, batch: int, in_hw: tuple[int, int]) -> torch.Tensor:
    """Rows of the zero-bordered buffer [B·(H+2)·(W+2)] that hold input ``pixels`` [n]."""
    return _pad_rows(batch, in_hw[0], in_hw[1], _key(pixels.device)).index_select(0, pixels)


@lru_cache(maxsize=256)
def _tap_rows(batch: int, h: int, w: int, stride: int, device: str) -> torch.Tensor:
    ho, wo = out_hw_of((h, w), stride)
    b = torch.arange(batch, device=device)[:, None, None, None]
    i = torch.arange(ho, device=device)[None, :, None, None]
    j = torch.arange(wo, device=device)[None, None, :, None]
    d = torch.arange(3, device=device)
    dy = d.repeat_interleave(3)[None, None, None, :]  # tap t = 3·dy + dx
    dx = d.repeat(3)[None, None, None, :]
    # tap (dy, dx) of output (i, j) reads input (i·s + dy − 1, j·s + dx − 1): padded row
    # i·s + dy, padded column j·s + dx.
    return ((b * (h + 2) + i * stride + dy) * (w + 2) + j * stride + dx).reshape(-1, 9)


def tap_rows(pixels: torch.Tensor, batch: int, in_hw: tuple[int, int],
             stride: int) -> torch.Tensor:
    """[n, 9] buffer rows read by the 3x3 taps (t = 3·dy + dx) of output ``pixels`` [n]."""
    table = _tap_rows(batch, in_hw[0], in_hw[1], stride, _key(pixels.device))
    return table.index_select(0, pixels)


@lru_cache(maxsize=256)
def _tap_valid(batch: int, h: int, w: int, stride: int, device: str,
               dtype: torch.dtype) -> torch.Tensor:
    ho, wo = out_hw_of((h, w), stride)
    d = torch.arange(3, device=device) - 1
    ys = torch.arange(ho, device=device)[:, None] * stride + d  # [Ho, 3]
    xs = torch.arange(wo, device=device)[:, None] * stride + d  # [Wo, 3]
    vy = (ys >= 0) & (ys < h)
    vx = (xs >= 0) & (xs < w)
    valid = (vy[:, None, :, None] & vx[None, :, None, :]).reshape(ho * wo, 9)
    return valid.to(dtype).repeat(batch, 1)


def tap_validity_rows(pixels: torch.Tensor, batch: int, in_hw: tuple[int, int], stride: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n, 9] 1 where tap t of output ``pixels`` reads inside the image, else 0.

    Same values as ``ops.kappa.tap_validity`` gathered at the pixels (per batch sample).
    """
    table = _tap_valid(batch, in_hw[0], in_hw[1], stride, _key(pixels.device), dtype)
    return table.index_select(0, pixels)


def patch_size(granularity: int, stride: int) -> int:
    """Side of the conv1 halo patch of one S x S output cell: S+2 (stride 1), 2S+1 (2)."""
    return (granularity - 1) * stride + 3


@lru_cache(maxsize=256)
def _patch_tables(batch: int, h: int, w: int, stride: int, s: int,
                  device: str) -> tuple[torch.Tensor, torch.Tensor]:
    ho, wo = out_hw_of((h, w), stride)
    gh, gw = ho // s, wo // s
    p = patch_size(s, stride)
    b = torch.arange(batch, device=device)[:, None, None]
    cy = torch.arange(gh, device=device)[None, :, None]
    cx = torch.arange(gw, device=device)[None, None, :]
    # cell (cy, cx) covers outputs [cy·S, cy·S + S) and reads padded rows from cy·S·s
    in_base = ((b * (h + 2) + cy * s * stride) * (w + 2) + cx * s * stride).reshape(-1, 1)
    r = torch.arange(p, device=device)
    in_off = (r[:, None] * (w + 2) + r[None, :]).reshape(1, -1)
    out_base = ((b * ho + cy * s) * wo + cx * s).reshape(-1, 1)
    q = torch.arange(s, device=device)
    out_off = (q[:, None] * wo + q[None, :]).reshape(1, -1)
    return in_base + in_off, out_base + out_off


def patch_rows(cells: torch.Tensor, batch: int, in_hw: tuple[int, int], stride: int,
               granularity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Buffer rows of the halo patches and output pixels of active S x S ``cells`` [n].

    Requires S to divide Ho and Wo (uniform cells). Returns ([n, P·P] buffer rows,
    P = ``patch_size(S, stride)``, row-major in the patch; [n, S·S] flat output pixels,
    row-major in the cell).
    """
    ho, wo = out_hw_of(in_hw, stride)
    if ho % granularity or wo % granularity:
        raise ValueError(
            f"granularity {granularity} does not divide the output map {ho}x{wo}; "
            "patch rows need uniform S x S cells"
        )
    tin, tout = _patch_tables(batch, in_hw[0], in_hw[1], stride, granularity,
                              _key(cells.device))
    return tin.index_select(0, cells), tout.index_select(0, cells)


def cover_counts(in_size: int, out_size: int, cells: int, stride: int) -> list[int]:
    """1-D: for each input position, how many mask cells' conv2 receptive fields cover it
    (``_covering_cells``)."""
    return [len(c) for c in _covering_cells(in_size, out_size, cells, stride)]


@lru_cache(maxsize=1024)
def expected_mask1_fraction(in_hw: tuple[int, int], stride: int, grid: tuple[int, int],
                            active: int) -> float:
    """Expected fraction of input pixels in mask1 when ``active`` of the gh·gw cells,
    drawn uniformly without replacement, are on (DESIGN.md section 2, mask1).

    A pixel covered by k cells stays off with probability Π_{j<k} (N−a−j)/(N−j).
    Coverage is separable: k(y, x) = k_y(y)·k_x(x).
    """
    h, w = in_hw
    ho, wo = out_hw_of(in_hw, stride)
    gh, gw = grid
    n = gh * gw
    ky = cover_counts(h, ho, gh, stride)
    kx = cover_counts(w, wo, gw, stride)
    p_off = {}
    for k in {a * b for a in set(ky) for b in set(kx)}:
        p = 1.0
        for j in range(k):
            p *= max(n - active - j, 0) / (n - j) if n - j > 0 else 0.0
        p_off[k] = p
    hist_y: dict[int, int] = {}
    hist_x: dict[int, int] = {}
    for k in ky:
        hist_y[k] = hist_y.get(k, 0) + 1
    for k in kx:
        hist_x[k] = hist_x.get(k, 0) + 1
    on = sum(cy * cx * (1.0 - p_off[a * b]) for a, cy in hist_y.items()
             for b, cx in hist_x.items())
    return on / (h * w)


# -- masks for compiled blocks -----------------------------------------------------------
# The reference computes mask3 by upsampling the grid and mask1 by placing mask3 on the
# stride lattice and max-pooling it: five full-map passes per block. For a fixed shape
# both are linear in the grid, so they reduce to tables built once per shape:
#   mask3[b, i, j] = grid[b, cy(i), cx(j)]             (cy, cx: PyTorch's nearest rule)
#   mask1[b, y, x] = (Ay · grid[b] · Axᵀ)[y, x] > 0     (Ay[y, c] = 1 if some output row i
#                                                       of cell c has |i·s − y| <= 1)
# The products count active cells (small integers), so they are exact in floating point.

@lru_cache(maxsize=256)
def _cell_of(out_size: int, cells: int) -> tuple[int, ...]:
    """Cell of each output position under ``F.interpolate(mode="nearest")`` (its own rule,
    read back from an upsampled index ramp, so the two can never disagree)."""
    ramp = torch.arange(cells, dtype=torch.float32).view(1, 1, cells)
    up = torch.nn.functional.interpolate(ramp, size=out_size, mode="nearest")
    return tuple(int(v) for v in up.flatten().tolist())


@lru_cache(maxsize=256)
def _covering_cells(in_size: int, out_size: int, cells: int,
                    stride: int) -> tuple[tuple[int, ...], ...]:
    """1-D: for each input position, the mask cells whose conv2 receptive fields cover it.
    Output position i belongs to the cell ``F.interpolate(mode="nearest")`` gives it
    (``_cell_of``: ⌊i·cells/out_size⌋ but at a few sizes, where PyTorch's float32 scale
    rounds down) and reads inputs i·s−1 .. i·s+1."""
    cover: list[set[int]] = [set() for _ in range(in_size)]
    for i, c in enumerate(_cell_of(out_size, cells)):
        for y in (i * stride - 1, i * stride, i * stride + 1):
            if 0 <= y < in_size:
                cover[y].add(c)
    return tuple(tuple(sorted(c)) for c in cover)


@lru_cache(maxsize=256)
def _mask_tables(in_hw: tuple[int, int], stride: int, grid: tuple[int, int], device: str,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cell index of each output pixel [Ho·Wo] int64, Ay [H, gh], Axᵀ [gw, W])."""
    ho, wo = out_hw_of(in_hw, stride)
    cy, cx = _cell_of(ho, grid[0]), _cell_of(wo, grid[1])
    cell = (torch.tensor(cy)[:, None] * grid[1] + torch.tensor(cx)[None, :]).reshape(-1)

    def cover(size: int, out: int, cells: int) -> torch.Tensor:
        a = torch.zeros(size, cells, dtype=dtype)
        for y, covering in enumerate(_covering_cells(size, out, cells, stride)):
            a[y, list(covering)] = 1.0
        return a

    ay = cover(in_hw[0], ho, grid[0])
    ax = cover(in_hw[1], wo, grid[1])
    return cell.to(device), ay.to(device), ax.t().contiguous().to(device)


def spatial_masks_from_grid(grid: torch.Tensor, in_hw: tuple[int, int], stride: int
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask3 [B, 1, Ho, Wo] float, mask1 [B, 1, H, W] bool) of a [B, 1, gh, gw] 0/1 grid;
    equal to ``nn.maskers.upsample_mask`` and ``expand_mask1`` (tested), in three small ops
    instead of five full-map passes."""
    b, _, gh, gw = grid.shape
    ho, wo = out_hw_of(in_hw, stride)
    cell, ay, axt = _mask_tables(tuple(in_hw), stride, (gh, gw), _key(grid.device), grid.dtype)
    mask3 = grid.reshape(b, gh * gw).index_select(1, cell).view(b, 1, ho, wo)
    # Ay · grid · Axᵀ counts the active cells each input pixel feeds (small integers,
    # exact in any order); plain 2-D mm/bmm: a broadcast matmul dispatches 13 ops, this 3-4
    t = torch.mm(grid.reshape(b * gh, gw), axt)
    cover = torch.mm(ay, t) if b == 1 else torch.bmm(ay.expand(b, -1, -1), t.view(b, gh, -1))
    return mask3, (cover > 0.5).view(b, 1, *in_hw)


def grid_pool(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """x [B, C, H, W] average-pooled to ``grid`` (the spatial masker's pooling,
    ``adaptive_avg_pool2d``). When the grid divides the map, avg_pool2d with cells as
    kernel and stride computes the same windows 10-30% faster on channels_last CPU
    tensors (measured 2-core x86): bit-identical for grids larger than 1x1; for 1x1, where
    adaptive pooling takes mean()'s other summation order, within float rounding."""
    (h, w), (gh, gw) = x.shape[-2:], grid
    if (h, w) == (gh, gw):
        return x
    if h % gh or w % gw:
        return torch.nn.functional.adaptive_avg_pool2d(x, grid)
    return torch.nn.functional.avg_pool2d(x, (h // gh, w // gw))


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] average-pooled to 1x1 as [B, C] (``grid_pool``), always a new tensor:
    on a 1x1 map grid_pool returns x itself, which a caller that keeps the pooling while x
    changes must not hold."""
    p = grid_pool(x, (1, 1)).flatten(1)
    return p.clone() if tuple(x.shape[-2:]) == (1, 1) else p


class Gates:
    """A LAUD block's maskers (``nn.block.LaudBottleneck``) prepared once for inference:
    calling it gives the eval-mode masks that ``compute_masks`` gives, in few small ops.

    Each masker decides keep (logit 0) against skip (logit 1), so only their difference
    matters: the last linear layer (the spatial masker's 1x1 conv) is kept as that
    difference, w0 - w1 and b0 - b1, and a decision is one dot product and a sign test
    (``heaviside``, which gives the float 0/1 mask directly). After the block's
    convolutions a small op costs about twice as much as in a loop (its code and data
    left the caches; 2-core x86), and such ops are most of a masker's cost: one channel
    masker (1024 channels, 128 groups) after a 1x1 conv took 66 us this way, 79 us with
    both logits, a compare and a cast (BENCHMARKS.md, session 13). Further:

    - the pooling is ``grid_pool`` (avg_pool2d with cells as kernel and stride);
    - mask3 and mask1 come from the grid (``spatial_masks_from_grid``);
    - the layer gate ([B, 1, 1, 1]) gets mask3 and mask1 as broadcast views (all of a
      sample's pixels share its decision), with no per-pixel work.

    A snapshot: the maskers' weights are read here, so later changes to them do not reach
    a Gates made before. Logits may differ from the reference's in the last bits (another
    summation order), as they already do between a folded and an unfolded network. Where
    the pooled activations overflow float32 (sums near 3.4e38, activations around 1e36),
    the difference of two infinite logits is not their comparison, and the decision may
    differ from the reference's (whose own logits are then inf or nan).
    """

    def __init__(self, block):
        self.block = block
        with torch.no_grad():
            mc = block.masker_channel
            # ([(bias, weightᵀ)] of the hidden layers, the last one's difference: bias, weightᵀ)
            self.mlp = None
            if isinstance(mc, MaskerChannelMLP):
                *hidden, last = mc.linears()
                g = mc.groups
                self.mlp = ([(lin.bias.clone(), lin.weight.t().clone()) for lin in hidden],
                            last.bias[:g] - last.bias[g:],
                            (last.weight[:g] - last.weight[g:]).t().contiguous())
            # another channel masker (``MaskerChannelConvLinear``) runs as it is, copied
            self.conv_linear = None if self.mlp is not None or mc is None else (
                copy.deepcopy(mc).eval())
            self.spatial = None  # (bias, weight) of the spatial masker's difference
            if block.masker_spatial is not None:
                conv = block.masker_spatial.conv
                w = conv.weight.view(2, -1)
                self.spatial = (conv.bias[0] - conv.bias[1], w[0] - w[1])
            p = next(block.parameters())
            self.one = torch.ones((), dtype=p.dtype, device=p.device)

    def __call__(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> BlockMasks:
        """The masks for x [B, Cin, H, W].

        pooled: ``global_pool(x)`` when the caller has it (a compiled model keeps it over
        layer blocks, ``order.SampleOrder``); the channel MLP masker and a 1x1 grid (the
        layer gate) then read it instead of pooling x."""
        block = self.block
        b, _, h, w = x.shape
        grid = mask3 = mask1 = channel = None
        if self.mlp is not None:
            v = grid_pool(x, (1, 1)).flatten(1) if pooled is None else pooled  # read, not kept
            hidden, bias, weight = self.mlp
            for hb, hw in hidden:
                v = torch.addmm(hb, v, hw).relu_()
            channel = torch.heaviside(torch.addmm(bias, v, weight), self.one)
        elif self.conv_linear is not None:
            channel, _ = self.conv_linear(x)
        if self.spatial is not None:
            g = block.grid_size((h, w))
            if g == (1, 1) and pooled is not None:
                rows = pooled
            else:
                p = grid_pool(x, g)
                rows = p.permute(0, 2, 3, 1).reshape(-1, p.shape[1])
            bias, weight = self.spatial
            grid = torch.heaviside(torch.addmv(bias, rows, weight), self.one).view(b, 1, *g)
            if g == (1, 1):
                ho, wo = out_hw_of((h, w), block.stride)
                mask3 = grid.expand(b, 1, ho, wo)
                mask1 = (grid > 0.5).expand(b, 1, h, w)
            else:
                mask3, mask1 = spatial_masks_from_grid(grid, (h, w), block.stride)
        return BlockMasks(grid, mask3, mask1, channel)
