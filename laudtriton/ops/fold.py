"""Fold BatchNorm into convolution weights for inference (DESIGN.md section 1).

BN(y) = scale·y + shift. Because the official block applies the channel mask *before*
BN, an inactive channel carries BN(0) = shift, so after ReLU the constant
κ = relu(shift); we keep κ1 (after bn1) and κ2 (after bn2) for the exact correction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..nn.block import LaudBottleneck


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as (scale [C], shift [C]) in float64."""
    var = bn.running_var.double()
    scale = bn.weight.double() / torch.sqrt(var + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


class Fingerprint:
    """The tensors of a FoldedBlock (by identity), their in-place versions and the stride.

    Equal only to a Fingerprint of the very same tensor objects at the same versions. It
    holds the tensors, so while a cache keyed on it lives none of them is freed: a new
    tensor cannot take over an old one's memory and pass for it (as a data_ptr key can)."""

    __slots__ = ("tensors", "versions", "stride")

    def __init__(self, tensors: tuple, stride: int):
        self.tensors = tensors
        self.versions = tuple(None if t is None else t._version for t in tensors)
        self.stride = stride

    def __eq__(self, other) -> bool:
        return (isinstance(other, Fingerprint) and self.stride == other.stride
                and self.versions == other.versions
                and all(a is b for a, b in zip(self.tensors, other.tensors)))

    __hash__ = None


class Derived:
    """A value derived from a FoldedBlock's tensors (packed or sliced weights), kept as an
    attribute of the block with the Fingerprint it was built from. Copies and pickles of
    it are empty (packed oneDNN weights can be neither deep-copied nor saved, and the
    value can be derived again)."""

    __slots__ = ("owner", "value")

    def __init__(self, owner: Fingerprint | None = None, value=None):
        self.owner, self.value = owner, value

    def __reduce__(self):
        return (Derived, ())

    def get(self, owner: Fingerprint):
        """The value if it was built from ``owner``, else None."""
        return self.value if self.owner == owner else None


def derived(obj, attr: str, owner: Fingerprint, build):
    """The value kept on ``obj`` as attribute ``attr`` (a Derived) if it was built from
    ``owner``; else ``build()``, kept there for next time."""
    cached = getattr(obj, attr, None)
    value = None if cached is None else cached.get(owner)
    if value is None:
        value = build()
        setattr(obj, attr, Derived(owner, value))
    return value


@dataclass
class FoldedBlock:
    """Inference weights of one LAUD bottleneck with BN folded in.

    w1: [w, Cin]; b1: [w]              conv1 + bn1
    w2: [w, w, 3, 3]; b2: [w]          conv2 + bn2 (stride ``stride``, padding 1)
    w3: [Cout, w]; b3: [Cout]          conv3 + bn3
    wd: [Cout, Cin] | None; bd         downsample conv (stride ``stride``) + BN
    kappa1, kappa2: [w]                relu(bn1(0)), relu(bn2(0)): values of inactive channels
    block: the reference block (its maskers produce the masks).
    """

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    w3: torch.Tensor
    b3: torch.Tensor
    wd: torch.Tensor | None
    bd: torch.Tensor | None
    kappa1: torch.Tensor
    kappa2: torch.Tensor
    stride: int
    block: LaudBottleneck

    @property
    def width(self) -> int:
        return self.w1.shape[0]

    @property
    def out_channels(self) -> int:
        return self.w3.shape[0]

    def fingerprint(self) -> Fingerprint:
        """Identity and in-place version of every tensor: changes when a weight is replaced
        or modified in place. Caches of derived weights (packed, sliced) are keyed on it."""
        return Fingerprint((self.w1, self.b1, self.w2, self.b2, self.w3, self.b3, self.wd,
                            self.bd, self.kappa1, self.kappa2), self.stride)

    def check_input(self, x: torch.Tensor, channel: torch.Tensor | None = None,
                    who: str = "block") -> None:
        """Raise a ValueError naming the problem unless x is [B, Cin, H, W] with this
        block's dtype and device, and ``channel`` (a channel mask, if given) is [B, G] with
        G > 0 dividing the width. who: the variant, for the message."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{who}: x must be [B, Cin, H, W], got {got}")
        if x.shape[1] != self.w1.shape[1]:
            raise ValueError(f"{who}: x has {x.shape[1]} channels; the block expects "
                             f"{self.w1.shape[1]}")
        if x.dtype != self.w1.dtype or x.device != self.w1.device:
            raise ValueError(f"{who}: x is {x.dtype} on {x.device}; the folded weights are "
                             f"{self.w1.dtype} on {self.w1.device}")
        if channel is not None and (channel.dim() != 2 or channel.shape[0] != x.shape[0]
                                    or channel.shape[1] == 0 or self.width % channel.shape[1]):
            raise ValueError(
                f"{who}: masks.channel has shape {tuple(channel.shape)}; accepted "
                f"[{x.shape[0]}, G] with G dividing the width {self.width}")

    def to(self, device=None, dtype=None) -> FoldedBlock:
        def cv(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        return FoldedBlock(
            cv(self.w1), cv(self.b1), cv(self.w2), cv(self.b2), cv(self.w3), cv(self.b3),
            cv(self.wd), cv(self.bd), cv(self.kappa1), cv(self.kappa2), self.stride,
            self.block,
        )


def fold_block(block: LaudBottleneck, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> FoldedBlock:
    """Fold ``block``'s BNs (eval statistics) into its convolutions, without autograd
    history, also when called under ``torch.inference_mode()``: folded there, the weights
    would be inference tensors, whose version counters the variants' weight caches read
    (``Fingerprint``), and every variant but channel ``dense`` would raise on them.
    (``inference_mode(False)`` turns grad mode on, so ``no_grad`` comes inside it.)"""
    with torch.inference_mode(False), torch.no_grad():
        return _fold(block, dtype, device)


def _fold(block: LaudBottleneck, dtype: torch.dtype,
          device: torch.device | str | None) -> FoldedBlock:
    dev = device if device is not None else block.conv1.weight.device

    def out(t):
        return t.to(device=dev, dtype=dtype).contiguous()

    s1, t1 = bn_scale_shift(block.bn1)
    s2, t2 = bn_scale_shift(block.bn2)
    s3, t3 = bn_scale_shift(block.bn3)
    w1 = block.conv1.weight.double()[:, :, 0, 0] * s1[:, None]
    w2 = block.conv2.weight.double() * s2[:, None, None, None]
    w3 = block.conv3.weight.double()[:, :, 0, 0] * s3[:, None]
    wd = bd = None
    if block.downsample is not None:
        conv, bn = block.downsample[0], block.downsample[1]
        sd, td = bn_scale_shift(bn)
        wd, bd = out(conv.weight.double()[:, :, 0, 0] * sd[:, None]), out(td)
    return FoldedBlock(
        out(w1), out(t1), out(w2), out(t2), out(w3), out(t3), wd, bd,
        out(torch.relu(t1)), out(torch.relu(t2)), block.stride, block,
    )
