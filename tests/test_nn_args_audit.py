"""Audit of the argument parsing of laudtriton.nn's model constructors: every per-stage
argument of a LAUD-ResNet (mode, granularity, channel_granularity, channel_masker,
channel_masker_layers, channel_masker_reduction, depths) takes the same forms and refuses
the same things; a block's feature_size pair takes the forms a per-stage list does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from laudtriton.nn import LaudBottleneck, LaudResNet, laud_resnet50

# (argument, the [4, 4, 2, 1]-like value its forms spell, extra kwargs it needs)
INT_ARGS = [
    ("granularity", [4, 4, 2, 1], {}),
    ("channel_granularity", [1, 2, 4, 1], dict(mode="channel")),
    ("channel_masker_layers", [1, 2, 2, 1], dict(mode="channel")),
    ("channel_masker_reduction", [16, 8, 4, 2], dict(mode="channel")),
    ("depths", [1, 2, 1, 1], {}),
]


def _build(name: str, value, **kw) -> LaudResNet:
    """A quarter-width LAUD-ResNet with ``name=value`` (depths (1, 1, 1, 1) otherwise)."""
    depths = value if name == "depths" else (1, 1, 1, 1)
    if name != "depths":
        kw[name] = value
    return LaudResNet(depths, width_mult=0.25, num_classes=10, input_size=64, **kw)


def _forms(v: list[int]) -> list:
    """The accepted spellings of the per-stage ints v."""
    return [list(v), tuple(v), np.array(v), np.array(v, dtype=np.int32),
            [np.int64(x) for x in v], "-".join(map(str, v))]


@pytest.mark.parametrize("name,v,kw", INT_ARGS, ids=[a[0] for a in INT_ARGS])
def test_per_stage_ints_take_every_form(name, v, kw):
    """np.array([4, 4, 2, 1]) was refused as a granularity while depths took it, and
    depths refused "1-2-1-1" while the others took it."""
    for form in _forms(v):
        got = _build(name, form, **kw).config[name]
        assert list(got) == v and all(type(x) is int for x in got), (name, form)


@pytest.mark.parametrize("name,v,kw", INT_ARGS[:4], ids=[a[0] for a in INT_ARGS[:4]])
def test_per_stage_scalars_stand_for_every_stage(name, v, kw):
    """One value for the four stages, as a Python int, a numpy int or a 0-d array."""
    for one in (2, np.int64(2), np.array(2)):
        got = _build(name, one, **kw).config[name]
        assert got == [2, 2, 2, 2] and all(type(x) is int for x in got), (name, one)


BAD = [True, np.bool_(True), 2.0, 2.5, np.float64(2.0), 0, -1]
BAD_IDS = ["True", "np.True_", "2.0", "2.5", "np.float64(2.0)", "0", "-1"]


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("name,v,kw", INT_ARGS, ids=[a[0] for a in INT_ARGS])
def test_per_stage_ints_refuse_the_same_values(name, v, kw, bad):
    """2.0 was taken as a granularity (S=2) while depths and LaudBottleneck refuse it.
    (An array of one bad value each: numpy reads [True, 4, 2, 1] as the ints 1, 4, 2, 1.)"""
    for form in ([bad, *v[1:]], np.array([bad] * 4), *(
            [] if name == "depths" else [bad])):
        with pytest.raises(ValueError, match=rf"^{name} "):
            _build(name, form, **kw)


@pytest.mark.parametrize("name,v,kw", INT_ARGS, ids=[a[0] for a in INT_ARGS])
def test_per_stage_ints_refuse_wrong_lengths_and_2d_arrays(name, v, kw):
    for form in (v[:3], v + [1], np.array(v[:3]), np.array([v]), np.array([v, v]),
                 "-".join(map(str, v[:3]))):
        with pytest.raises(ValueError, match=rf"^{name} "):
            _build(name, form, **kw)


@pytest.mark.parametrize("form", [{1: 0, 2: 0, 3: 0, 4: 0}, {4, 1, 3, 2}, iter([1, 1, 1, 1]),
                                  b"\x01\x01\x01\x01", 2, None],
                         ids=["dict", "set", "iterator", "bytes", "int", "None"])
def test_depths_refuses_what_is_not_a_list_of_four(form):
    """A dict was read as its keys (depths (1, 2, 3, 4)), a set in its hash order and
    bytes as their byte values; one int is not taken for every stage (as before)."""
    with pytest.raises(ValueError, match=r"^depths .* must be 4 positive ints"):
        LaudResNet(form, width_mult=0.25, input_size=None)


def test_per_stage_modes_and_maskers_take_1d_arrays():
    """A numpy array of names was refused as "not valid" (a list of them was taken)."""
    modes = ["spatial", "channel", "layer", "both"]
    maskers = ["MLP", "conv_linear", "MLP", "conv_linear"]
    model = _build("mode", np.array(modes), channel_masker=np.array(maskers))
    assert model.config["mode"] == modes and model.config["channel_masker"] == maskers
    assert all(type(m) is str for m in model.config["mode"] + model.config["channel_masker"])
    with pytest.raises(ValueError, match=r"^mode .*2-d"):
        _build("mode", np.array([modes]))


def test_laud_resnet50_takes_a_numpy_granularity():
    """The reported case: laud_resnet50(granularity=np.array([4, 4, 2, 1])) was refused."""
    model = laud_resnet50(granularity=np.array([4, 4, 2, 1]), width_mult=0.25,
                          num_classes=10)
    assert model.config["granularity"] == [4, 4, 2, 1]
    assert [s[0].granularity for s in (model.layer1, model.layer2, model.layer3,
                                       model.layer4)] == [4, 4, 2, 1]


def test_a_zero_d_tensor_and_digit_strings_still_count():
    """What the parser took before and still takes (the CLI passes digit strings)."""
    assert _build("granularity", torch.tensor(2)).config["granularity"] == [2] * 4
    assert _build("granularity", "2").config["granularity"] == [2] * 4
    for bad in (torch.tensor(2.0), torch.tensor(True), "2.0", torch.tensor([4, 4, 2, 1.5])):
        with pytest.raises(ValueError, match=r"^granularity "):
            _build("granularity", bad)


def test_block_feature_size_takes_a_1d_array_pair():
    """feature_size np.array([8, 8]) was refused while (8, 8) and [8, 8] were taken."""
    for fs in (np.array([8, 8]), torch.tensor([8, 8])):
        blk = LaudBottleneck(64, 16, granularity=4, feature_size=fs)
        assert blk(torch.randn(1, 64, 8, 8)).shape == (1, 64, 8, 8)
    for bad in (np.array([[8, 8]]), np.array([8.0, 8.0]), np.array([8, 8, 8])):
        with pytest.raises(ValueError, match=r"^feature_size "):
            LaudBottleneck(64, 16, granularity=4, feature_size=bad)
    with pytest.raises(ValueError, match="larger than its feature map 2x2"):
        LaudBottleneck(64, 16, granularity=4, feature_size=np.array([2, 2]))


@pytest.mark.parametrize("factory,depths", [("laud_resnet50", "(3, 4, 6, 3)"),
                                            ("laud_resnet101", "(3, 4, 23, 3)")])
def test_factories_refuse_depths_by_name(factory, depths):
    """laud_resnet50(depths=...) said "LaudResNet.__init__() got multiple values for
    argument 'depths'" (given once); it now names the factory and its fixed depths."""
    import re

    import laudtriton.nn as lnn

    expected = f"{factory}() got an unexpected keyword argument 'depths': its depths are {depths}"
    with pytest.raises(TypeError, match="^" + re.escape(expected)):
        getattr(lnn, factory)(depths=(1, 1, 1, 1), width_mult=0.25, input_size=None)


def test_depths_as_one_int_is_refused_with_its_name():
    """Item: depths=3 is refused where granularity=2 stands for every stage. Kept: the
    refusal is documented and names depths and the accepted forms; an int there reads as
    an architecture (LaudResNet(50) would build 200 blocks)."""
    import re

    for one in (3, 50, np.int64(3)):
        expected = f"depths {one!r} must be 4 positive ints (blocks per stage)"
        with pytest.raises(ValueError, match="^" + re.escape(expected)):
            LaudResNet(one, width_mult=0.25, input_size=None)
