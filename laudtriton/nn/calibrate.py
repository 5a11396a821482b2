"""Set masker biases so that each block reaches a target activation rate on an input.

Benchmarks and demos use untrained maskers; calibrating them makes the measured rate the
rate asked for. Blocks are calibrated in execution order, since each block's masks change
the input of the next.
"""

from __future__ import annotations

import numbers

import torch

from .block import LaudBottleneck
from .resnet import LaudResNet


def _shift_for_rate(margins: torch.Tensor, k: int) -> float:
    """Offset δ such that exactly k of ``margins + δ`` are >= 0 (in float64).

    margins: [N] logit differences (keep − skip) without the offset.
    """
    m = margins.flatten().double().sort(descending=True).values
    n = m.numel()
    # past every margin by 1, or by 1e-3 of the largest where 1 is below float32's step
    # there (margins near 1e8: the offset is added to the masker's float32 bias)
    pad = 1.0 + 1e-3 * float(m.abs().max())
    if k <= 0:
        return float(-(m[0]) - pad)
    if k >= n:
        return float(-(m[-1]) + pad)
    # threshold halfway between the k-th and the (k+1)-th margin
    return float(-(m[k - 1] + m[k]) / 2)


def _settle(margins_of, bias: torch.Tensor, k: int, steps: int = 64) -> None:
    """Shift ``bias`` (a masker bias slice, in place) until exactly k of ``margins_of()``
    are >= 0, where the float64 midpoint of two margins closer than the logits' float
    step was lost in rounding. One shift d is added to every element of ``bias`` (in
    float64, then rounded to its dtype); the count grows with d, so d is found by
    doubling a step from the bias dtype's epsilon until k is reached or passed, then by
    bisection. When no d gives k (two margins tie to the last bit) the bias is left at
    the last d short of k. At most 2·``steps`` calls of ``margins_of``."""
    b0 = bias.detach().clone()

    def shifted(d: float) -> torch.Tensor:
        return (b0.double() + d).to(b0.dtype)

    def count(d: float) -> int:
        bias.copy_(shifted(d))
        return int((margins_of() >= 0).sum())

    start = count(0.0)
    if start == k:
        return
    up = start < k  # the direction that brings the count towards k

    def passed(c: int) -> bool:
        return c > k if up else c < k

    short, over = 0.0, None  # d short of k; d past it
    step = torch.finfo(b0.dtype).eps * max(1.0, float(b0.abs().max()))
    for _ in range(steps):
        d = step if up else -step
        c = count(d)
        if c == k:
            return
        if passed(c):
            over = d
            break
        short, step = d, 2 * step
    for _ in range(steps if over is not None else 0):
        mid = (short + over) / 2
        if torch.equal(shifted(mid), shifted(short)) or torch.equal(shifted(mid),
                                                                    shifted(over)):
            break  # adjacent floats: no shift between them
        c = count(mid)
        if c == k:
            return
        short, over = (short, mid) if passed(c) else (mid, over)
    count(short)


def _set_rate(margins_of, bias: torch.Tensor, rate: float) -> None:
    """Shift ``bias`` (a masker's keep-logit bias, in place) so that round(rate·N) of
    the N margins ``margins_of()`` are >= 0: by the float64 offset, then ``_settle``
    where rounding lost it."""
    margins = margins_of()
    k = int(round(rate * margins.numel()))
    bias += _shift_for_rate(margins, k)
    _settle(margins_of, bias, k)


def _margins(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 0] - logits[:, 1]


def _check_rates(rate: float, channel_rate: float | None) -> None:
    for name, value in (("rate", rate), ("channel_rate", channel_rate)):
        if value is None and name == "channel_rate":
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be in [0, 1] (a number), got {value!r}")


def _check_x(x, channels: int, weight: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a [B, {channels}, H, W] tensor for this {what}, "
                         f"got {shape}")
    if x.dtype != weight.dtype or x.device != weight.device:
        raise ValueError(f"x is {x.dtype} on {x.device}; the {what} is {weight.dtype} on "
                         f"{weight.device}")


@torch.no_grad()
def calibrate_block(block: LaudBottleneck, x: torch.Tensor, rate: float,
                    channel_rate: float | None = None) -> None:
    """Calibrate one block's maskers on its input x [B, Cin, H, W] in eval semantics: the
    block runs in eval mode meanwhile (a masker's BatchNorm uses and keeps its running
    statistics) and gets its training flag back afterwards.

    Raises:
        ValueError: if x is not [B, Cin, H, W] of the block's dtype and device, or a rate
            is outside [0, 1].
    """
    if not isinstance(block, LaudBottleneck):
        raise ValueError(f"calibrate_block takes a LaudBottleneck, got {type(block).__name__} "
                         "(a whole LaudResNet: calibrate_rates)")
    _check_x(x, block.inplanes, block.conv1.weight, "block")
    _check_rates(rate, channel_rate)
    was_training = block.training
    block.eval()
    try:
        _calibrate(block, x, rate, channel_rate)
    finally:
        block.train(was_training)


def _calibrate(block: LaudBottleneck, x: torch.Tensor, rate: float,
               channel_rate: float | None) -> None:
    spatial, channel = block.masker_spatial, block.masker_channel
    if spatial is not None:
        grid = block.grid_size(tuple(x.shape[-2:]))
        _set_rate(lambda: _margins(spatial.logits(x, grid)), spatial.conv.bias[:1], rate)
    if channel is not None:
        _set_rate(lambda: _margins(channel.logits(x)), channel.last_linear().bias[:channel.groups],
                  rate if channel_rate is None else channel_rate)


@torch.no_grad()
def calibrate_rates(model: LaudResNet, x: torch.Tensor, rate: float,
                    channel_rate: float | None = None) -> list[float]:
    """Set every masker bias so that each block's rate on x is ``rate``.

    The spatial rate (mask grid cells), the layer-gate rate (samples) and the channel
    rate (groups) each land on round(rate·N)/N of their N decisions on x, so within
    ±0.02 of the target when N >= 25 and within one step 1/N otherwise (unless two of
    a masker's decisions on x have logit differences equal to the last float bit: then
    both go the same way).

    Args:
        model: a LAUD ResNet (its mode is kept; it is left in eval mode).
        x: [B, C, H, W] calibration input.
        rate: target activation rate in [0, 1].
        channel_rate: target of channel masks in "both" mode (default: ``rate``).

    Returns:
        the achieved spatial (or channel, in channel mode) rate of each block.
    """
    if not isinstance(model, LaudResNet):
        raise ValueError(f"calibrate_rates takes a LaudResNet, got {type(model).__name__} "
                         "(one LaudBottleneck: calibrate_block)")
    compiled = [n for n, b in model.blocks() if not isinstance(b, LaudBottleneck)]
    if compiled:
        raise ValueError(f"calibrate_rates: {compiled[0]} is a compiled block (the network "
                         "is a compiled copy's); calibrate the model it was compiled from, "
                         "and compile again")
    weight = model.conv1.weight
    _check_x(x, weight.shape[1], weight, "model")
    _check_rates(rate, channel_rate)
    model.eval()
    h = model.stem(x)
    achieved = []
    for _, block in model.blocks():
        calibrate_block(block, h, rate, channel_rate)
        h = block(h)
        s = block.last_stats
        achieved.append(float(s.rate3 if block.masker_spatial is not None else s.channel_rate))
    return achieved
