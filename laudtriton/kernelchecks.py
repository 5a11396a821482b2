"""Correctness checks of the Triton kernels and the variants against their torch
references on any device, with NaN-poisoned outputs (run by ``laudtriton gpucheck`` on a
GPU; the kernel tests run the same kernels under the Triton interpreter). Each check
raises on a mismatch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .ops.registry import Variant


@contextmanager
def poisoned() -> Iterator[None]:
    """Every float torch.empty and torch.empty_like starts as NaN (an unwritten output
    then fails the check: the Triton launchers make theirs with the one, the torch
    variants with the other)."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan(make):
        def made(*args, **kwargs):
            t = make(*args, **kwargs)
            return t.fill_(float("nan")) if t.is_floating_point() else t
        return made

    torch.empty, torch.empty_like = nan(empty), nan(empty_like)
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


@contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 matmuls and cuDNN convolutions in full fp32 precision (TF32 off) inside, as
    they were outside after. cuDNN runs fp32 convolutions in TF32 by default on Ampere
    and later: about 3e-4 of max|ref| off on these checks' shapes, over their 1e-4
    bound. A no-op for CPU tensors. Through the legacy ``allow_tf32`` flags, or, where
    torch refuses to read them (a caller set its newer ``fp32_precision`` API: "mix of
    the legacy and new APIs", a RuntimeError that failed every check run inside),
    through ``fp32_precision``, whose settings come back as they were."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    try:
        before = cudnn.allow_tf32, matmul.allow_tf32
    except RuntimeError:
        new = [b for b in (matmul, getattr(cudnn, "conv", None)) if b is not None]
        saved = [b.fp32_precision for b in new]
        for b in new:
            b.fp32_precision = "ieee"
        try:
            yield
        finally:
            for b, p in zip(new, saved):
                b.fp32_precision = p
        return
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


def _close(out, ref, dtype, name, n=None):
    from .testing import TOLERANCE, assert_close

    for b in range(out.shape[0]):
        m = out.shape[-1] if n is None else int(n[b])
        if m:
            assert_close(out[b, ..., :m], ref[b, ..., :m], TOLERANCE[dtype], f"{name}[{b}]")


def channel_kernel_checks(dev: str | torch.device, dt: torch.dtype) -> None:
    """The channel family's Triton kernels against their torch references, in ``dt`` on
    ``dev``, outputs NaN-poisoned (``poisoned``): ``channel_gemm`` as conv1 (each
    sample's active output channels only, compacted, ReLU) and as conv3 (from the active
    input channels, a residual added), and ``channel_conv3x3`` at strides 1 (ReLU) and 2
    (none), from conv1's channel lists to lists of its own (the complement in one sample).
    Width 96 in 24 groups of 4 channels, a batch of 3 (one sample with every group off,
    one with every group on); the compacted outputs are compared on their first n[b]
    channels, the ones written.

    Raises:
        AssertionError: a mismatch beyond ``testing.TOLERANCE[dt]`` of max |reference|, or
            an output left unwritten (NaN).
    """
    from .kernels import channel_conv3x3 as cc
    from .kernels import channel_gemm as cg
    from .ops.triton_channel import channel_lists

    width = 96
    chan = (torch.rand(3, width // 4, device=dev) < 0.5).float()
    chan[0] = 0
    chan[1, :2] = torch.tensor([1.0, 0.0])  # the complement below is no empty list either
    chan[2] = 1
    _, idx, n = channel_lists(chan, width)
    x = torch.randn(3, 77, 53, device=dev).to(dt)
    w1 = torch.randn(width, 53, device=dev).to(dt)
    b1 = torch.randn(width, device=dev)
    kw = dict(out_idx=idx, n_out=n, relu=True)
    with poisoned():
        y = cg.channel_gemm(x, w1, b1, **kw)
    _close(y, cg.channel_gemm_torch(x, w1, b1, **kw), dt, "conv1", n)
    h = torch.randn(3, 77, width, device=dev).to(dt)
    w3 = torch.randn(200, width, device=dev).to(dt)
    b3 = torch.randn(3, 200, device=dev)
    res = torch.randn(3, 77, 200, device=dev).to(dt)
    kw = dict(in_idx=idx, n_in=n, residual=res, relu=True)
    with poisoned():
        y = cg.channel_gemm(h, w3, b3, **kw)
    _close(y, cg.channel_gemm_torch(h, w3, b3, **kw), dt, "conv3")
    # the 3x3 conv reads through conv1's lists and writes through lists of its own (sample
    # 1: the complement of its input groups): one list for both let a kernel that swapped
    # them pass. ReLU on at stride 1 (as the variant runs it) and off at stride 2, so that
    # a kernel ignoring the flag either way fails.
    chan_out = chan.clone()
    chan_out[1] = 1 - chan[1]
    _, idx_out, n_out = channel_lists(chan_out, width)
    for stride in (1, 2):
        hx = torch.randn(3, 9, 11, width, device=dev).to(dt)
        w2 = torch.randn(width, width, 3, 3, device=dev).to(dt) / 10
        taps = torch.randn(3, 9, width, device=dev)
        kw = dict(in_idx=idx, n_in=n, out_idx=idx_out, n_out=n_out, taps=taps,
                  stride=stride, relu=stride == 1)
        with poisoned():
            y = cc.channel_conv3x3(hx, w2.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1),
                                   b1, **kw)
        _close(y, cc.channel_conv3x3_torch(hx, w2, b1, **kw), dt, f"conv3x3 s{stride}",
               n_out)


def masker_kernel_checks(dev: str | torch.device, dt: torch.dtype) -> None:
    """The masker kernels against their torch references, on an NHWC input
    [2, 13, 17, 40] in ``dt`` on ``dev``, outputs NaN-poisoned (``poisoned``): the
    logits of ``spatial_masker`` at grids 1x1, 3x4 and 13x17 (the whole map), and of
    ``channel_masker_mlp`` with two layers (40 -> 16 -> 24 logits).

    The masks must be the decisions of the kernels' own logits (keep where logit 0 >=
    logit 1): compared with the reference's decisions, a logit within rounding of its
    pair could flip one legitimately.

    Raises:
        AssertionError: logits off by more than 1e-4 of max |reference|, left unwritten,
            or masks that are not their logits' decisions.
    """
    from .kernels import maskers as mk
    from .testing import assert_close

    x = torch.randn(2, 13, 17, 40, device=dev).to(dt)
    w, b = torch.randn(2, 40, device=dev), torch.randn(2, device=dev)
    for grid in ((1, 1), (3, 4), (13, 17)):
        with poisoned():
            mask, logits = mk.spatial_masker(x, w, b, grid)
        assert_close(logits, mk.spatial_masker_torch(x, w, b, grid)[1], 1e-4, f"grid {grid}")
        _check_decisions(mask, logits.unsqueeze(2), f"grid {grid}")
    layers = [(torch.randn(16, 40, device=dev), torch.randn(16, device=dev)),
              (torch.randn(24, 16, device=dev), torch.randn(24, device=dev))]
    with poisoned():
        mask, logits = mk.channel_masker_mlp(x, layers)
    assert_close(logits, mk.channel_masker_mlp_torch(x, layers)[1], 1e-4, "mlp")
    _check_decisions(mask, logits, "mlp")


def _check_decisions(mask: torch.Tensor, logits: torch.Tensor, what: str) -> None:
    """Assert mask == (logits[:, 0] >= logits[:, 1]) as float 0/1, element for element
    (logits [B, 2, ...] against a mask of the shape of logits[:, 0])."""
    want = (logits[:, 0] >= logits[:, 1]).float()
    if mask.shape != want.shape or not torch.equal(mask.float(), want):
        raise AssertionError(f"{what}: masks {tuple(mask.shape)} are not the decisions of "
                             f"their logits (decisions {tuple(want.shape)})")


def spatial_kernel_checks(dev: str | torch.device, dt: torch.dtype) -> None:
    """H3a's spatial family: indices -> gather_conv1x1 -> conv3x3 -> conv1x1_residual."""
    from .kernels import conv1x1_residual as cr
    from .kernels import conv3x3 as c3
    from .kernels import gather_conv as gc
    from .kernels import indices
    from .nn.maskers import expand_mask1, upsample_mask
    from .testing import TOLERANCE, assert_close

    bsz, h, wd, cin, width, cout = 2, 11, 9, 48, 32, 80
    grid = (torch.rand(bsz, 1, 5, 4, device=dev) < 0.5).float()
    for stride in (1, 2):
        ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
        m3 = upsample_mask(grid, (ho, wo))
        m1 = expand_mask1(m3, stride, (h, wd))
        ri, rc = indices.active_rows(m1)
        pi, pc = indices.active_pixels(m3)
        x = torch.randn(bsz, h, wd, cin, device=dev).to(dt)
        w1, b1 = torch.randn(width, cin, device=dev).to(dt) / 5, torch.randn(width, device=dev)
        buf = gc.gather_conv1x1(x, ri, rc, w1, b1)
        assert_close(buf, gc.gather_conv1x1_torch(x, ri, rc, w1, b1), TOLERANCE[dt], "gather")
        w2 = torch.randn(width, width, 3, 3, device=dev).to(dt) / 10
        with poisoned():
            rows = c3.conv3x3(buf, pi, pc, c3.hwio(w2), b1, stride)
        k = int(pc)
        ref = c3.conv3x3_torch(buf, pi, pc, c3.hwio(w2), b1, stride)
        assert_close(rows[:k], ref[:k], TOLERANCE[dt], f"conv3x3 s{stride}")
        w3, b3 = torch.randn(cout, width, device=dev).to(dt) / 5, torch.randn(cout, device=dev)
        ident = torch.randn(bsz, ho, wo, cout, device=dev).to(dt)
        out = cr.conv1x1_residual(rows, pi, pc, w3, b3, ident)
        ref = cr.conv1x1_residual_torch(rows, pi, pc, w3, b3, ident)
        assert_close(out, ref, TOLERANCE[dt], f"residual s{stride}")


def variant_check(variant: Variant, mode: str, dev: str | torch.device,
                  dt: torch.dtype, all_configs: bool = False) -> None:
    """``variant`` in ``mode`` on ``dev`` in ``dt`` against the reference block in float64
    on the same masks (``testing.reference_on_masks``, not the project's own fold):
    a block of each stride (on an odd map, or one S divides where the variant needs whole
    cells), rates 0, 0.5 and 1, outputs NaN-poisoned; its first config, or with
    ``all_configs`` every config it offers there (the tile sizes change the kernels'
    bounds masking; gpucheck checks a config's first output when it times it instead).

    Raises:
        AssertionError: on a mismatch, or when nothing was compared (no shape supported,
            no config).
    """
    from .ops import fold_block
    from .ops.spec import BlockSpec
    from .ops.synthetic import synthetic_masks
    from .testing import TOLERANCE, assert_close, make_block, reference_on_masks

    checked = 0
    for stride, cin in ((1, 64), (2, 48)):
        block = make_block(cin, 16, stride, mode=mode, granularity=2, channel_granularity=4)
        # odd maps (S does not divide them), or for a variant that needs whole S x S
        # cells (``patch``) maps it divides
        for hw in ((13, 11), (12, 8)):
            x = torch.randn(3, cin, *hw)
            spec = BlockSpec.from_block(block, x.shape, dt)
            if variant.supports(spec):
                break
        else:
            continue
        for rate in (0.0, 0.5, 1.0):
            masks = synthetic_masks(spec, rate, seed=1, device=dev)
            ref = reference_on_masks(block, x, masks)
            fb = fold_block(block, dt, dev)
            xd = x.to(dev, dt).contiguous(memory_format=torch.channels_last)
            configs = variant.configs(spec)
            for cfg in configs if all_configs else configs[:1]:
                with poisoned():
                    out = variant.run(fb, xd, masks, cfg)
                assert_close(out.float().cpu(), ref, TOLERANCE[dt],
                             f"s{stride} rate {rate} {cfg}")
                checked += 1
    if not checked:  # a check that compared nothing is no pass
        raise AssertionError(f"{variant.name} {mode} {dt}: no block shape of the check is "
                             "supported, or the variant has no config; nothing compared")
