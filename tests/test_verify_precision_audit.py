"""The first-output check (``time_variants(verify=True)``) keeps correct variants whose
output differs from the exact float32 reference only by precision settings or range: TF32
convolutions (cuDNN's default on CUDA, emulated here) and float16 outputs past 65504.
Found reviewing 06fce55; each test failed there."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from laudtriton.ops import BlockSpec, fold_block, get_variant, packed
from laudtriton.ops.registry import Variant
from laudtriton.ops.synthetic import synthetic_masks
from laudtriton.testing import TOLERANCE, assert_close, make_block
from laudtriton.tune.measure import time_variants


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """t rounded to TF32 (10 mantissa bits, to nearest), as cuDNN rounds an fp32
    convolution's operands by default on Ampere and later (``cudnn.allow_tf32`` True)."""
    i = t.contiguous().view(torch.int32)
    return ((i + 0x1000) & ~0x1FFF).view(torch.float32).reshape(t.shape)


_conv2d = F.conv2d  # the real one


def _tf32_on() -> bool:
    """Whether cuDNN would run float32 convolutions in TF32: ``cudnn.conv.fp32_precision``
    where torch has it (``exact_fp32`` sets that API, and the legacy flag then refuses to
    be read), else ``cudnn.allow_tf32``."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(conv, "fp32_precision"):
        return conv.fp32_precision == "tf32"
    return torch.backends.cudnn.allow_tf32


def _cudnn_conv2d(a: torch.Tensor, w: torch.Tensor, *args, **kw) -> torch.Tensor:
    """F.conv2d as cuDNN runs it: float32 operands rounded to TF32 while
    ``cudnn.allow_tf32`` is on (torch's default; ``kernelchecks.exact_fp32`` turns it off,
    as for verify's reference)."""
    if _tf32_on() and a.dtype == torch.float32:
        a, w = _tf32(a), _tf32(w)
    return _conv2d(a, w, *args, **kw)


def _dense_as_cudnn_runs_it() -> Variant:
    """The dense variant with every F.conv2d as cuDNN runs it (``_cudnn_conv2d``):
    what ``dense`` (and slice, gather, patch, compact: all F.conv2d) computes in
    float32 on a CUDA GPU under torch's default settings."""
    dense = get_variant("dense")

    def run(fb, x, masks, cfg):
        F.conv2d = _cudnn_conv2d
        try:
            return dense.run(fb, x, masks, cfg)
        finally:
            F.conv2d = _conv2d

    return Variant(name="dense_tf32", modes=dense.modes, backends=("cpu",), run=run,
                   cost=dense.cost)


def test_verify_keeps_a_correct_float32_variant_that_runs_in_tf32():
    """06fce55: verify holds a float32 output to 1e-4 x max|ref| of an exact-fp32
    reference (``reference_output`` runs under ``exact_fp32``), but the variants are timed
    with cuDNN's default TF32 convolutions: about 3e-4 off (``kernelchecks.exact_fp32``
    says so). On CUDA, float32, the torch variants were scored inf as wrong: a sweep
    recorded inf for them, and a layer-mode block (dense and compact only) made compile
    raise 'every candidate variant failed'. A ResNet-50 layer3 block, channel mode."""
    block = make_block(1024, 256, 1, "channel", 1)
    spec = BlockSpec.from_block(block, (1, 1024, 14, 14))
    torch.manual_seed(0)
    x = torch.rand(1, 1024, 14, 14).contiguous(memory_format=torch.channels_last)
    errors: dict = {}
    t = time_variants(fold_block(block), spec, x, synthetic_masks(spec, 0.5),
                      [_dense_as_cudnn_runs_it()], warmup=0, reps=1, verify=True,
                      errors=errors)
    assert math.isfinite(t["dense_tf32"]["{}"]), errors


def test_compile_of_a_layer_block_as_on_cuda_float32(monkeypatch, tmp_path):
    """The same on a whole compile: the convolutions run through F.conv2d, as
    ``PackedConv`` runs them on CUDA, in TF32 while ``cudnn.allow_tf32`` is on (torch's
    default; ``exact_fp32``, which the reference runs under, turns it off). A layer-mode
    block has only dense and compact, both cuDNN: compile raised RuntimeError 'every
    candidate variant (dense, compact) failed' where it compiled before 06fce55."""
    import laudtriton

    monkeypatch.setattr(packed, "_can_pack", lambda w: False)  # F.conv2d, as on CUDA
    monkeypatch.setattr(F, "conv2d", _cudnn_conv2d)
    block = make_block(64, 16, 1, "layer", 1)
    torch.manual_seed(0)
    x = torch.rand(2, 64, 16, 16)
    cm = laudtriton.compile(block, x, backend="cpu", tune="off", cache_dir=tmp_path,
                            progress=False)
    chosen = {c.variant for row in cm.plan.rows for c in row[2].entries.values()}
    assert chosen and chosen <= {"dense", "compact"}
    with torch.no_grad():  # both sides in emulated TF32: a TF32-sized bound
        assert_close(cm(x), block.eval()(x), TOLERANCE[torch.float16])


def test_verify_keeps_dense_where_the_float16_output_overflows():
    """06fce55: verify skips a non-finite reference, but the float32 reference of a
    float16 block can be finite past float16's range (65504): the block's float16 output
    is then inf or nan in every variant, the dense one too, and every config was scored
    inf (unverified, all are timed). compile(dtype=float16) of a model whose activations
    pass 65504 then raised 'every candidate variant failed' where it compiled before
    (``bench.build_model``'s LAUD-ResNet-101 reaches 1.5e5: gpucheck scales its bn3)."""
    block = make_block(64, 16, 1, "spatial", 2)
    spec = BlockSpec.from_block(block, (1, 64, 16, 16), dtype="float16")
    torch.manual_seed(0)
    x = (torch.rand(1, 64, 16, 16) * 6e4).half().contiguous(memory_format=torch.channels_last)
    errors: dict = {}
    t = time_variants(fold_block(block, dtype=torch.float16), spec, x,
                      synthetic_masks(spec, 0.5), [get_variant("dense")], warmup=0, reps=1,
                      verify=True, errors=errors)
    assert math.isfinite(t["dense"]["{}"]), errors
