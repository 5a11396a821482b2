"""The honest dense baseline ``laudtriton bench`` and ``laudtriton demo`` compare against:
the same network with the same folded weights, no maskers and no masks, in NCHW
(F.conv2d, PyTorch's default form) or channels_last (oneDNN with pre-packed weights and
fused epilogues), and the timing of both forms beside the compiled model, the faster
one's median kept."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .block_checks import check_foldable
from .nn.block import BlockMasks, detached_copy
from .nn.calibrate import in_eval, meta_tensor
from .nn.resnet import LaudResNet
from .ops import fold_block
from .ops.dense import dense_block
from .ops.fold import FoldedBlock
from .stem import set_stem, stem
from .tune.timing import interleaved_medians

CL = torch.channels_last
NO_MASKS = BlockMasks(None, None, None, None)  # the dense block: every mask off


def nchw_dense_block(fb: FoldedBlock, x: torch.Tensor) -> torch.Tensor:
    """The folded dense block on an NCHW input through F.conv2d (PyTorch's default form):
    relu(conv3(relu(conv2(relu(conv1(x))))) + identity), NCHW out."""
    identity = x if fb.wd is None else F.conv2d(x, fb.wd[:, :, None, None], fb.bd,
                                                stride=fb.stride)
    h = F.conv2d(x, fb.w1[:, :, None, None], fb.b1).relu_()
    h = F.conv2d(h, fb.w2, fb.b2, stride=fb.stride, padding=1).relu_()
    return F.conv2d(h, fb.w3[:, :, None, None], fb.b3).add_(identity).relu_()


class DenseModel(nn.Module):
    """The static network a LAUD model skips work in: folded weights, no maskers.

    channels_last: every convolution through oneDNN with pre-packed weights and fused
    epilogues (``ops.packed``), residuals added in place; contiguous_format: NCHW through
    F.conv2d (``nchw_dense_block``). ``dense_forms`` builds both.

    It computes in float32 whatever ``model``'s dtype (compile's dtype on CPU; a float64,
    float16 or bfloat16 model's weights are folded and its head copied in float32), on
    ``model``'s device, and takes inputs of that dtype and device only. It moves as a
    whole with ``.to(...)``, ``.half()``, ``.double()``, ``.cuda()`` (the folded blocks
    with the rest: ``_apply``), or a caller may move its tensors, as
    ``gpucheck.whole.dense_model`` does; the input check follows them.

    The weights are read as ``model`` computes them in eval mode (a parametrized weight,
    ``spectral_norm``'s, would be updated by a read in training mode), and ``model`` is
    left as it was, its training flags included (``nn.calibrate.in_eval``).

    Raises:
        ValueError: for a model that is not a LaudResNet or holds a tensor on the meta
            device (named), a memory_format other than torch.channels_last and
            torch.contiguous_format, or a network that ``laudtriton.compile`` refuses to
            fold: a stem ``stem.check_resnet`` refuses, or a block
            ``block_checks.check_foldable`` does (the fold would compute another
            network, silently).
    """

    def __init__(self, model: LaudResNet, memory_format: torch.memory_format) -> None:
        super().__init__()
        if not isinstance(model, LaudResNet):
            raise ValueError(f"DenseModel takes a LaudResNet, got {type(model).__name__}")
        meta = meta_tensor(model)  # a meta model gave a meta baseline; a meta BatchNorm
        if meta is not None:  # or head, torch's error at the first forward
            raise ValueError(f"DenseModel: the model's {meta} is on the meta device (no "
                             "data); load or initialise its weights first")
        if memory_format not in (torch.channels_last, torch.contiguous_format):
            raise ValueError(f"memory_format must be torch.channels_last or "
                             f"torch.contiguous_format, got {memory_format!r}")
        self.mf = memory_format
        # not inference tensors, also when made under torch.inference_mode(): the packed
        # convolutions' caches read the weights' version counters (fold_block's rule)
        with in_eval(model), torch.inference_mode(False), torch.no_grad():
            set_stem(self, model, model.conv1.weight.device, torch.float32, memory_format)
            for name, blk in model.blocks():  # after set_stem: it refuses compiled blocks
                check_foldable(name, blk)
            self.folded: list[FoldedBlock] = [fold_block(blk) for _, blk in model.blocks()]
            for fb in self.folded:
                fb.w2 = fb.w2.contiguous(memory_format=memory_format)
            self.avgpool = detached_copy(model.avgpool).eval()
            # in the folded weights' dtype: a float64 model's head refused their maps
            self.fc = detached_copy(model.fc).eval().to(torch.float32)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] for x [B, Cin, H, W], run in this form's memory format
        (x is made contiguous in it first), under no_grad.

        Raises:
            ValueError: x not a 4D tensor with the stem's Cin channels, or not of the
                folded weights' dtype and device (float32 on the model's, unless moved).
        """
        w = self.stem_w
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != w.shape[1]:
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a [B, {w.shape[1]}, H, W] tensor, got {got}")
        if x.dtype != w.dtype or x.device != w.device:  # torch's error named a bias
            raise ValueError(f"x is {x.dtype} on {x.device}; this DenseModel computes in "
                             f"{w.dtype} on {w.device} (convert the input)")
        if self.mf is torch.channels_last:
            h = stem(self, x.contiguous(memory_format=CL))
            for fb in self.folded:  # h is ours and a ReLU output: residuals add into it
                h = dense_block(fb, h, NO_MASKS, inplace=True)
        else:
            h = F.conv2d(x.contiguous(), self.stem_w, self.stem_b, stride=self.stem_stride,
                         padding=self.stem_padding)
            h = self.stem_pool(h.relu_())
            for fb in self.folded:
                h = nchw_dense_block(fb, h)
        return self.fc(torch.flatten(self.avgpool(h), 1))

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
               ) -> DenseModel:
        """``nn.Module._apply`` (what ``.to``, ``.half``, ``.cuda`` and the like run), the
        folded blocks' tensors included: a plain list, they stayed where they were, and
        the forward failed inside torch ("Input type (double) and bias type (float)")."""
        with torch.inference_mode(False), torch.no_grad():  # (as ``__init__``)
            super()._apply(fn, recurse)
            self.folded = [_moved(fb, fn) for fb in self.folded]
        return self


def _moved(fb: FoldedBlock, fn: Callable[[torch.Tensor], torch.Tensor]) -> FoldedBlock:
    """``fb`` with ``fn`` applied to each of its tensors (a new FoldedBlock, whose weight
    caches start empty), w2 kept in its memory format."""
    moved = dataclasses.replace(fb, **{
        f.name: fn(t) for f in dataclasses.fields(fb)
        if isinstance(t := getattr(fb, f.name), torch.Tensor)})
    if fb.w2.is_contiguous(memory_format=CL):
        moved.w2 = moved.w2.contiguous(memory_format=CL)
    return moved


def dense_forms(model: LaudResNet) -> dict[str, DenseModel]:
    """The two dense forms of ``model`` the baseline is the faster of, by name: "nchw"
    (F.conv2d) and "channels_last" (packed oneDNN)."""
    return {"nchw": DenseModel(model, torch.contiguous_format),
            "channels_last": DenseModel(model, torch.channels_last)}


def time_against_dense(dense_calls: dict[str, Callable[[], object]],
                       fns: list[Callable[[], object]], warmup: int, reps: int
                       ) -> tuple[str, float, list[float]]:
    """One interleaved run of each dense form's call (by form name) and ``fns``: (the
    faster form's name, its median seconds, the medians of ``fns``). Every comparison
    against dense times both forms in the run it compares in: a form picked once from a
    short run of its own can be the slower one on a busy machine (session 11: NCHW picked
    from 5 runs, then 110.8 ms a forward in the timed run, where channels_last took 78-86
    ms in the other processes of that day)."""
    names = list(dense_calls)
    times = interleaved_medians([*dense_calls.values(), *fns], warmup=warmup, reps=reps)
    i = min(range(len(names)), key=times.__getitem__)
    return names[i], times[i], times[len(names):]
