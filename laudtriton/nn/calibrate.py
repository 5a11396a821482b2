"""Set masker biases so that each block reaches a target activation rate on an input.

Benchmarks and demos use untrained maskers; calibrating them makes the measured rate the
rate asked for. Blocks are calibrated in execution order, since each block's masks change
the input of the next.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from .block import BlockStats, LaudBottleneck, weight_of
from .maskers import MapTooSmall, finite_real
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


def _set_rate(margins_of, bias: torch.Tensor, rate: float) -> tuple[int, int]:
    """Shift ``bias`` (a masker's keep-logit bias, in place) so that round(rate·N) of
    the N margins ``margins_of()`` are >= 0: by the float64 offset, then ``_settle``
    where rounding lost it. Returns (decisions on, decisions wanted on): they differ
    where margins tie (a constant input gives every cell the same margin)."""
    margins = margins_of()
    k = int(round(rate * margins.numel()))
    bias += _shift_for_rate(margins, k)
    _settle(margins_of, bias, k)
    return int((margins_of() >= 0).sum()), k


@contextlib.contextmanager
def in_eval(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the length of the block, each module's own training
    flag put back after it, also on an error (a model with a frozen stage in eval inside
    a training one keeps it so). The flags are set, not ``train()`` called: what a
    module's own ``train`` override does runs neither way. Calibration and the dense
    baseline (``baseline.DenseModel``) both read the model so."""
    flags = [(m, m.training) for m in model.modules()]
    for m, _ in flags:
        m.training = False
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _margins(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 0] - logits[:, 1]


def _check_rates(rate: float | torch.Tensor, channel_rate: float | torch.Tensor | None
                 ) -> tuple[float, float | None]:
    """(rate, channel_rate) as floats (a one-value real tensor counts, as in
    ``set_temperature``, and a 0-d numpy array, as in ``SparsityLoss``: ``finite_real``),
    or a ValueError naming the one outside [0, 1] or not a number."""
    out = []
    for name, value in (("rate", rate), ("channel_rate", channel_rate)):
        if value is None and name == "channel_rate":
            out.append(None)
            continue
        try:
            v = finite_real(name, value)
        except ValueError:  # NaN, inf, a bool, no number
            v = math.nan
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1] (a number), got {value!r}")
        out.append(v)
    return out[0], out[1]


def meta_tensor(module: nn.Module) -> str | None:
    """The name of the first parameter or buffer of ``module`` on the meta device (no
    data), or None."""
    return next((n for n, t in [*module.named_parameters(), *module.named_buffers()]
                 if t.is_meta), None)


def _check_x(x, channels: int, weight: torch.Tensor, what: str, module: nn.Module) -> None:
    meta = "conv1.weight" if weight.is_meta else meta_tensor(module)
    if meta is not None:  # one masker left there failed in torch (item() on meta)
        raise ValueError(f"the {what}'s weights are on the meta device (no data: {meta}); "
                         "load or initialise them first")
    if (not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels
            or 0 in (x.shape[0], x.shape[2], x.shape[3])):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a [B, {channels}, H, W] tensor with B, H, W >= 1 for "
                         f"this {what}, got {shape}")
    if x.dtype != weight.dtype or x.device != weight.device:
        raise ValueError(f"x is {x.dtype} on {x.device}; the {what} is {weight.dtype} on "
                         f"{weight.device}")
    if not bool(torch.isfinite(x).all()):  # NaN margins would set every bias to NaN
        raise ValueError("x holds NaN or inf values; calibrate on finite inputs")


def _check_rate_read(rate: float, channel_rate: float | None, blocks: list,
                     what: str) -> None:
    """A ValueError when channel_rate is given, differs from rate, and no block has a
    spatial masker or layer gate to read rate: rate was ignored without a word."""
    if channel_rate is not None and rate != channel_rate and all(
            b.masker_spatial is None for b in blocks):
        raise ValueError(f"rate {rate!r} would be ignored: {what} has channel maskers only, "
                         f"which channel_rate {channel_rate!r} sets; give one rate")


def _warn_missed(missed: list[str], rate: float, channel_rate: float | None,
                 dtype: torch.dtype) -> None:
    """Warn (UserWarning) naming the maskers in ``missed`` (``_calibrate``'s list) and the
    cause of their ties: in float16 and bfloat16 the logits' rounding (on varied inputs
    too: the warning said "e.g. a constant input ... calibrate on varied inputs" to a
    bfloat16 model calibrated on random ones), in other dtypes tied inputs."""
    if missed:
        target = f"{rate}" if channel_rate is None else f"{rate} (channel {channel_rate})"
        listed = f"{'; '.join(missed[:4])}{'; ...' if len(missed) > 4 else ''}"
        if dtype in (torch.float16, torch.bfloat16):
            bits = 1 - int(math.log2(torch.finfo(dtype).eps))  # significant bits: 8, 11
            name = str(dtype).removeprefix("torch.")
            why = (f"their logits tie on x in {name}: with {bits} significant bits, "
                   f"nearby logits round to the same {name} value, and a bias step cannot "
                   f"separate them, even on varied inputs: {listed}; the rates are as close "
                   f"as {name} allows (a float32 model reaches the counts exactly on "
                   "varied inputs; a constant x ties in any dtype)")
        else:
            why = (f"their logits tie (e.g. a constant input): {listed}; calibrate on "
                   "varied inputs")
        warnings.warn(f"calibration to {target}: {len(missed)} masker(s) could not reach "
                      f"round(rate·N) decisions on x because {why}",
                      stacklevel=4)  # past torch.no_grad's wrapper


@torch.no_grad()
def calibrate_block(block: LaudBottleneck, x: torch.Tensor, rate: float,
                    channel_rate: float | None = None) -> None:
    """Calibrate one block's maskers on its input x [B, Cin, H, W] in eval semantics: the
    block runs in eval mode meanwhile (a masker's BatchNorm uses and keeps its running
    statistics) and each of its modules gets its training flag back afterwards
    (``in_eval``).

    Raises:
        ValueError: if x is not [B, Cin, H, W] (B, H, W >= 1, the block's dtype and
            device, finite), a tensor of the block is on the meta device (named), a rate
            is outside [0, 1], channel_rate is given to a block without a channel
            masker, or to one with a channel masker only and another rate (which no
            masker would read), or a masker's logits on x are NaN or inf (before any
            bias moves).

    Warns (UserWarning) as ``calibrate_rates`` does.
    """
    if not isinstance(block, LaudBottleneck):
        raise ValueError(f"calibrate_block takes a LaudBottleneck, got {type(block).__name__} "
                         "(a whole LaudResNet: calibrate_rates)")
    _check_x(x, block.inplanes, weight_of(block.conv1), "block", block)
    rate, channel_rate = _check_rates(rate, channel_rate)
    if channel_rate is not None and block.masker_channel is None:  # was ignored
        raise ValueError(f"channel_rate: the block has no channel masker (its mode "
                         f"{block.dyn_mode}); give the rate as rate")
    _check_rate_read(rate, channel_rate, [block], f"the block (mode {block.dyn_mode})")
    _warn_missed(_calibrate_eval(block, x, rate, channel_rate, "block"), rate, channel_rate,
                 x.dtype)


def _calibrate_eval(block: LaudBottleneck, x: torch.Tensor, rate: float,
                    channel_rate: float | None, name: str) -> list[str]:
    """``_calibrate`` with the block in eval mode meanwhile."""
    with in_eval(block):
        return _calibrate(block, x, rate, channel_rate, name)


def _calibrate(block: LaudBottleneck, x: torch.Tensor, rate: float,
               channel_rate: float | None, name: str) -> list[str]:
    """Calibrate the block's maskers; returns '<name> <masker> <on>/<wanted> of <N>'
    for each masker that could not reach its count (tied logits)."""
    spatial, channel = block.masker_spatial, block.masker_channel
    todo = []
    if spatial is not None:
        grid = block.grid_size(tuple(x.shape[-2:]))
        kind = "layer gate" if block.dyn_mode == "layer" else "spatial"  # (a 1x1 grid)
        todo.append((kind, lambda: _margins(spatial.logits(x, grid)),
                     spatial.conv.bias[:1], rate))
    if channel is not None:
        todo.append(("channel", lambda: _margins(channel.logits(x)),
                     channel.last_linear().bias[:channel.groups],
                     rate if channel_rate is None else channel_rate))
    for kind, margins_of, _, _ in todo:  # every masker checked before any bias moves
        if not bool(torch.isfinite(margins_of()).all()):
            raise ValueError(
                f"{name}: its {kind} masker's logits on x are NaN or inf (the network's "
                "weights, biases or BatchNorm statistics hold NaN or inf, or its "
                "activations overflow on x); calibrate a finite network on inputs of "
                "moderate size")
    missed = []
    for kind, margins_of, bias, target in todo:
        got, want = _set_rate(margins_of, bias, target)
        if got != want:
            n = margins_of().numel()
            missed.append(f"{name} {kind} {got}/{want} of {n} on")
    return missed


def realised_rate(block: LaudBottleneck, stats: BlockStats) -> float:
    """The rate ``calibrate_rates`` sets and reports for ``block``, read from the stats of
    one of its forwards: the spatial rate (of the grid, or of the layer gate), or in a block
    without a spatial masker the channel rate."""
    return float(stats.rate3 if block.masker_spatial is not None else stats.channel_rate)


@torch.no_grad()
def calibrate_rates(model: LaudResNet, x: torch.Tensor, rate: float,
                    channel_rate: float | None = None) -> list[float]:
    """Set every masker bias so that each block's rate on x is ``rate``.

    The spatial rate (mask grid cells), the layer-gate rate (samples) and the channel
    rate (groups) each land on round(rate·N)/N of their N decisions on x (Python's
    round: a half goes to the even count, so 0.25 of a batch of 2 gates is 0 and 0.75
    is 1), so within ±0.02 of the target when N >= 25 and within one step 1/N otherwise
    (unless two of
    a masker's decisions on x have logit differences equal to the last float bit: then
    both go the same way).

    Args:
        model: a LAUD ResNet (its mode is kept). It is calibrated in eval semantics
            whatever its modules' training flags (``in_eval``, as ``calibrate_block``
            and ``baseline.DenseModel`` read a model; a masker's BatchNorm uses and keeps
            its running statistics), and left in eval mode (``model.eval()``: a forward
            then runs as calibrated, unless a ``train`` override of yours keeps modules
            training in eval mode, which calibration does not run), unlike those two,
            which put each module's flag back: call ``model.train()`` (or set your
            frozen modules' flags) to train on.
        x: [B, C, H, W] calibration input (finite values, B >= 1).
        rate: target activation rate in [0, 1] (a number, a one-value tensor or a 0-d
            numpy array).
        channel_rate: target of every channel mask ("channel" and "both" blocks; default
            ``rate``); a model with no channel masker refuses it, and so does one with
            channel maskers only unless it equals ``rate``.

    Returns:
        the achieved spatial (or channel, in channel mode) rate of each block.

    Raises:
        ValueError: if x is not [B, C, H, W] (B, H, W >= 1, the model's dtype and
            device, finite), a tensor of the model is on the meta device (named), a
            rate is outside [0, 1], channel_rate is given to a model without channel
            masks, or with channel masks only and another rate (which no masker would
            read), x is too small for a block's granularity, or a masker's logits are
            NaN or inf (weights or statistics that hold NaN or inf, or activations that
            overflow). The model is then left as it was (its masker biases and training
            flags).

    Warns (UserWarning) naming the maskers that could not reach their count because
    their logits tie on x: a constant input, or, in float16 and bfloat16, the logits'
    rounding, which ties nearby decisions on varied inputs too (a count off by one or
    two: the ±0.02 above holds in float32).
    """
    if not isinstance(model, LaudResNet):
        hint = "one LaudBottleneck: calibrate_block"
        inner = next((n for n, m in model.named_modules() if isinstance(m, LaudResNet)),
                     None) if isinstance(model, nn.Module) else None
        if isinstance(model, nn.Module) and any(
                getattr(m, "replaces_laud_block", False) for m in model.modules()):
            hint = "a compiled model: calibrate the model it was compiled from, and compile again"
        elif inner is not None:  # a wrapper (nn.DataParallel, nn.Sequential, a module of yours)
            hint = f"one holding a LaudResNet: calibrate that network, its {inner!r}"
        raise ValueError(f"calibrate_rates takes a LaudResNet, got {type(model).__name__} "
                         f"({hint})")
    compiled = [n for n, b in model.blocks() if not isinstance(b, LaudBottleneck)]
    if compiled:
        raise ValueError(f"calibrate_rates: {compiled[0]} is a compiled block (the network "
                         "is a compiled copy's); calibrate the model it was compiled from, "
                         "and compile again")
    weight = weight_of(model.conv1)
    _check_x(x, weight.shape[1], weight, "model", model)
    rate, channel_rate = _check_rates(rate, channel_rate)
    if channel_rate is not None and not any(b.masker_channel is not None
                                            for _, b in model.blocks()):
        raise ValueError("channel_rate: the model has no channel masker (its mode "
                         f"{'-'.join(model.config['mode'])}); give the rate as rate")
    _check_rate_read(rate, channel_rate, [b for _, b in model.blocks()],
                     f"the model (mode {'-'.join(model.config['mode'])})")
    # the biases calibration changes, put back if it stops part-way (x too small for a
    # later block's S gave a model with its first blocks calibrated)
    biases = [(t, t.clone()) for _, b in model.blocks() for t in _calibrated_biases(b)]
    try:
        with in_eval(model):  # which puts every flag back on an error too
            achieved = _calibrate_model(model, x, rate, channel_rate)
    except BaseException:
        for t, old in biases:
            t.copy_(old)
        raise
    model.eval()  # as documented (callers run the calibrated model next)
    return achieved


def _calibrated_biases(block: LaudBottleneck) -> list[torch.Tensor]:
    """The masker biases ``_calibrate`` shifts in place."""
    out = []
    if block.masker_spatial is not None:
        out.append(block.masker_spatial.conv.bias)
    if block.masker_channel is not None:
        out.append(block.masker_channel.last_linear().bias)
    return out


def _calibrate_model(model: LaudResNet, x: torch.Tensor, rate: float,
                     channel_rate: float | None) -> list[float]:
    """``calibrate_rates`` once its arguments are checked, the model in eval mode."""
    h = model.stem(x)
    achieved, missed = [], []
    for name, block in model.blocks():
        try:
            missed += _calibrate_eval(block, h, rate, channel_rate, name)
        except MapTooSmall as e:
            raise ValueError(f"x of size {x.shape[2]}x{x.shape[3]} is too small: {name}: "
                             f"{e}") from None
        h = block(h)
        achieved.append(realised_rate(block, block.last_stats))
    _warn_missed(missed, rate, channel_rate, x.dtype)
    return achieved
