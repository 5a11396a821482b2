"""The ResNet stem of a compiled model: the checks that a LaudResNet's stem folds
(``check_resnet``, with ``foldable_bn`` and ``own_forward``, which compile's block checks
share), its convolution and BatchNorm folded into one convolution, and the folded stem
the compiled model and the dense baseline run."""

from __future__ import annotations

import torch
from torch import nn

from .nn.block import LaudBottleneck, detached_copy
from .nn.resnet import LaudResNet
from .ops.fold import Fingerprint, bn_scale_shift, derived
from .ops.packed import PackedConv

STEM_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.Identity)  # keep a ReLU output >= 0


def foldable_bn(bn: nn.Module) -> bool:
    """Whether ``bn`` folds into the convolution before it (``ops.fold.bn_scale_shift``):
    an affine nn.BatchNorm2d with running statistics, computing BatchNorm2d's own forward
    (a subclass that overrides it computes something the fold does not)."""
    return (isinstance(bn, nn.BatchNorm2d) and own_forward(bn, nn.BatchNorm2d)
            and bn.affine and bn.running_mean is not None)


def own_forward(module: nn.Module, base: type) -> bool:
    """Whether ``module`` (an instance of ``base``) computes ``base``'s forward: a subclass
    may add state or a parametrization, not another computation."""
    return all(getattr(type(module), a, None) is getattr(base, a, None)
               for a in ("forward", "_conv_forward"))


def check_resnet(model: LaudResNet) -> None:
    """Raise unless ``model`` computes what a compiled LaudResNet runs: LaudResNet's own
    forward, stem and head (not overridden), a stem of a plain ``Conv2d`` (any kernel,
    square stride and padding, bias or not), an affine ``BatchNorm2d`` with running
    statistics, ``nn.ReLU`` and a pooling in STEM_POOLS; the head's ``avgpool`` and ``fc``
    may be any modules (the compiled model runs copies of them).

    Raises:
        ValueError: naming the method or module that differs.
    """
    cls = type(model)
    for attr in ("forward", "stem", "head"):
        if getattr(cls, attr) is not getattr(LaudResNet, attr):
            raise ValueError(
                f"compile: {cls.__name__} overrides LaudResNet.{attr}; a compiled LaudResNet "
                "runs LaudResNet's own stem, blocks and head. Hold a LaudResNet in your "
                "module instead of subclassing it (compile then compiles the LaudResNet "
                "and keeps your module's forward)")
    done = [name for name, b in model.blocks() if not isinstance(b, LaudBottleneck)]
    if done:
        raise ValueError(
            f"compile: {done[0]} of the LaudResNet is a compiled block already (put there "
            "by an earlier compile of a module around it, or by hand); compile the network "
            "it came from")
    conv, bn, relu, pool = model.conv1, model.bn1, model.relu, model.maxpool
    problem = None
    if (not isinstance(conv, nn.Conv2d) or not own_forward(conv, nn.Conv2d)
            or type(conv.padding) is str):
        problem = (f"conv1 is {conv!r}; accepted: an nn.Conv2d (computing Conv2d's own "
                   "forward) with numeric padding")
    elif (conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros"
          or conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]):
        problem = (f"conv1 is {conv!r}; accepted: groups 1, dilation 1, zero padding, "
                   "the same stride and padding in both directions")
    elif not foldable_bn(bn):
        problem = f"bn1 is {bn!r}; accepted: an affine nn.BatchNorm2d with running statistics"
    elif type(relu) is not nn.ReLU:
        problem = f"relu is {relu!r}; accepted: nn.ReLU"
    elif (not any(isinstance(pool, t) and own_forward(pool, t) for t in STEM_POOLS)
          or getattr(pool, "return_indices", False)):
        problem = (f"maxpool is {pool!r}; accepted: "
                   f"{', '.join('nn.' + t.__name__ for t in STEM_POOLS)}")
    if problem:
        raise ValueError(f"compile: the stem's {problem}")


def set_stem(owner: nn.Module, model: LaudResNet, device: str | torch.device,
             dtype: torch.dtype, memory_format: torch.memory_format) -> None:
    """Give ``owner`` the folded stem of ``model`` (``check_resnet`` first): buffers
    ``stem_w`` and ``stem_b``, ``stem_stride``, ``stem_padding`` and ``stem_pool`` (a copy
    of model.maxpool)."""
    check_resnet(model)
    w, b = fold_conv_bn(model.conv1, model.bn1)
    owner.register_buffer("stem_w", w.to(device, dtype).contiguous(memory_format=memory_format))
    owner.register_buffer("stem_b", b.to(device, dtype))
    owner.stem_stride, owner.stem_padding = model.conv1.stride[0], model.conv1.padding[0]
    owner.stem_pool = detached_copy(model.maxpool).eval()


def stem(owner: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The folded ResNet stem, pool(relu(conv(x))), from ``set_stem``'s attributes of
    ``owner``, the convolution as a PackedConv (weights packed once; 3x faster than
    F.conv2d on the 2-core CPU), rebuilt when those tensors change. The compiled model and
    the dense baseline share it."""
    conv = derived(owner, "_stem_conv", Fingerprint((owner.stem_w, owner.stem_b),
                                                    owner.stem_stride),
                   lambda: PackedConv.make(owner.stem_w, owner.stem_b, owner.stem_stride,
                                           owner.stem_padding, tuple(x.shape[-2:]),
                                           batch=x.shape[0]))
    return owner.stem_pool(conv(x, relu=True))


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode bn(conv(x)) as one convolution: (weight, bias) in float64 (the caller
    casts to its dtype once)."""
    scale, shift = bn_scale_shift(bn)
    w = conv.weight.double() * scale[:, None, None, None]
    if conv.bias is not None:
        shift = shift + scale * conv.bias.double()
    return w, shift
