"""Audit of ``kernelchecks``: defects of the channel 3x3 conv that its self-check let
through (stand-ins: the torch reference with one defect, as in ``test_kernelchecks``)."""

import pytest
import torch

from laudtriton import kernelchecks


def _channel(monkeypatch, conv=None):
    """channel_gemm and channel_conv3x3 as their references, the conv as
    ``conv(ref, *a, **kw)`` when given."""
    from laudtriton.kernels import channel_conv3x3 as cc
    from laudtriton.kernels import channel_gemm as cg

    monkeypatch.setattr(cg, "channel_gemm", cg.channel_gemm_torch)
    ref = cc.channel_conv3x3_torch
    monkeypatch.setattr(cc, "channel_conv3x3", ref if conv is None else
                        (lambda *a, **kw: conv(ref, *a, **kw)))


def _reads_through_the_output_lists(ref, *a, **kw):
    return ref(*a, **{**kw, "in_idx": kw["out_idx"], "n_in": kw["n_out"]})


def _writes_through_the_input_lists(ref, *a, **kw):
    return ref(*a, **{**kw, "out_idx": kw["in_idx"], "n_out": kw["n_in"]})


def _ignores_relu(ref, *a, **kw):
    return ref(*a, **{**kw, "relu": False})


def _always_relu(ref, *a, **kw):
    return ref(*a, **{**kw, "relu": True})


@pytest.mark.parametrize("conv,says", [
    (_reads_through_the_output_lists, r"conv3x3 s1\["),
    (_writes_through_the_input_lists, r"conv3x3 s1\["),
    (_ignores_relu, r"conv3x3 s1\["),
    (_always_relu, r"conv3x3 s2\["),
], ids=["in-lists-from-out", "out-lists-from-in", "relu-ignored", "relu-always"])
def test_channel_conv3x3_check_catches_lists_and_relu_mixed_up(monkeypatch, conv, says):
    """The check fed the conv one list for input and output and never asked for ReLU
    (the variant's setting): a kernel that read through out_idx, or ignored the flag,
    passed."""
    _channel(monkeypatch)
    kernelchecks.channel_kernel_checks("cpu", torch.float32)
    _channel(monkeypatch, conv)
    with pytest.raises(AssertionError, match=says):
        kernelchecks.channel_kernel_checks("cpu", torch.float32)
