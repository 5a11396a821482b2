"""Helpers shared by tests, benchmarks and gpucheck: random LAUD blocks with non-trivial
BN statistics and a verbose closeness check."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .nn.block import LaudBottleneck
from .nn.maskers import finite_real

if TYPE_CHECKING:
    from .compiled import CompiledModel
    from .nn.block import BlockMasks
    from .nn.resnet import LaudResNet

# Tolerances, as max |out − ref| <= tol · max |ref| (DESIGN.md section 2). Half types: four
# units of roundoff u of the type (fp16 u = 2^-11, bf16 u = 2^-8): the kernels round their
# inputs, stored intermediates and output to it and accumulate in fp32. Largest errors
# measured under the Triton interpreter (session 9, every half-type test): fp16 6.2e-4
# (1.3 u), bf16 7.2e-3 (1.8 u), both in whole-variant checks (``kernelchecks``).
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 4 * 2.0**-11,
             torch.bfloat16: 4 * 2.0**-8}


@torch.no_grad()
def randomize_bn(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm of ``module`` random affine parameters and running stats, so
    that folding and κ = relu(bn(0)) are exercised (κ is non-zero for about half the
    channels)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
            m.bias.copy_(torch.rand(c, generator=generator) * 2 - 1)
            m.running_mean.copy_(torch.rand(c, generator=generator) * 2 - 1)
            m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
    return module


def make_block(inplanes: int, planes: int, stride: int = 1, mode: str = "spatial",
               granularity: int = 1, channel_granularity: int = 1,
               downsample: bool | None = None, seed: int = 0, **kwargs: Any) -> LaudBottleneck:
    """A LaudBottleneck in eval mode with random weights and BN statistics, a function of
    ``seed`` alone (the global random state is left as it was).

    downsample: default True when stride > 1 or inplanes != 4·planes.
    """
    g = torch.Generator().manual_seed(seed)
    out = planes * LaudBottleneck.expansion
    if downsample is None:
        downsample = stride != 1 or inplanes != out
    with torch.random.fork_rng(devices=[]):  # the layers' init draws from the global one
        torch.manual_seed(seed)
        ds = None
        if downsample:
            ds = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                               nn.BatchNorm2d(out))
        block = LaudBottleneck(inplanes, planes, stride, ds, mode, granularity,
                               channel_granularity, **kwargs)
    randomize_bn(block, g)
    return block.eval()


@torch.no_grad()
def reference_on_masks(block: LaudBottleneck, x: torch.Tensor, masks: BlockMasks
                       ) -> torch.Tensor:
    """The reference block (``laudtriton.nn``, the official semantics) in float64 on x,
    run with ``masks`` (a BlockMasks) instead of its maskers' decisions: what a variant
    given those masks must compute. ``block`` itself is left as it is (a copy runs); x
    and the masks may live on any device (the copy runs on the CPU). A grid given without
    mask3 and mask1 (a layer gate alone) is expanded to them as the block's maskers do.

    Raises:
        ValueError: if the masks (mask3 and mask1 expanded where not given) are not masks
            the block's maskers could give for x (``mask_checks.check_block_masks``):
            a mask missing or extra for the block, of another shape, a grid or channel
            mask holding values other than 0 and 1, mask3 or mask1 not the grid's
            expansion. Broadcast or fractional masks would give an expected output no
            compiled block could be asked for.
    """
    import copy

    from .mask_checks import check_block_masks
    from .nn.block import BlockMasks
    from .nn.maskers import expand_mask1, upsample_mask

    if not isinstance(masks, BlockMasks):
        raise ValueError(f"reference_on_masks: masks must be a BlockMasks, got "
                         f"{type(masks).__name__}")
    ref = copy.deepcopy(block).double().cpu()
    x64 = x.double().cpu()
    grid, mask3, mask1, channel = (
        None if t is None else (t.double() if t.is_floating_point() else t).cpu()
        for t in (masks.grid, masks.mask3, masks.mask1, masks.channel))
    if grid is not None and mask3 is None and mask1 is None:
        in_hw = tuple(x.shape[-2:])
        mask3 = upsample_mask(grid.double(), ref.out_hw(in_hw))
        mask1 = expand_mask1(mask3, ref.stride, in_hw)
    m64 = BlockMasks(grid, mask3, mask1, channel)
    groups = 0 if ref.masker_channel is None else ref.masker_channel.groups
    check_block_masks(ref, m64, x64, "reference_on_masks", groups)
    ref.compute_masks = lambda inp: (m64, 0.0)
    return ref(x64)


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float | None = None,
                 name: str = "output") -> None:
    """Assert max |out − ref| <= tol · max |ref|, printing the worst mismatches.

    tol defaults to TOLERANCE[out.dtype]. NaN or inf anywhere, in out or in ref, fails (a
    non-finite reference would make the bound NaN or inf, which everything meets).

    Raises:
        AssertionError: past the bound, non-finite values, or shapes that differ.
        ValueError: if tol is not a finite number >= 0 (a NaN tol passed everything, True
            counted as 1), or out or ref is complex (its imaginary part would be dropped).
    """
    if tol is not None:
        tol = finite_real("assert_close: tol", tol)
        if tol < 0:
            raise ValueError(f"assert_close: tol must be >= 0, got {tol!r}")
    for t, what in ((out, "out"), (ref, "ref")):
        if not isinstance(t, torch.Tensor) or t.is_complex():
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"assert_close: {what} must be a real tensor, got {got}")
    if out.shape != ref.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    tol = TOLERANCE.get(out.dtype, 1e-4) if tol is None else tol
    if out.numel() == 0:
        return
    o, r = out.double(), ref.double()
    for t, what in ((o, name), (r, f"{name}'s reference")):
        bad = ~torch.isfinite(t)
        if bad.any():
            idx = torch.nonzero(bad)[:5].tolist()
            vals = [t[tuple(i)].item() for i in idx]
            raise AssertionError(f"{what}: non-finite {vals} at {idx}"
                                 + (" (unwritten output?)" if t is o else ""))
    err = (o - r).abs()
    scale = max(r.abs().max().item(), 1e-30)
    if err.max().item() > tol * scale:
        worst = torch.topk(err.flatten(), min(5, err.numel())).indices
        rows = []
        for f in worst.tolist():
            idx = []
            for s in reversed(err.shape):
                idx.append(f % s)
                f //= s
            idx = tuple(reversed(idx))
            rows.append(f"  at {idx}: got {o[idx].item():.6g}, want {r[idx].item():.6g}")
        raise AssertionError(
            f"{name}: max error {err.max().item():.3g} > {tol:g} x max|ref| {scale:.3g}\n"
            + "\n".join(rows)
        )


MASK_NAMES = ("grid", "mask3", "mask1", "channel")


def assert_same_masks(compiled: CompiledModel, reference: LaudResNet | LaudBottleneck) -> None:
    """Assert that every block of a compiled LaudResNet or block (``compiled.blocks``)
    holds in ``last_masks`` the masks the reference's block holds (``reference.blocks()``
    of a LaudResNet, or the LaudBottleneck itself), field by field and exactly: run both
    on the same input first."""
    refs = (reference.blocks() if hasattr(reference, "blocks")
            else [("block", reference)])
    if len(compiled.blocks) != len(refs):
        raise AssertionError(f"{len(compiled.blocks)} compiled blocks, {len(refs)} reference")
    for blk, (name, ref) in zip(compiled.blocks, refs):
        for field in MASK_NAMES:
            a, b = getattr(blk.last_masks, field), getattr(ref.last_masks, field)
            if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):
                raise AssertionError(f"{name}: masks.{field} differs from the reference's")


def logits_agreement(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |out − ref| / max |ref|, share of samples whose top-1 class is the same) of
    logits [B, classes], compared in float32: what ``laudtriton demo`` prints and
    gpucheck records of a compiled model against its reference. A sample with NaN in
    either row has no top-1 class and counts as different (torch.argmax takes NaN for
    the largest value, so an all-NaN row agreed with a reference whose top-1 is class 0);
    the error is then NaN too.

    Raises:
        ValueError: unless out and ref are real [B, classes] tensors of one shape, B >= 1
            (a [1, classes] reference broadcast against every sample before).
    """
    for t, what in ((out, "out"), (ref, "ref")):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] == 0 or (
                t.is_complex()):
            got = (f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor)
                   else type(t).__name__)
            raise ValueError(f"logits_agreement: {what} must be real logits [B >= 1, "
                             f"classes], got {got}")
    if out.shape != ref.shape:
        raise ValueError(f"logits_agreement: out {tuple(out.shape)} and ref "
                         f"{tuple(ref.shape)} differ in shape")
    out, ref = out.float(), ref.float()
    err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    same = (out.argmax(1) == ref.argmax(1)) & ~(out.isnan().any(1) | ref.isnan().any(1))
    return err, float(same.float().mean())
