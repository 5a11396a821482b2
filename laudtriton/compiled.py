"""The compiled model: ``CompiledModel`` (folded stem, compiled blocks, head), which
``laudtriton.compile`` returns, and ``Plan``, which prints its choices; its blocks are
``compiled_block.CompiledBlock``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .compiled_block import BlockRun, CompiledBlock
from .guards import (
    LOAD_REFUSED,
    TRAIN_REFUSED,
    RefusesTracing,
    call_lock,
    hooked,
    mark_nan,
    no_autocast,
    nonfinite_samples,
    refuse_apply,  # noqa: F401 (refuse_apply/load/train: pickles of your modules
    refuse_conversion,
    refuse_load,  # noqa: F401 compiled before session 31 name them here, as they were)
    refuse_tracing,
    refuse_train,  # noqa: F401
    run_eagerly,
    strided_refusal,
)
from .nn.block import BlockMasks, detached_copy
from .nn.maskers import check_flag
from .nn.resnet import LaudResNet
from .order import SampleOrder
from .stem import set_stem, stem

CL = torch.channels_last
# poolings of each sample on its own: the reordered batch pooled, then put back
PER_SAMPLE_POOLS = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool2d,
                    nn.Identity)


class CompiledModel(RefusesTracing, nn.Module):
    """An inference-only LAUD model: folded stem, compiled blocks, head.

    ``plan`` describes the choices per block; ``last_stats`` lists a BlockRun per block of
    the last forward. ``source`` is the eval-mode copy of the compiled model (in the
    compiled dtype and device) that the blocks and maskers were read from (changing it
    changes nothing here); to train, train the original model and compile it again.
    """

    def __init__(self, source: nn.Module, blocks: list[CompiledBlock],
                 input_shape: Sequence[int], device: torch.device, dtype: torch.dtype,
                 backend: str, tune: str) -> None:
        super().__init__()
        self._source = [source]  # a list, so it is not registered as a submodule
        self.blocks = nn.ModuleList(blocks)
        self.input_shape = tuple(input_shape)
        self.device, self.dtype, self.backend, self.tune = device, dtype, backend, tune
        self.is_resnet = isinstance(source, LaudResNet)
        if self.is_resnet:
            set_stem(self, source, device, dtype, CL)
            self.avgpool = detached_copy(source.avgpool).eval()
            self.fc = detached_copy(source.fc).to(device, dtype).eval()
        self.train(False)  # inference only, from the start (a module starts in training)

    @property
    def source(self) -> nn.Module:
        """The eval-mode copy of the compiled model (in the compiled dtype and device)
        that the blocks and maskers were read from; not a submodule, and changing it
        changes nothing here."""
        return self._source[0]

    def _apply(self, fn, recurse=True):
        refuse_conversion(fn, self.dtype, self.device)
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        raise RuntimeError(LOAD_REFUSED)

    @property
    def last_stats(self) -> list[BlockRun]:
        """A BlockRun per block for the last forward (empty before the first)."""
        runs = [blk.last_run for blk in self.blocks]
        return [] if None in runs else runs

    def train(self, mode: bool = True) -> CompiledModel:
        """Inference only: ``train(False)`` (``eval()``) returns the model, its blocks and
        head still in eval mode.

        Raises:
            RuntimeError: for ``mode`` True, the default (``guards.TRAIN_REFUSED``).
        """
        if mode:
            raise RuntimeError(TRAIN_REFUSED)
        return super().train(False)

    def _check_head_eval(self) -> None:
        """Raise if a module of the head (avgpool, fc: the source's, copied) was put in
        training mode on its own (``model.fc.train()``; the model's own ``train`` is
        refused): a Dropout there made two calls on one input differ; or if one of its
        floating-point tensors was moved to another dtype or device on its own
        (``model.fc.double()``; the model's own ``.to`` is refused), which failed inside
        torch ("mat1 and mat2 must have the same dtype")."""
        for part in ("avgpool", "fc"):  # one walk of the head a forward
            for name, m in getattr(self, part).named_modules(prefix=part):
                if m.training:
                    raise RuntimeError(f"{name} is in training mode; a compiled model is "
                                       f"inference only (call .eval() on it, or on the "
                                       "model)")
                for tname, t in [*m.named_parameters(name, recurse=False),
                                 *m.named_buffers(name, recurse=False)]:
                    if t.is_floating_point() and (t.dtype != self.dtype
                                                  or t.device != self.device):
                        raise RuntimeError(
                            f"{tname} is {t.dtype} on {t.device}; the compiled model "
                            f"computes in {self.dtype} on {self.device} (move it back: "
                            f"{part}.to({self.dtype}), or compile the model again for "
                            "another dtype or device)")

    def _check_input(self, x: torch.Tensor) -> None:
        if isinstance(x, torch.Tensor) and x.layout != torch.strided:
            raise ValueError(strided_refusal("input", x))
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected a 4D input [B, C, H, W] with B >= 1, got {shape}")
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            hint = (f"the model takes {self.input_shape[1]} input channels"
                    if x.shape[1] != self.input_shape[1] else
                    "the map is empty (H and W must be >= 1)" if 0 in x.shape[2:] else
                    "compile again with an example input of the new size")
            raise ValueError(
                f"input of shape [B, {', '.join(map(str, x.shape[1:]))}] does not match the "
                f"compiled plan [B, {', '.join(map(str, self.input_shape[1:]))}]; {hint}")
        if x.dtype != self.dtype:
            hint = (f"cast the input or compile with dtype={x.dtype}"
                    if x.dtype.is_floating_point else
                    f"cast the input to {self.dtype}: a compiled model takes floating-point "
                    "inputs")
            raise ValueError(f"input dtype {x.dtype} does not match the compiled dtype "
                             f"{self.dtype}; {hint}")
        if x.device != self.device:
            raise ValueError(f"input on {x.device} but the model is compiled for {self.device}")

    def forward(self, x: torch.Tensor, masks: list[BlockMasks] | None = None, *,
                check_masks: bool = True) -> torch.Tensor:
        """Logits (a LaudResNet) or the block's output for x [B, C, H, W].

        masks: one BlockMasks (or None: that block's maskers decide) per block to run with
        instead of the maskers' (e.g. ``[b.last_masks for b in model.blocks]`` after a
        forward on the same x): the model without its maskers' cost, for benchmarks. Masks
        that do not fit (another batch size or map, values other than 0/1, a mask3 or mask1
        that is not the grid's expansion) raise a ValueError naming the block and the mask
        (``CompiledBlock.check_masks``). check_masks=False skips that check, for masks this
        model gave (``last_masks``), so that a benchmark times the variants alone (on the
        2-core CPU the check of every block of ResNet-101 takes 2.3 ms at batch 1 with
        spatial masks and 4.1 ms at batch 8 with layer gates, timed alone; 0.6 and 0.8 ms
        before it compared mask3 and mask1 with the grid's expansion, session 17). The
        head (avgpool and fc, and hooks on them) sees the samples in x's order, whatever
        order the blocks ran them in (``order.SampleOrder``). Autocast does not reach
        the model: it computes in the dtype it was compiled for. A sample whose input
        holds NaN or inf comes back as NaN (``nonfinite_samples``); its masks
        (``last_masks``, ``last_stats``) are not the reference's, which turns every gate
        of such a sample off: the stem's fused ReLU makes its activations finite, and the
        maskers decide on those. A forward that raises (a given mask that does not fit a
        block) leaves ``last_masks`` and ``last_stats`` of every block as the last
        complete forward left them. Calls from several threads take turns (``call_lock``:
        one forward at a time per model, and per block); ``last_masks`` and
        ``last_stats`` are then those of the last forward of any thread.
        """
        refuse_tracing(self._traced_name())
        # no_grad inside, not as a decorator: fx's tracer reads the forward's own code
        # (a decorator's wrapper failed it before this refusal could speak)
        return run_eagerly(CompiledModel._eager_forward, self, x, masks, check_masks)

    def _eager_forward(self, x: torch.Tensor, masks: list[BlockMasks] | None,
                       check_masks: bool) -> torch.Tensor:
        with torch.no_grad(), call_lock(self):
            return self._locked_forward(x, masks, check_masks)

    def _traced_name(self) -> str:
        return "CompiledModel"

    def _locked_forward(self, x: torch.Tensor, masks: list[BlockMasks] | None,
                        check_masks: bool) -> torch.Tensor:
        self._check_input(x)
        check_flag(check_masks, "check_masks")
        if self.is_resnet:
            self._check_head_eval()
        if masks is not None and not isinstance(masks, (list, tuple)):
            raise ValueError(f"masks must be a list with one BlockMasks (or None) per block, "
                             f"got {type(masks).__name__}")
        if masks is not None and len(masks) != len(self.blocks):
            raise ValueError(f"masks: {len(masks)} given for {len(self.blocks)} blocks")
        last = [blk._last for blk in self.blocks]
        try:
            if torch.is_autocast_enabled(self.device.type):
                with no_autocast(self.device.type):
                    return self._forward(x, masks, check_masks)
            return self._forward(x, masks, check_masks)
        except BaseException:
            for blk, kept in zip(self.blocks, last):
                blk._last = kept
            raise

    def _forward(self, x: torch.Tensor, masks: list[BlockMasks] | None,
                 check_masks: bool) -> torch.Tensor:
        h = x.contiguous(memory_format=CL)
        if not self.is_resnet:  # each block tests its own input
            for i, blk in enumerate(self.blocks):
                h = blk(h, masks=None if masks is None else masks[i], check_masks=check_masks)
            return h
        bad = nonfinite_samples(x)
        h = stem(self, h)  # from here on h is ours, a ReLU output
        if hooked(self.stem_pool) or any(hooked(blk) for blk in self.blocks):
            # a hook on a block sees what the reference's block sees: its input intact and
            # the samples in x's order (no reordering, no output written over the input),
            # a sample with NaN or inf NaN in every block (the stem's fused ReLU gave 0);
            # one on the stem's pooling keeps an output no block then writes over. Each
            # block tests its input: a hook may put NaN or inf in, which the next fused
            # ReLU would hide
            if bad is not None:
                h = mark_nan(h, bad)
            for i, blk in enumerate(self.blocks):
                h = blk(h, masks=None if masks is None else masks[i],
                        check_masks=check_masks)
            out = self.fc(torch.flatten(self.avgpool(h), 1))
            return out if bad is None else mark_nan(out, bad)
        order = SampleOrder(h.shape[0])
        for i, blk in enumerate(self.blocks):
            h = blk(h, reuse_input=True, masks=None if masks is None else masks[i],
                    order=order, check_masks=check_masks)
        # the head's modules see the samples in x's order: the pooled features are put
        # back (B x C values) after a stock pooling, which pools each sample on its own;
        # the whole map before a hooked or another avgpool (one may keep or mix samples)
        if hooked(self.avgpool) or type(self.avgpool) not in PER_SAMPLE_POOLS:
            out = self.fc(torch.flatten(self.avgpool(order.to_caller(h)), 1))
        else:
            out = self.fc(order.to_caller(torch.flatten(self.avgpool(h), 1)))
        return out if bad is None else mark_nan(out, bad)

    @property
    def plan(self) -> Plan:
        """A ``Plan`` of this model (new at each read), to print: per block its mode, S,
        G and the variant chosen per rate."""
        return Plan(self)


class Plan:
    """Printable per-block plan: name, mode, S, and the variant chosen per rate (each rate
    a timing was taken at, or a bucket where it is predicted); for a block whose gates pool
    one float32 sample on CPU, the form timed fastest (``pooling.fastest_form``)."""

    def __init__(self, model: CompiledModel) -> None:
        self.rows = [(b.name, b.spec, b.table, b.dispatch, b.static_choice,
                      b.form if b.times_pooling else None) for b in model.blocks]
        self.header = (f"backend={model.backend} dtype={str(model.dtype).replace('torch.', '')}"
                       f" tune={model.tune} input={list(model.input_shape)}")

    def __str__(self) -> str:
        lines = [self.header, f"{'block':<12} {'mode':<8} {'S':>2} {'G':>4}  rate:variant"
                              " (m=measured now, c=cached, p=predicted, r=only candidate)"]
        for name, spec, table, dispatch, static, form in self.rows:
            g = spec.channel_groups or "-"
            s = spec.granularity if spec.spatial else "-"
            tag = f" [static: {static.variant} at every rate]" if dispatch == "static" else ""
            if form is not None:  # (``pooling.fastest_form``)
                tag += f" [pooling: {form}]"
            lines.append(f"{name:<12} {spec.mode:<8} {s:>2} {g:>4}  {table.describe()}{tag}")
        return "\n".join(lines)

    __repr__ = __str__
