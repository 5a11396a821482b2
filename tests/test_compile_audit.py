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
    with pytest.raises(ValueError, match="variants must be a variant name, a comma list "
                                         "or a list of names, got bytes b'dense'"):
        compile_cpu(tiny(), torch.randn(1, 3, 32, 32), variants=b"dense")


def test_variants_as_a_comma_list_are_split_as_sweep_splits_them():
    """compile(variants="dense,gather") read one unknown name 'dense,gather'; sweep and
    the CLI take the same string as two names."""
    model, x = tiny("spatial"), torch.randn(1, 3, 32, 32)
    calibrate_rates(model, x, 0.5)
    cm = compile_cpu(model, x, variants=" dense , gather")
    assert {c.variant for b in cm.blocks for c in b.table.entries.values()} <= {
        "dense", "gather"}
    assert_matches(model, cm, x)
    with pytest.raises(ValueError, match=r"variants 'dense,,gather' has an empty item"):
        compile_cpu(model, x, variants="dense,,gather")


@pytest.mark.parametrize("block", ["layer1.0", "layer2.0"])
@pytest.mark.parametrize("part, wrong", [
    ("out_channels", lambda c: nn.Conv2d(c.in_channels, c.out_channels // 2, 1, c.stride,
                                         bias=False)),
    ("stride", lambda c: nn.Conv2d(c.in_channels, c.out_channels, 1, 3 - c.stride[0],
                                   bias=False)),
    ("in_channels", lambda c: nn.Conv2d(2 * c.in_channels, c.out_channels, 1, c.stride,
                                        bias=False)),
])
def test_a_downsample_that_misses_the_output_shape_is_named(block, part, wrong):
    """The reference forward refused such a downsample first ("downsample(x) is (2, 32,
    8, 8); the block's output ... is (2, 64, 8, 8)", or a conv's own RuntimeError for
    its input channels), naming neither the block nor what differs; the check runs now
    before any forward, naming both."""
    model = tiny()
    blk = model.get_submodule(block)
    conv = wrong(blk.downsample[0])
    blk.downsample = nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels))
    model = randomize_bn(model).eval()
    with pytest.raises(ValueError, match=rf"compile: {block}\.downsample\[0\] .*{part}"):
        compile_cpu(model, torch.randn(2, 3, 32, 32))


def test_check_foldable_names_a_downsample_to_other_channels():
    """check_foldable let a downsample conv to the wrong channel count through (only
    its kernel, stride and bias were checked)."""
    from laudtriton.block_checks import check_foldable
    from laudtriton.testing import make_block

    blk = make_block(16, 8, 2, mode="spatial")
    check_foldable("blk", blk)
    blk.downsample[0] = nn.Conv2d(16, 16, 1, 2, bias=False)
    with pytest.raises(ValueError, match=r"compile: blk\.downsample\[0\] .*out_channels is "
                                         r"16, where .*conv3's out_channels\) is 32"):
        check_foldable("blk", blk)
    with pytest.raises(ValueError, match=r"compile: block\.downsample\[0\] .*out_channels"):
        laudtriton.compile(blk, torch.randn(1, 16, 8, 8), backend="cpu", tune="off",
                           progress=False)
