"""The models and blocks a sweep times: the LAUD networks it builds by name (``MODELS``)
or takes as given (``sweep_model``), every dynamic block of a model with its BlockSpec
(``model_blocks``), the ``--blocks`` selection among them, the name a sweep files a
model's blocks under (``network_name``) and a block's ideal FLOPs ratio on its masks
(``ideal_flops_ratio``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence

import torch

from ..nn.block import BlockMasks, LaudBottleneck
from ..nn.resnet import DEPTHS, LaudResNet, laud_resnet50, laud_resnet101
from ..ops.spec import BlockSpec
from .options import comma_items

MODELS: dict[str, Callable[..., LaudResNet]] = {
    "laud_resnet50": laud_resnet50, "laud_resnet101": laud_resnet101,
}


def sweep_model(model: str | LaudResNet, model_name: str | None, input_size: int | None,
                mode: str, granularity: str | int | Sequence[int],
                channel_granularity: int | str) -> tuple[LaudResNet, str, int]:
    """``sweep``'s model, the name its rows and cache entries give it, and its input size:
    a name of ``MODELS`` built with ``mode``, ``granularity``, ``channel_granularity`` (at
    224 unless ``input_size``), or a LaudResNet as it is (at its configured input size).

    Raises:
        ValueError: a model name that ``MODELS`` does not hold.
    """
    if isinstance(model, str):
        if model not in MODELS:
            raise ValueError(f"model {model!r} unknown; accepted: {', '.join(MODELS)}")
        input_size = 224 if input_size is None else input_size
        return (MODELS[model](mode=mode, granularity=granularity, input_size=input_size,
                              channel_granularity=channel_granularity),
                model_name or model, input_size)
    if input_size is None:
        input_size = model.config.get("input_size") or 224
    return model, model_name or network_name(model), input_size


def ideal_flops_ratio(spec: BlockSpec, masks: BlockMasks) -> float:
    """Sparse/dense FLOPs of the block on ``masks`` (official accounting: conv1 x c x rate1,
    conv2 x c^2 x rate2, conv3 x c x rate3 with rate3 the grid mean, dense downsample; no
    maskers), averaged over the batch."""
    c1, c2, c3, ds = spec.conv_macs()
    r1 = r2 = r3 = cr = 1.0
    if masks.grid is not None:
        r1 = masks.mask1.float().mean().item()
        r2 = masks.mask3.float().mean().item()
        r3 = masks.grid.float().mean().item()
    if masks.channel is not None:
        cr = masks.channel.float().mean().item()
    return (c1 * cr * r1 + c2 * cr * cr * r2 + c3 * cr * r3 + ds) / (c1 + c2 + c3 + ds)


def model_blocks(model: LaudResNet, input_size: int, batch: int = 1,
                 dtype: str = "float32") -> list[tuple[str, LaudBottleneck, BlockSpec]]:
    """(name, block, BlockSpec) of every dynamic block for inputs [batch, C, size, size],
    from one CPU forward (batch 1) through the stem and the blocks."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.rand(1, model.conv1.in_channels, input_size, input_size)
            h = model.stem(x)
            out = []
            for name, block in model.blocks():
                out.append((name, block,
                            BlockSpec.from_block(block, (batch, *h.shape[1:]), dtype)))
                h = block(h)
    finally:
        model.train(was_training)
    return out


def select_blocks(named: list[tuple[str, LaudBottleneck, BlockSpec]],
                  blocks: Iterable[str | int] | str | None
                  ) -> list[tuple[str, LaudBottleneck, BlockSpec]]:
    """The blocks of ``named`` (``model_blocks``) that ``blocks`` selects, by name or index
    (a list or other iterable, e.g. a numpy array of indices, or the comma list of
    ``--blocks``); None selects every one.

    Raises:
        ValueError: naming ``--blocks``: not an iterable, an empty selection, an index out
            of range or an unknown name.
    """
    if blocks is None:
        return named
    names = [n for n, _, _ in named]
    example = f"names or indices, e.g. '{names[0]},1'"
    if isinstance(blocks, str):
        blocks = comma_items(blocks, "--blocks", example)
    try:  # any iterable of them (a numpy array of indices has no truth value)
        blocks = list(blocks)
    except TypeError:
        raise ValueError(f"--blocks takes a list of block names or indices, or a comma "
                         f"list of them, got {type(blocks).__name__} {blocks!r}") from None
    if not blocks:
        raise ValueError(f"--blocks selects no block; give {example}")
    keep = set()
    for b in blocks:
        # an index: an int (numpy's included), not a bool (True would pick block 1)
        if (isinstance(b, numbers.Integral) and not isinstance(b, bool)) or (
                isinstance(b, str) and b.isascii() and b.isdigit()):
            i = int(b)
            if not 0 <= i < len(names):
                raise ValueError(f"--blocks: index {i} out of range; the model has "
                                 f"{len(names)} blocks (0..{len(names) - 1})")
            keep.add(names[i])
        elif b in names:
            keep.add(b)
        else:
            raise ValueError(f"--blocks: unknown block {b!r}; known: {', '.join(names)} "
                             "(or indices)")
    return [t for t in named if t[0] in keep]


def network_name(model: LaudResNet) -> str:
    """The name a sweep files ``model``'s blocks under: its factory's
    (``nn.resnet.DEPTHS``), else "custom_d<depths>" ("custom_d1-1-1-1"), with
    "_w<width_mult>" when not 1: two networks' blocks under one name were mixed in the
    CSV and the plots (``plot_rows.model_depths`` reads the depths back)."""
    depths = tuple(int(d) for d in model.config.get("depths", ()))
    name = next((k for k, d in DEPTHS.items() if d == depths),
                "custom_d" + "-".join(map(str, depths)))
    width = model.config.get("width_mult", 1.0)
    return name if width == 1 else f"{name}_w{width:g}"
