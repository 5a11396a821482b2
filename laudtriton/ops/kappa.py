"""Exact channel skipping under the official mask-before-BN order (DESIGN.md section 2).

An inactive channel c carries κ1[c] = relu(bn1(0)) into conv2 and κ2[c] = relu(bn2(0))
into conv3, not zero. Skipping it is exact only with a per-sample correction:

- conv3: bias b3 + W3[:, inactive] @ κ2[inactive];
- conv2: the response of W2[active, inactive] to the constant map κ1 (zero outside the
  image): Σ_t valid_t(i, j) · v_t with v_t = W2[active, inactive, t] @ κ1[inactive],
  constant in the interior, different on the 1-pixel border (9 tap patterns).
"""

from __future__ import annotations

import functools

import torch

from .fold import FoldedBlock


def channel_groups(channel_mask: torch.Tensor, width: int):
    """Group samples with equal channel masks.

    channel_mask: [B, G] 0/1. Returns a list of (samples [n] int64, active channels [m]
    int64) pairs; channels of group g are [g·k, (g+1)·k), k = width / G.
    """
    k = width // channel_mask.shape[1]
    keys = (channel_mask > 0.5).cpu()
    uniq, inverse = torch.unique(keys, dim=0, return_inverse=True)
    out = []
    for u in range(uniq.shape[0]):
        samples = torch.nonzero(inverse == u).flatten().to(channel_mask.device)
        groups = torch.nonzero(uniq[u]).flatten()
        chans = (groups[:, None] * k + torch.arange(k)).flatten().to(channel_mask.device)
        out.append((samples, chans))
    return out


def conv3_bias(fb: FoldedBlock, active: torch.Tensor) -> torch.Tensor:
    """[Cout] bias of conv3 restricted to ``active`` input channels, κ2 folded in:
    b3 + W3[:, inactive] @ κ2[inactive], computed as W3 @ κ2 with the active entries
    zeroed (one pass over W3; column indexing costs more)."""
    if active.numel() == fb.width:
        return fb.b3
    return torch.addmv(fb.b3, fb.w3, fb.kappa2.clone().index_fill_(0, active, 0.0))


def conv2_taps(fb: FoldedBlock, active: torch.Tensor) -> torch.Tensor:
    """[9, m] per-tap response v_t of active outputs to κ1 on inactive inputs (t = 3·dy+dx).
    The defining form; ``ops.channel.slice_weights`` gets the same from precomputed
    totals."""
    keep = torch.ones(fb.width, dtype=torch.bool, device=active.device)
    keep[active] = False
    inactive = torch.nonzero(keep).flatten()
    w = fb.w2[active][:, inactive]  # [m, n, 3, 3]
    return torch.einsum("onyx,n->yxo", w, fb.kappa1[inactive]).reshape(9, active.numel())


def tap_validity(in_hw: tuple[int, int], stride: int, device=None, dtype=torch.float32):
    """[Ho·Wo, 9]: 1 where tap t = 3·dy+dx of output (i, j) reads pixel
    (i·s + dy − 1, j·s + dx − 1) inside the H x W image, else 0 (zero padding).
    Cached per arguments: the same tensor is returned, do not modify it."""
    return _tap_validity(tuple(in_hw), stride, device, dtype)


@functools.lru_cache(maxsize=64)
def _tap_validity(in_hw: tuple[int, int], stride: int, device, dtype) -> torch.Tensor:
    h, w = in_hw
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    d = torch.arange(3, device=device) - 1
    ys = torch.arange(ho, device=device)[:, None] * stride + d  # [Ho, 3]
    xs = torch.arange(wo, device=device)[:, None] * stride + d  # [Wo, 3]
    vy = (ys >= 0) & (ys < h)
    vx = (xs >= 0) & (xs < w)
    valid = vy[:, None, :, None] & vx[None, :, None, :]  # [Ho, Wo, 3, 3]
    return valid.reshape(ho * wo, 9).to(dtype)


def conv2_correction(fb: FoldedBlock, active: torch.Tensor, in_hw: tuple[int, int]):
    """[Ho·Wo, m] additive conv2 correction for every output pixel (row-major)."""
    taps = conv2_taps(fb, active)
    return tap_validity(in_hw, fb.stride, taps.device, taps.dtype) @ taps


def channel_work(spec, rate: float) -> tuple[float, float]:
    """(multiply-adds per sample, weight elements read) of a channel-skipping block at
    channel rate ``rate``: conv1·r + conv2·r² + conv3·r, plus the dense downsample."""
    c1, c2, c3, ds = spec.conv_macs()
    f = (c1 + c3) * rate + c2 * rate * rate + ds
    c, m, o = spec.in_channels, spec.width * rate, spec.out_channels
    wts = c * m + 9 * m * m + m * o + (c * o if spec.downsample else 0)
    return f, wts
