"""The batch inside a compiled LaudResNet on CPU: where each sample sits, and what is known
of the current activation (layer mode).

A layer gate turns a block on for some samples of the batch. The ``compact`` variant runs
the active samples as contiguous batch slices (views) or gathers them into one batch and
scatters the result back; both cost more than one call on one contiguous batch when the
active samples are scattered (slices of 1, 2 and 1 samples, or two copies of each active
sample). Gates are correlated from block to block (an image that skips one block tends to
skip the next), so the compiled model moves the samples instead: before a layer block it
swaps samples, in place, until the active ones fill one window of the batch, and leaves
them there. A later block whose active set is the same finds it contiguous and moves
nothing (so does its complement when the window touches an end of the batch). The model
tracks the permutation and puts the logits back in the caller's order at the end; masks
given in the caller's order are permuted to the batch's, and the masks the blocks keep are
put back.

The batch also carries the activation's 1x1 average pooling when it is known: a layer
block without downsample leaves the samples whose gate is off unchanged (their input is a
ReLU output, relu(x) = x), so the next gate re-pools only the active ones.

Both run only on CPU (they read the gate on the host). BENCHMARKS.md has the A/B runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from .nn.block import BlockMasks

MASK_FIELDS = tuple(f.name for f in dataclasses.fields(BlockMasks))


class SampleOrder:
    """The batch's order, ``perm[p]`` the caller's sample held at batch position p, and
    ``pooled``: the current activation average-pooled to 1x1 ([B, C], batch order) when
    known, else None (a block that may change every sample sets it to None).

    Only tensors the compiled model owns are reordered (its activation and ``pooled``);
    the caller's input is never written.
    """

    def __init__(self, batch: int) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.perm = list(range(batch))
        self.pooled: torch.Tensor | None = None
        self._moved = False

    @property
    def identity(self) -> bool:
        """Whether no sample has moved yet (then ``perm`` is the identity; checked per
        block, so O(1) rather than a pass over a large batch's perm)."""
        return not self._moved

    def snapshot(self) -> tuple[int, ...] | None:
        """The permutation now (None for the identity), for masks kept in batch order."""
        return None if self.identity else tuple(self.perm)

    def make_contiguous(self, on: list[bool], h: torch.Tensor
                        ) -> tuple[tuple[int, int], list[int] | None]:
        """Swap samples so that the ``on`` ones fill one window [a, e) of the batch,
        choosing the window that needs the fewest swaps. Each swap exchanges two samples
        (dim 0) of h and of ``pooled``, in place, and two entries of ``perm``.

        Returns ((a, e), idx): the window that holds the active samples now ((0, 0) when
        none is), and the permutation applied (new position p holds old position
        ``idx[p]``), None when nothing moved.
        """
        b, n = len(on), sum(on)
        if b != len(self.perm):
            raise ValueError(f"gate of {b} samples for a batch of {len(self.perm)}")
        if n in (0, b):
            return (0, n), None
        prefix = [0]
        for v in on:
            prefix.append(prefix[-1] + int(v))
        a = max(range(b - n + 1), key=lambda s: prefix[s + n] - prefix[s])
        inside = [i for i in range(a, a + n) if not on[i]]
        if not inside:
            return (a, a + n), None
        outside = [i for i in range(b) if on[i] and not a <= i < a + n]
        idx = list(range(b))
        tensors = [h] if self.pooled is None else [h, self.pooled]
        self._moved = True
        for p, q in zip(inside, outside):
            for t in tensors:
                tmp = t[p].clone()
                t[p].copy_(t[q])
                t[q].copy_(tmp)
            idx[p], idx[q] = q, p
            self.perm[p], self.perm[q] = self.perm[q], self.perm[p]
        return (a, a + n), idx

    def to_caller(self, t: torch.Tensor) -> torch.Tensor:
        """t [B, ...] in batch order -> the caller's order (t itself for the identity)."""
        if self.identity:
            return t
        return t.index_select(0, torch.tensor(inverse(self.perm), device=t.device))

    def to_batch(self, masks: BlockMasks, who: str = "") -> BlockMasks:
        """Masks in the caller's order -> batch order (masks itself for the identity).

        Raises:
            ValueError: if masks is not a BlockMasks, or a mask is not a tensor, has no
                batch dimension (0-d) or its batch is not the batch's size (naming
                ``who``, the block, when given).
        """
        check_batch_masks(masks, len(self.perm), who)
        return masks if self.identity else take_masks(masks, self.perm)


def check_batch_masks(masks: BlockMasks, batch: int, who: str = "") -> None:
    """The check that given masks meet even unchecked (``check_masks=False``): a
    BlockMasks whose masks are tensors (or None) of ``batch`` samples. ``to_batch`` runs
    it in a CompiledModel's reordering forward, and a compiled block called without an
    order (on its own, or in a model while a hook is registered) runs it itself, so that
    such masks raise the same error on every path (a str raised AttributeError, a mask of
    another batch torch's size mismatch, when the block ran without an order).

    Raises:
        ValueError: if masks is not a BlockMasks, or a mask is not a tensor, has no batch
            dimension (0-d) or its batch is not ``batch`` (naming ``who``, the block, when
            given).
    """
    if not isinstance(masks, BlockMasks):
        where = f"{who}: masks" if who else "masks"
        raise ValueError(f"{where} must be a BlockMasks, got {type(masks).__name__}")
    for name in MASK_FIELDS:
        t = getattr(masks, name)
        if t is None:
            continue
        where = f"{who}: masks.{name}" if who else f"masks.{name}"
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{where} must be a tensor or None, got {type(t).__name__}")
        if t.dim() == 0 or t.shape[0] != batch:
            samples = f"{t.shape[0]} samples" if t.dim() else "no batch dimension"
            raise ValueError(f"{where} has {samples} for a batch of {batch}")


def take_masks(masks: BlockMasks, idx: Sequence[int]) -> BlockMasks:
    """The masks of samples ``idx`` (in that order) along dim 0. A mask that broadcasts
    one value per sample over its map (a layer gate's mask3/mask1) stays a broadcast."""

    i = torch.as_tensor(idx)

    def take(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        i_t = i.to(t.device)
        if t.dim() == 4 and t.stride(2) == 0 and t.stride(3) == 0:
            return t[:, :, :1, :1].index_select(0, i_t).expand(len(idx), *t.shape[1:])
        return t.index_select(0, i_t)

    return BlockMasks(*(take(getattr(masks, name)) for name in MASK_FIELDS))


def caller_masks(masks: BlockMasks, perm: tuple[int, ...] | None) -> BlockMasks:
    """Masks kept in batch order, taken when the batch was in order ``perm``, in the
    caller's order."""
    return masks if perm is None else take_masks(masks, inverse(perm))


def inverse(perm: Sequence[int]) -> list[int]:
    """The inverse permutation: inverse(perm)[perm[p]] = p."""
    inv = [0] * len(perm)
    for p, s in enumerate(perm):
        inv[s] = p
    return inv
