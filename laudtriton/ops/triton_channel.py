"""The ``channel_gemm`` variant (Triton): channel skipping with per-sample active channel
lists, no host sync (DESIGN.md sections 2-3).

Per block: index lists from the channel mask (argsort on the device), the κ corrections
as small dense products (conv3 bias [B, Cout], conv2 taps [B, 9, w]), then three launches:
conv1 (dense K, gathered output rows) -> compact h1 [B, H, W, w]; 3x3 conv over active
in/out channels + κ1 taps -> compact h2 [B, Ho, Wo, w]; conv3 (K loop over active
channels, per-sample bias) + identity + ReLU -> [B, Ho, Wo, Cout]. The downsample (when
present) is the dense cuDNN 1x1 conv of ``ops.dense.identity_path``.

Registration imports no Triton: the kernel module is imported inside ``run``.
"""

from __future__ import annotations

import torch

from ..nn.block import BlockMasks
from .dense import identity_path
from .fold import FoldedBlock, derived
from .kappa import channel_work
from .registry import Cost, Variant, register
from .spec import BlockSpec

CL = torch.channels_last


def channel_lists(channel: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
    """[B, G] 0/1 group mask -> (active [B, w] bool, idx [B, w] int32, n [B] int32).

    idx[b, :n[b]] lists the active channels of sample b in increasing order, the rest of
    the row the inactive ones; everything stays on the device (no host sync).
    """
    k = width // channel.shape[1]
    active = (channel > 0.5).repeat_interleave(k, dim=1)
    idx = torch.argsort((~active).to(torch.int8), dim=1, stable=True).to(torch.int32)
    return active, idx.contiguous(), active.sum(dim=1, dtype=torch.int32)


def kappa_terms(fb: FoldedBlock, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample κ corrections in fp32 for active [B, w] bool.

    Returns (b3 [B, Cout]: b3 + W3[:, inactive] @ κ2[inactive],
             taps [B, 9, w]: v_t[o] = Σ_{c inactive} W2[o, c, t] · κ1[c], t = 3·dy + dx).
    """
    off = (~active).float()
    b3 = fb.b3.float() + (off * fb.kappa2.float()) @ fb.w3.float().T
    taps = torch.einsum("bc,ocyx->byxo", off * fb.kappa1.float(), fb.w2.float())
    return b3.contiguous(), taps.reshape(active.shape[0], 9, fb.width).contiguous()


def _w2_tap_major(fb: FoldedBlock) -> torch.Tensor:
    """w2 [w, w, 3, 3] as a view of a (dy, dx, out, in)-contiguous copy, made once per fb
    and again when its tensors change (``FoldedBlock.fingerprint``)."""
    return derived(fb, "_channel_gemm_w2", fb.fingerprint(),
                   lambda: fb.w2.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1))


def _w3_n_major(fb: FoldedBlock) -> torch.Tensor:
    """w3 [Cout, w] as a view of an (in, out)-contiguous copy, made once per fb and again
    when its tensors change: conv3's K tiles are listed input channels, so its weight tiles
    load contiguously only along the output channels (``kernels.channel_gemm``)."""
    return derived(fb, "_channel_gemm_w3", fb.fingerprint(), lambda: fb.w3.t().contiguous().t())


def channel_gemm_block(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks,
                       config: dict | None = None) -> torch.Tensor:
    """[B, Cin, H, W] channels_last -> [B, Cout, Ho, Wo] channels_last, exact channel
    skipping with the κ correction. config: a dict of ``kernels.channel_gemm.GemmConfig``.

    Raises:
        ValueError: if ``masks.channel`` is None or not [B, G] with G dividing the width,
            if ``masks.mask3`` is set (spatial masks, which this variant would drop), or
            x does not fit the block (``FoldedBlock.check_input``).
    """
    from ..kernels import channel_conv3x3 as cc
    from ..kernels import channel_gemm as cg

    if masks.channel is None:
        raise ValueError("masks.channel is None; the channel_gemm variant needs a channel mask")
    if masks.mask3 is not None:  # the kernels compute every pixel: no spatial lists
        raise ValueError("channel_gemm: masks.mask3 is set (a 'both' or spatial block's "
                         "masks); this variant runs channel masks only and would drop the "
                         "spatial mask: use 'gather', 'patch' or 'dense'")
    fb.check_input(x, masks.channel, "channel_gemm")  # the kernels index by the masks
    w = fb.width
    cfg = cg.resolve_config(config, x.dtype)  # None or {}: the dtype's default
    b, cin, h, wd = x.shape
    xr = x.permute(0, 2, 3, 1)  # NHWC view of channels_last storage
    if not xr.is_contiguous():
        xr = xr.contiguous()
    active, idx, n = channel_lists(masks.channel.to(x.device), w)
    b3, taps = kappa_terms(fb, active)
    h1 = cg.channel_gemm(xr.reshape(b, h * wd, cin), fb.w1, fb.b1.float(), out_idx=idx,
                         n_out=n, relu=True, config=cfg, validate=False)
    h2 = cc.channel_conv3x3(h1.view(b, h, wd, w), _w2_tap_major(fb), fb.b2.float(),
                            in_idx=idx, n_in=n, out_idx=idx, n_out=n, taps=taps,
                            stride=fb.stride, relu=True, config=cfg, validate=False)
    ho, wo = h2.shape[1:3]
    ident = identity_path(fb, x).permute(0, 2, 3, 1)
    if not ident.is_contiguous():
        ident = ident.contiguous()
    out = cg.channel_gemm(h2.view(b, ho * wo, w), _w3_n_major(fb), b3, in_idx=idx, n_in=n,
                          residual=ident.reshape(b, ho * wo, -1), relu=True, config=cfg,
                          validate=False)
    return out.view(b, ho, wo, -1).permute(0, 3, 1, 2)


def channel_gemm_cost(spec: BlockSpec, rate: float) -> Cost:
    """Cost at channel rate ``rate``: multiply-adds conv1·r + conv2·r² + conv3·r (+ dense
    downsample); fewest bytes: input, identity and output once, active h1/h2 written and
    read once, the active weights; launches: 3 kernels + ~6 small torch ops (lists, κ)."""
    h, w = spec.in_hw
    ho, wo = spec.out_hw
    m = spec.width * rate
    f, wts = channel_work(spec, rate)
    el = 2 if spec.dtype in ("float16", "bfloat16") else 4
    act = spec.in_channels * h * w + 2 * spec.out_channels * ho * wo
    act += 2 * m * h * w + 2 * m * ho * wo
    return Cost(flops=float(f * spec.batch), bytes=float(el * (spec.batch * act + wts)),
                launches=9 + int(spec.downsample))


def channel_gemm_configs(spec: BlockSpec) -> list[dict]:
    """The kernel config space, pruned: no N tile wider than the next power of two of the
    width, no P tile wider than that of the map (one tile of each is enough). The first is
    the kernels' default for the dtype where it is kept (float32: the smallest tile, which
    does not spill; what a predicted choice and gpucheck's first check launch)."""
    ho, wo = spec.out_hw
    p2 = 1 << max(4, (ho * wo - 1).bit_length())
    w2 = 1 << max(4, (spec.width - 1).bit_length())
    order = (_CONFIGS[-1],) + _CONFIGS[:-1] if spec.dtype == "float32" else _CONFIGS
    out = []
    for c in order:
        if c["block_n"] <= w2 and c["block_p"] <= p2:
            out.append(dict(c))
    return out or [dict(_CONFIGS[-1])]


# Mirror of kernels.channel_gemm.CONFIGS (that module imports triton; this one must not).
_CONFIGS = (
    {"block_p": 64, "block_n": 64, "block_k": 32, "num_warps": 4, "num_stages": 3},
    {"block_p": 128, "block_n": 64, "block_k": 32, "num_warps": 4, "num_stages": 3},
    {"block_p": 128, "block_n": 128, "block_k": 32, "num_warps": 8, "num_stages": 3},
    {"block_p": 32, "block_n": 64, "block_k": 64, "num_warps": 4, "num_stages": 3},
    {"block_p": 16, "block_n": 32, "block_k": 64, "num_warps": 2, "num_stages": 2},
)


def _supports(spec: BlockSpec) -> bool:
    return (spec.mode == "channel" and spec.channel_groups > 0
            and spec.width % spec.channel_groups == 0 and spec.stride in (1, 2)
            and spec.dtype in ("float32", "float16", "bfloat16"))  # the kernels' dtypes


def _run(fb, x, masks, config=None):
    return channel_gemm_block(fb, x, masks, config)


CHANNEL_GEMM = register(Variant(
    name="channel_gemm", modes=("channel",), backends=("cuda",), run=_run,
    cost=channel_gemm_cost, supports=_supports, configs=channel_gemm_configs,
    description="Triton: GEMMs over per-sample active channel lists + exact κ correction, "
                "no host sync",
    needs_triton=True,
))
