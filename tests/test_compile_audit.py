"""laudtriton.compile: defects found by an audit of the public API (session 57): the
default example input of a network with a replaced stem, an example that overflows the
compiled dtype, the error of a user's forward that reads what a CompiledModel lacks, and
a head moved to another dtype on its own."""

import pytest
import torch
from torch import nn

import laudtriton
from laudtriton.nn import LaudResNet, calibrate_rates
from laudtriton.testing import randomize_bn


def tiny(mode="both", **kw):
    torch.manual_seed(0)
    kw.setdefault("input_size", None)
    return randomize_bn(LaudResNet((1, 2, 1, 1), mode=mode, granularity="2-2-1-1",
                                   channel_granularity=2, width_mult=0.25, num_classes=7,
                                   **kw)).eval()


def compile_cpu(model, x, **kw):
    return laudtriton.compile(model, x, backend="cpu", tune="off", progress=False, **kw)


def assert_matches(model, cm, x):
    ref = model(x)
    assert (cm(x) - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_the_default_example_takes_the_channels_of_a_replaced_stem_conv():
    model = tiny(input_size=32)
    model.conv1 = nn.Conv2d(1, model.conv1.out_channels, 7, 2, 3, bias=False)
    model = randomize_bn(model).eval()
    cm = laudtriton.compile(model, backend="cpu", tune="off", progress=False)
    assert cm.input_shape == (1, 1, 32, 32)
    assert_matches(model, cm, torch.randn(2, 1, 32, 32))


@pytest.mark.parametrize("dtype, big", [(torch.float16, 1e5), (torch.float32, 1e300)])
def test_an_example_that_overflows_the_compiled_dtype_is_refused(dtype, big):
    model = tiny()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    x[0, 0, 0, 0] = big  # finite in float64, inf once cast to dtype
    with pytest.raises(ValueError, match=r"example_input overflows torch\.float"):
        compile_cpu(model, x, dtype=dtype)


class _ReadsConfig(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny()

    def forward(self, x):
        return self.net(x) * self.net.config["num_classes"]


def test_a_forward_failing_on_the_compiled_network_says_so():
    # the uncompiled forward runs; the copy with the CompiledModel in place does not:
    # the error named the model's "own forward", which works
    with pytest.raises(ValueError, match=r"once a CompiledModel is in place of net "
                                         r"\(AttributeError: .*config") as info:
        compile_cpu(_ReadsConfig().eval(), torch.randn(2, 3, 32, 32))
    assert "own forward" not in str(info.value)


def test_a_head_moved_to_another_dtype_on_its_own_is_named():
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x)
    cm.fc.double()
    with pytest.raises(RuntimeError, match=r"fc\.weight is torch\.float64 on cpu; the "
                                           r"compiled model computes in torch\.float32"):
        cm(x)
    cm.fc.float()
    assert_matches(model, cm, x)


def test_variants_given_as_bytes_are_named_as_such():
    # bytes iterate as ints: the message named "100", the first byte of b"dense"
    with pytest.raises(ValueError, match="variants must be a variant name or a list of "
                                         "names, got bytes b'dense'"):
        compile_cpu(tiny(), torch.randn(1, 3, 32, 32), variants=b"dense")
