"""Audit of ``baseline.DenseModel``: the dense network of a model in another dtype than
float32, and what its constructor and forward take (a torch error, or a wrong network,
before: a float64 or bfloat16 model's baseline failed at its first forward)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from laudtriton.baseline import DenseModel, dense_forms
from laudtriton.nn import LaudResNet, calibrate_rates
from laudtriton.testing import randomize_bn

FORMS = [torch.contiguous_format, torch.channels_last]


def tiny(dtype: torch.dtype = torch.float32) -> LaudResNet:
    """A small network in ``dtype`` with every mask on (rate 1.0): the dense network."""
    torch.manual_seed(0)
    model = randomize_bn(LaudResNet((1, 2, 1, 1), mode="both", granularity="2-2-1-1",
                                    width_mult=0.25, input_size=None, num_classes=7)).eval()
    model = model.to(dtype)
    calibrate_rates(model, torch.randn(2, 3, 32, 32, dtype=dtype), 1.0)
    return model


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_a_model_in_another_dtype_gets_its_dense_network_in_float32(dtype):
    """The stem and blocks were folded to float32 and the head copied in the model's
    dtype: every forward failed in torch (mat1 and mat2 must have the same dtype)."""
    model = tiny(dtype)
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():  # the same weights, exactly, in float64
        ref = copy.deepcopy(model).double()(x.double())
    for name, dense in dense_forms(model).items():
        out = dense(x)
        assert out.dtype == torch.float32, name
        assert float((out.double() - ref).abs().max()) <= 1e-4 * float(ref.abs().max()), name
    assert next(model.parameters()).dtype == dtype  # the model as it was


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_an_input_of_another_dtype_is_refused_naming_it(form, dtype):
    dense = DenseModel(tiny(), form)
    with pytest.raises(ValueError, match=rf"^x is {dtype} on cpu; this DenseModel computes "
                                         r"in torch\.float32 on cpu"):
        dense(torch.randn(1, 3, 32, 32, dtype=dtype))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", [(1, 4, 32, 32), (3, 32, 32), (1, 1, 3, 32, 32)])
def test_an_input_of_another_shape_is_refused_naming_it(form, shape):
    dense = DenseModel(tiny(), form)
    with pytest.raises(ValueError, match=r"^x must be a \[B, 3, H, W\] tensor, got shape "
                                         + repr(shape).replace("(", r"\(").replace(")", r"\)")):
        dense(torch.randn(*shape))


def test_a_converted_dense_model_takes_inputs_of_its_new_dtype():
    """A DenseModel whose folded tensors and head are moved by hand after construction
    (as ``gpucheck.whole.dense_model`` did before it called ``DenseModel.to``): the
    input check follows the tensors, not the dtype it was built in."""
    dense = DenseModel(tiny(), torch.contiguous_format)
    dense.stem_w, dense.stem_b = dense.stem_w.double(), dense.stem_b.double()
    dense.folded = [fb.to("cpu", torch.float64) for fb in dense.folded]
    dense.fc = dense.fc.double()
    assert dense(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("bad", [None, nn.Sequential(nn.Conv2d(3, 3, 1))])
def test_a_model_that_is_no_laud_network_is_refused(bad):
    with pytest.raises(ValueError, match=r"^DenseModel takes a LaudResNet, got "):
        DenseModel(bad, torch.channels_last)


@pytest.mark.parametrize("form", ["channels_last", torch.preserve_format, None])
def test_a_memory_format_other_than_the_two_forms_is_refused(form):
    with pytest.raises(ValueError, match=r"^memory_format must be torch\.channels_last or "
                                         r"torch\.contiguous_format, got "):
        DenseModel(tiny(), form)


@pytest.mark.parametrize("part", ["", "layer2.0.bn2", "fc"])
def test_a_model_with_a_tensor_on_the_meta_device_is_refused_naming_it(part):
    """A meta model gave a meta baseline; a meta BatchNorm or head torch's error at the
    first forward (Tensor on device meta is not on the expected device cpu)."""
    model = tiny()
    model.get_submodule(part).to("meta")
    name = {"": "conv1.weight", "layer2.0.bn2": "layer2.0.bn2.weight", "fc": "fc.weight"}
    with pytest.raises(ValueError, match=rf"^DenseModel: the model's {name[part]} is on "
                                         r"the meta device"):
        DenseModel(model, torch.channels_last)
