"""The kernel self-checks of ``laudtriton gpucheck`` (``kernelchecks``) against stand-in
kernels that are wrong in one narrow way each: the launchers are replaced by their torch
references (no interpreter) with one defect, and the check must raise naming the stage;
what a check would let through, a wrong kernel on a GPU passes."""

import dataclasses

import pytest
import torch

from laudtriton import kernelchecks


class Boom(Exception):
    pass


def test_poisoned_restores_empty_when_its_body_raises():
    """A kernel that raises inside ``poisoned`` (a launch error, a failed check) must not
    leave torch.empty poisoning every later check of the run."""
    real = torch.empty, torch.empty_like
    with pytest.raises(Boom):
        with kernelchecks.poisoned():
            raise Boom
    assert (torch.empty, torch.empty_like) == real


def test_exact_fp32_restores_the_flags_when_its_body_raises():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32, matmul.allow_tf32 = True, True
        with pytest.raises(Boom):
            with kernelchecks.exact_fp32():
                raise Boom
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


# -- channel family ----------------------------------------------------------------------
def _channel_refs(monkeypatch, gemm=None, conv=None):
    """channel_gemm and channel_conv3x3 as their references, or as ``gemm(ref, *a, **kw)``
    and ``conv(ref, *a, **kw)``."""
    from laudtriton.kernels import channel_conv3x3 as cc
    from laudtriton.kernels import channel_gemm as cg

    for mod, name, wrong in ((cg, "channel_gemm", gemm), (cc, "channel_conv3x3", conv)):
        ref = getattr(mod, name + "_torch")
        monkeypatch.setattr(mod, name, ref if wrong is None else
                            (lambda *a, _r=ref, _w=wrong, **kw: _w(_r, *a, **kw)))


def _conv1(wrong):
    """Applies ``wrong(out, kw)`` to conv1's outputs (the call with out_idx) only."""
    def gemm(ref, *args, **kw):
        out = ref(*args, **kw)
        if kw.get("out_idx") is not None:
            out = out.clone()
            wrong(out, kw)
        return out
    return gemm


def _last_written_column_off(out, kw):
    for b, m in enumerate(kw["n_out"].tolist()):
        if m:
            out[b, :, m - 1] *= 1.01


def _scaled(out, kw):
    out *= 1 + 5e-4  # 5x the float32 bound, as a GPU's TF32 would be (~3e-4)


def _conv3_off_where_no_input_channel(ref, *args, **kw):
    out = ref(*args, **kw)
    if kw.get("in_idx") is not None:
        out = out.clone()
        out[kw["n_in"].cpu() == 0] *= 1.01  # e.g. a kernel skipping the empty K loop's epilogue
    return out


def _conv3_off_past_the_width(ref, *args, **kw):
    out = ref(*args, **kw)
    if kw.get("in_idx") is not None:
        out = out.clone()
        out[..., 150:] *= 1.01  # conv3 has 200 output columns, all written
    return out


def _conv3x3_off_at_stride_2(ref, *args, **kw):
    out = ref(*args, **kw)
    return out * 1.01 if kw.get("stride") == 2 else out


@pytest.mark.parametrize("gemm,conv,says", [
    (_conv1(_last_written_column_off), None, r"conv1\[[12]\]"),
    (_conv1(_scaled), None, r"conv1\[[12]\]"),
    (_conv3_off_where_no_input_channel, None, r"conv3\[0\]"),
    (_conv3_off_past_the_width, None, r"conv3\[0\]"),
    (None, _conv3x3_off_at_stride_2, r"conv3x3 s2\[[012]\]"),
], ids=["conv1-last-written-column", "conv1-5e-4-off", "conv3-no-input-channels",
        "conv3-columns-past-the-width", "conv3x3-stride-2"])
def test_channel_kernel_checks_catch_a_narrow_defect(monkeypatch, gemm, conv, says):
    """Every written column of the compacted conv1 output is compared, at the float32
    bound; conv3 on every one of its 200 columns, also in the sample with every group
    off (no input channel: bias and residual alone); the 3x3 conv at stride 2 too."""
    _channel_refs(monkeypatch)
    kernelchecks.channel_kernel_checks("cpu", torch.float32)
    _channel_refs(monkeypatch, gemm=gemm, conv=conv)
    with pytest.raises(AssertionError, match=says):
        kernelchecks.channel_kernel_checks("cpu", torch.float32)


# -- maskers -----------------------------------------------------------------------------
def _spatial_wrong(ref, x, w, b, grid, how):
    mask, logits = ref(x, w, b, grid)
    if how == "whole map" and tuple(grid) == tuple(x.shape[1:3]):
        return mask, logits * 1.01
    if how == "logits 5e-4 off":
        return mask, logits * (1 + 5e-4)
    if how == "masks flipped":
        return 1 - mask, logits
    return mask, logits


def _mlp_wrong(ref, x, layers, how):
    mask, logits = ref(x, layers)
    if how == "mlp logits off":
        return mask, logits * 1.01
    if how == "mlp masks flipped":
        return 1 - mask, logits
    return mask, logits


@pytest.mark.parametrize("how,says", [
    ("whole map", r"grid \(13, 17\)"),
    ("logits 5e-4 off", r"grid \(1, 1\)"),
    ("masks flipped", r"grid \(1, 1\): masks .* are not the decisions"),
    ("mlp logits off", "mlp"),
    ("mlp masks flipped", "mlp: masks .* are not the decisions"),
])
def test_masker_kernel_checks_catch_a_narrow_defect(monkeypatch, how, says):
    """Both maskers' logits at the 1e-4 bound, on every grid (the whole map, where the
    kernel skips pooling, too), and both maskers' masks against their logits."""
    from laudtriton.kernels import maskers as mk

    sp, mlp = mk.spatial_masker_torch, mk.channel_masker_mlp_torch
    monkeypatch.setattr(mk, "spatial_masker", sp)
    monkeypatch.setattr(mk, "channel_masker_mlp", mlp)
    kernelchecks.masker_kernel_checks("cpu", torch.float32)
    monkeypatch.setattr(mk, "spatial_masker", lambda *a: _spatial_wrong(sp, *a, how))
    monkeypatch.setattr(mk, "channel_masker_mlp", lambda *a: _mlp_wrong(mlp, *a, how))
    with pytest.raises(AssertionError, match=says):
        kernelchecks.masker_kernel_checks("cpu", torch.float32)


# -- spatial family ----------------------------------------------------------------------
def _spatial_refs(monkeypatch, conv=None):
    from laudtriton.kernels import conv1x1_residual as cr
    from laudtriton.kernels import conv3x3 as c3
    from laudtriton.kernels import gather_conv as gc

    monkeypatch.setattr(gc, "gather_conv1x1", gc.gather_conv1x1_torch)
    monkeypatch.setattr(cr, "conv1x1_residual", cr.conv1x1_residual_torch)
    ref = c3.conv3x3_torch
    monkeypatch.setattr(c3, "conv3x3", ref if conv is None else
                        (lambda *a: conv(ref(*a), *a)))


def _off_rows(rows, buf, idx, count, w, b, stride):
    return rows * 1.01


def _off_at_stride_2(rows, buf, idx, count, w, b, stride):
    return rows * 1.01 if stride == 2 else rows


def _last_row_off(rows, buf, idx, count, w, b, stride):
    rows = rows.clone()
    rows[-1] *= 1.01  # the reference's rows are [count, N]: the last active pixel
    return rows


@pytest.mark.parametrize("conv,says", [
    (_off_rows, "conv3x3 s1"), (_off_at_stride_2, "conv3x3 s2"),
    (_last_row_off, "conv3x3 s1"),
], ids=["all-rows", "stride-2", "last-active-pixel"])
def test_spatial_kernel_checks_compare_the_conv3x3_stage(monkeypatch, conv, says):
    """The conv3x3 stage's rows are compared themselves (the residual stage is compared
    with a reference fed the same rows, blind to them), at both strides, up to the last
    active pixel."""
    _spatial_refs(monkeypatch)
    kernelchecks.spatial_kernel_checks("cpu", torch.float32)
    _spatial_refs(monkeypatch, conv)
    with pytest.raises(AssertionError, match=says):
        kernelchecks.spatial_kernel_checks("cpu", torch.float32)


def test_kernel_checks_run_every_allocating_launcher_on_poisoned_allocations(monkeypatch):
    """The launchers that allocate their outputs with torch.empty run while it gives NaN
    (an element a kernel leaves unwritten then fails the comparison)."""
    from laudtriton.kernels import channel_conv3x3 as cc
    from laudtriton.kernels import channel_gemm as cg
    from laudtriton.kernels import conv1x1_residual as cr
    from laudtriton.kernels import conv3x3 as c3
    from laudtriton.kernels import gather_conv as gc
    from laudtriton.kernels import maskers as mk

    seen = {}
    real = torch.empty, torch.empty_like

    def watched(name, ref):
        def launcher(*args, **kwargs):  # ``poisoned`` in force: both replaced
            poisoned = torch.empty is not real[0] and torch.empty_like is not real[1]
            seen.setdefault(name, []).append(poisoned)
            return ref(*args, **kwargs)
        return launcher

    for mod, name in ((cg, "channel_gemm"), (cc, "channel_conv3x3"), (mk, "spatial_masker"),
                      (mk, "channel_masker_mlp"), (c3, "conv3x3")):
        monkeypatch.setattr(mod, name, watched(name, getattr(mod, name + "_torch")))
    monkeypatch.setattr(gc, "gather_conv1x1", gc.gather_conv1x1_torch)  # a zeroed buffer
    monkeypatch.setattr(cr, "conv1x1_residual", cr.conv1x1_residual_torch)  # prefilled
    kernelchecks.channel_kernel_checks("cpu", torch.float32)
    kernelchecks.masker_kernel_checks("cpu", torch.float32)
    kernelchecks.spatial_kernel_checks("cpu", torch.float32)
    assert {k: len(v) for k, v in seen.items()} == {
        "channel_gemm": 2, "channel_conv3x3": 2, "spatial_masker": 3,
        "channel_masker_mlp": 1, "conv3x3": 2}
    assert all(all(v) for v in seen.values()), seen


# -- variants ----------------------------------------------------------------------------
def _dense_variant(run):
    """The dense variant with ``run(dense_run, fb, x, masks, cfg)`` in place of its run."""
    from laudtriton.ops import get_variant

    dense = get_variant("dense")
    return dataclasses.replace(dense, run=lambda fb, x, masks, cfg: run(dense.run, fb, x,
                                                                        masks, cfg))


def _off_where_every_cell_is_on(dense, fb, x, masks, cfg):
    out = dense(fb, x, masks, cfg)
    return out * 1.01 if bool(masks.grid.all()) else out


def _off_in_the_stride_2_block(dense, fb, x, masks, cfg):
    out = dense(fb, x, masks, cfg)
    return out * 1.01 if x.shape[1] == 48 else out  # the stride-2 block's input: 48 channels


def _off_by_5e_4(dense, fb, x, masks, cfg):
    return dense(fb, x, masks, cfg) * (1 + 5e-4)


@pytest.mark.parametrize("run,says", [
    (_off_where_every_cell_is_on, "s1 rate 1.0"),
    (_off_in_the_stride_2_block, "s2 rate 0.0"),
    (_off_by_5e_4, "s1 rate 0.0"),
], ids=["rate-1", "stride-2", "float32-bound"])
def test_variant_check_catches_a_narrow_defect(run, says):
    """Every rate (every cell on too), both strides, at the float32 bound in float32."""
    from laudtriton.ops import get_variant

    kernelchecks.variant_check(get_variant("dense"), "spatial", "cpu", torch.float32)
    with pytest.raises(AssertionError, match=says):
        kernelchecks.variant_check(_dense_variant(run), "spatial", "cpu", torch.float32)
