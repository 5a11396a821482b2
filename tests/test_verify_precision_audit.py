"""The first-output check (``time_variants(verify=True)``) keeps correct variants whose
output differs from the exact float32 reference only by precision settings or range: TF32
convolutions (cuDNN's default on CUDA, emulated here), TF32 set through torch's newer
``fp32_precision`` API (``kernelchecks.exact_fp32``), and float16 outputs past 65504, in
the whole batch or in one sample. Found reviewing 06fce55 and 885d973; each test failed
there (the in-range case is a control)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from laudtriton.kernelchecks import exact_fp32
from laudtriton.ops import BlockSpec, fold_block, get_variant, packed
from laudtriton.ops.registry import Variant
from laudtriton.ops.synthetic import synthetic_masks
from laudtriton.testing import TOLERANCE, assert_close, make_block
from laudtriton.tune.measure import time_variants


def _verified(block, x: torch.Tensor, variants: list[Variant]) -> tuple[dict, dict]:
    """``time_variants(verify=True)`` of ``variants`` on ``block`` folded in x's dtype, at
    x channels_last with masks at rate 0.5: (timings, errors)."""
    spec = BlockSpec.from_block(block, tuple(x.shape), x.dtype)
    errors: dict = {}
    t = time_variants(fold_block(block, dtype=x.dtype), spec,
                      x.contiguous(memory_format=torch.channels_last),
                      synthetic_masks(spec, 0.5), variants, warmup=0, reps=1, verify=True,
                      errors=errors)
    return t, errors


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
    torch.manual_seed(0)
    t, errors = _verified(make_block(1024, 256, 1, "channel", 1),
                          torch.rand(1, 1024, 14, 14), [_dense_as_cudnn_runs_it()])
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
    torch.manual_seed(0)
    t, errors = _verified(make_block(64, 16, 1, "spatial", 2),
                          (torch.rand(1, 64, 16, 16) * 6e4).half(), [get_variant("dense")])
    assert math.isfinite(t["dense"]["{}"]), errors


_MATMUL = torch.backends.cuda.matmul


@pytest.fixture
def tf32_by_new_api():
    """TF32 for cuBLAS matmuls set as torch >= 2.9 recommends
    (``torch.backends.cuda.matmul.fp32_precision = "tf32"``), restored after."""
    if not hasattr(_MATMUL, "fp32_precision"):
        pytest.skip("torch without the fp32_precision API")
    before = _MATMUL.fp32_precision
    _MATMUL.fp32_precision = "tf32"
    try:
        yield
    finally:
        _MATMUL.fp32_precision = before


def test_exact_fp32_after_the_new_tf32_api(tf32_by_new_api):
    """exact_fp32 reads and writes the legacy ``allow_tf32`` flags; once a caller set
    ``fp32_precision``, torch refuses that mix: RuntimeError "PyTorch is checking whether
    allow_tf32_new is enabled for cuBlas matmul ... mix of the legacy and new APIs", even
    on a CPU-only torch. The caller's setting comes back after."""
    with exact_fp32():
        assert _MATMUL.fp32_precision == "ieee"
    assert _MATMUL.fp32_precision == "tf32"


def test_verify_after_the_new_tf32_api_keeps_dense(tf32_by_new_api, tmp_path):
    """So every verified config on CPU failed its first call (scored inf: a sweep caches
    inf for all of them), and ``compile`` of a layer block raised 'every candidate variant
    (dense, compact) failed on the example input'."""
    import laudtriton

    block = make_block(64, 16, 1, "layer", 1)
    torch.manual_seed(0)
    t, errors = _verified(block, torch.rand(1, 64, 16, 16), [get_variant("dense")])
    assert math.isfinite(t["dense"]["{}"]), errors
    x2 = torch.rand(2, 64, 16, 16)
    cm = laudtriton.compile(block, x2, backend="cpu", tune="off", cache_dir=tmp_path,
                            progress=False)
    with torch.no_grad():
        assert_close(cm(x2), block.eval()(x2))


def _sample_one_zeroed() -> Variant:
    """``dense`` with sample 1 of its output zeroed: a wrong variant."""
    dense = get_variant("dense")

    def run(fb, x, masks, cfg):
        out = dense.run(fb, x, masks, cfg).clone()
        out[1] = 0
        return out

    return Variant(name="wrong", modes=dense.modes, backends=("cpu",), run=run,
                   cost=dense.cost)


@pytest.mark.parametrize("scale0", [1.0, 6e4], ids=["in-range", "sample-0-overflows"])
def test_verify_judges_a_batch_with_one_sample_past_float16s_range(scale0):
    """885d973 skips the whole check when max|reference| passes 65504: one sample whose
    float16 activations overflow (sample 0 here, reference 7.3e4) left every other sample
    unjudged, and a config wrong on those (sample 1 zeroed, reference up to 3.5) was timed
    and could win the plan; in range it is caught. Suggested: judge the samples whose
    reference is within finfo.max (an overflowing sample's in-range elements can be NaN
    from an overflowed intermediate, dense's too), the bound from their max."""
    torch.manual_seed(0)
    x = torch.rand(2, 64, 16, 16)
    x[0] *= scale0
    t, errors = _verified(make_block(64, 16, 1, "spatial", 2), x.half(),
                          [get_variant("dense"), _sample_one_zeroed()])
    assert math.isfinite(t["dense"]["{}"]), errors
    assert t["wrong"]["{}"] == math.inf and ("wrong", "{}") in errors
