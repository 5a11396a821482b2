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

    def fingerprint(self) -> tuple:
        """Storage and in-place version of every tensor: changes when a weight is replaced
        or modified in place. Caches of derived weights (packed, sliced) are keyed on it."""
        ts = (self.w1, self.b1, self.w2, self.b2, self.w3, self.b3, self.wd, self.bd,
              self.kappa1, self.kappa2)
        return tuple(None if t is None else (t.data_ptr(), t._version) for t in ts) + (
            self.stride,)

    def to(self, device=None, dtype=None) -> FoldedBlock:
        def cv(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        return FoldedBlock(
            cv(self.w1), cv(self.b1), cv(self.w2), cv(self.b2), cv(self.w3), cv(self.b3),
            cv(self.wd), cv(self.bd), cv(self.kappa1), cv(self.kappa2), self.stride,
            self.block,
        )


@torch.no_grad()
def fold_block(block: LaudBottleneck, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> FoldedBlock:
    """Fold ``block``'s BNs (eval statistics) into its convolutions."""
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
