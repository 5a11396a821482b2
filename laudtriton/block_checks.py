"""What ``laudtriton.compile`` checks of each LAUD block before it folds it: that its
modules and maskers are what ``ops.fold_block`` and the compiled gates compute
(``check_foldable``), and that its downsample maps the block's input to its output's shape
(``check_downsample``, run on every block before the example forward)."""

from __future__ import annotations

from torch import nn

from .nn.block import LaudBottleneck
from .nn.maskers import MaskerChannelMLP, MaskerSpatial
from .stem import foldable_bn, own_forward


def check_downsamples(net: nn.Module, prefix: str = "") -> None:
    """``check_downsample`` of each LAUD block of ``net`` (``prefix``: its name in the
    user's module), before the example forward, whose refusal named no block.

    Raises:
        ValueError: as ``check_downsample``.
    """
    for sub, m in net.named_modules():
        if isinstance(m, LaudBottleneck):
            check_downsample(".".join(n for n in (prefix, sub) if n) or "block", m)


def check_downsample(name: str, block: LaudBottleneck) -> None:
    """Raise unless the conv of ``block``'s downsample (its first module, or itself)
    maps the block's input to its output's shape (downsample(x) is added to it): conv1's
    input channels, conv3's output channels, the block's stride. Other modules are left
    to ``check_foldable``.

    Raises:
        ValueError: naming the conv, what differs and what it must be.
    """
    ds, where = block.downsample, f"{name}.downsample"
    if isinstance(ds, nn.Sequential) and len(ds):
        ds, where = ds[0], f"{where}[0]"
    if not isinstance(ds, nn.Conv2d):
        return
    wants = [("stride", ds.stride, (block.stride,) * 2, "the block's stride")]
    for attr, conv, what in (("in_channels", block.conv1, "input channels (conv1's"),
                             ("out_channels", block.conv3, "output channels (conv3's")):
        if isinstance(conv, nn.Conv2d):
            wants.append((attr, getattr(ds, attr), getattr(conv, attr),
                          f"the block's {what} {attr})"))
    for attr, got, want, what in wants:
        if got != want:
            raise ValueError(
                f"compile: {where} is {ds!r}: its {attr} is {got}, where {what} is {want}; "
                "downsample(x) is added to the block's output, so it must map the block's "
                "input to the output's shape")


def check_foldable(name: str, block: LaudBottleneck) -> None:
    """Raise unless ``ops.fold_block`` computes ``block`` exactly, with stride 1 or 2:
    conv1 and conv3 1x1,
    conv2 3x3 with padding 1 and the block's stride, all without bias, groups 1,
    dilation 1 and zero padding; bn1-bn3 affine BatchNorm2d with running statistics; the
    activation nn.ReLU; a downsample that is None or nn.Sequential(1x1 conv of the
    block's stride, no bias; that BN), its conv from conv1's input channels to conv3's
    output channels (``check_downsample``); maskers as ``laudtriton.nn.maskers`` builds
    them.

    Raises:
        ValueError: naming the block and the module that differs.
    """
    def conv_ok(c, k, stride, pad):
        return (isinstance(c, nn.Conv2d) and own_forward(c, nn.Conv2d)  # parametrized too
                and c.kernel_size == (k, k) and c.stride == (stride,) * 2
                and c.padding == (pad, pad) and c.dilation == (1, 1) and c.groups == 1
                and c.bias is None and c.padding_mode == "zeros")

    cls = type(block)
    for attr in ("forward", "compute_masks", "grid_size", "out_hw"):
        if getattr(cls, attr) is not getattr(LaudBottleneck, attr):
            raise ValueError(
                f"compile: {name} is a {cls.__name__}, which overrides LaudBottleneck."
                f"{attr}; a compiled block computes LaudBottleneck's own masks and "
                "forward. Hold the block in a module of yours instead of subclassing it")
    s = block.stride
    if s not in (1, 2):  # LAUDNet's strides: at 3 and more the gates' mask1 of a 1x1 grid
        # (every input pixel) is not the reference's (pixels no output reads stay off)
        raise ValueError(f"compile: {name} has stride {s}; compiled LAUD blocks take stride "
                         "1 or 2 (those of LAUDNet's networks)")
    parts = [("conv1", block.conv1, conv_ok(block.conv1, 1, 1, 0)),
             ("conv2", block.conv2, conv_ok(block.conv2, 3, s, 1)),
             ("conv3", block.conv3, conv_ok(block.conv3, 1, 1, 0)),
             ("bn1", block.bn1, foldable_bn(block.bn1)), ("bn2", block.bn2, foldable_bn(block.bn2)),
             ("bn3", block.bn3, foldable_bn(block.bn3)),
             ("relu", block.relu, type(block.relu) is nn.ReLU)]
    ds = block.downsample
    if ds is not None:
        check_downsample(name, block)
        ok = (type(ds) is nn.Sequential and len(ds) == 2 and conv_ok(ds[0], 1, s, 0)
              and foldable_bn(ds[1]))
        parts.append(("downsample", ds, ok))
    for part, mod, ok in parts:
        if not ok:
            raise ValueError(
                f"compile: {name}.{part} is {mod!r}; the compiled block folds a LAUD "
                "bottleneck as LaudBottleneck builds it (1x1, 3x3 with padding 1 and the "
                "block's stride, 1x1 convolutions without bias, each followed by an affine "
                "BatchNorm2d; nn.ReLU; a downsample of a 1x1 strided convolution without "
                "bias and a BatchNorm2d)")
    _check_maskers(name, block)


def _check_maskers(name: str, block: LaudBottleneck) -> None:
    """Raise unless the block's maskers are what the compiled block's gates
    (``ops.masks.Gates``) read: a ``MaskerSpatial`` whose conv is a 1x1 nn.Conv2d with
    bias to 2 logits; a ``MaskerChannelMLP`` of nn.Linear layers with bias (two with an
    nn.ReLU between them, or one) to 2·G logits. Their weights may be parametrized
    (``weight_norm``): the gates read the weights it computes, once. Another channel
    masker runs as it is.

    Raises:
        ValueError: naming the block and the masker that differs.
    """
    def plain(m, base):  # base's own computation; a parametrized weight allowed
        return isinstance(m, base) and own_forward(m, base)

    ms, mc = block.masker_spatial, block.masker_channel
    if ms is not None:
        c = getattr(ms, "conv", None)
        if not (type(ms) is MaskerSpatial and plain(c, nn.Conv2d)
                and c.kernel_size == (1, 1) and c.stride == (1, 1) and c.padding == (0, 0)
                and c.dilation == (1, 1) and c.groups == 1 and c.bias is not None
                and c.out_channels == 2):
            raise ValueError(
                f"compile: {name}.masker_spatial is {ms!r}; the compiled block reads a "
                "MaskerSpatial whose conv is a 1x1 nn.Conv2d with bias to 2 logits")
    if isinstance(mc, MaskerChannelMLP):
        seq = mc.conv
        layers = ([seq] if plain(seq, nn.Linear)
                  else list(seq) if type(seq) is nn.Sequential else [])
        ok = (type(mc) is MaskerChannelMLP and len(layers) in (1, 3)
              and all(plain(m, nn.Linear) and m.bias is not None for m in layers[::2])
              and all(type(m) is nn.ReLU for m in layers[1::2])
              and layers[-1].out_features == 2 * mc.groups)
        if not ok:
            raise ValueError(
                f"compile: {name}.masker_channel is {mc!r}; the compiled block reads a "
                "MaskerChannelMLP of nn.Linear layers with bias (Linear, ReLU, Linear or "
                "one Linear) to 2·G logits")
