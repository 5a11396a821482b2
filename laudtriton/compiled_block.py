"""A compiled LAUD block: ``CompiledBlock`` (one LAUD block with BN folded, its maskers and
its dispatch table, choosing a variant per forward from the masks' rate) and ``BlockRun``,
what one forward of it ran."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import torch
from torch import nn

from .guards import (
    LOAD_REFUSED,
    TRAIN_REFUSED,
    RefusesTracing,
    call_lock,
    mark_nan,
    no_autocast,
    nonfinite_samples,
    refuse_conversion,
    refuse_tracing,
    run_eagerly,
    strided_refusal,
)
from .host_gates import host_spatial_masks
from .mask_checks import check_block_masks
from .nn.block import BlockMasks
from .nn.maskers import check_flag
from .ops import BlockSpec, get_variant
from .ops.fold import Derived, Fingerprint, FoldedBlock
from .ops.layer import gate_values
from .ops.masks import Gates
from .order import SampleOrder, caller_masks, check_batch_masks, take_masks
from .pooling import fastest_form, mean_rows
from .schedule import Choice, DispatchTable, mean64, run_rate

CL = torch.channels_last


@dataclass(frozen=True)
class BlockRun:
    """What one block did in the last forward: its rates, the variant and config run."""

    name: str
    spatial_rate: float | None
    channel_rate: float | None
    variant: str
    config: dict


class CompiledBlock(RefusesTracing, nn.Module):
    """One LAUD block with BN folded, its maskers, and its dispatch table.

    The rate is read on the host (one sync) only when the table's choice depends on it
    (``dispatch="dynamic"`` and more than one distinct entry; the table is fixed once
    compiled); ``last_run`` computes the rates of the last forward when it is read, from
    the masks it keeps."""

    replaces_laud_block = True  # listed by LaudResNet.blocks() in its block's place

    def __init__(self, name: str, spec: BlockSpec, fb: FoldedBlock, table: DispatchTable,
                 dispatch: str, expected_rate: float) -> None:
        super().__init__()
        self.name, self.spec, self.fb, self.table = name, spec, fb, table
        # the source's block (eval; its convs are not run), in a list so that it is not
        # registered: its parameters are not this module's (nothing trains them here);
        # a shallow copy with its own settings, so that editing the source's S or mode
        # (which the gates and the masks check read) leaves this block as compiled
        frozen = frozen_reference(fb.block)
        self._reference = [frozen]
        self.gates = Gates(frozen)  # its maskers, read once (a snapshot, like fb)
        # the form of the gates' pooling of one sample (``pooling.mean_rows``), timed
        # on this CPU where it has one
        self.pooling = (fastest_form(spec.in_channels, spec.in_hw) if self.times_pooling
                        else "gemm")
        self.dispatch = dispatch
        self.static_choice = table.choose(expected_rate)
        choices = {(c.variant, json.dumps(c.config_dict, sort_keys=True))  # configs nest
                   for c in table.entries.values()}
        self.rate_free = dispatch == "static" or len(choices) == 1
        self._last: tuple[BlockMasks, Choice, tuple[int, ...] | None] | None = None
        self._fits: dict[tuple, bool] = {}  # (map size, variant): runs there (``_fit``)
        self._note_shifts()  # b1 and b2, which kappa1 and kappa2 were made from
        self.train(False)  # inference only, from the start (a module starts in training)

    def forward(self, x: torch.Tensor, reuse_input: bool = False,
                masks: BlockMasks | None = None, *,
                order: SampleOrder | None = None, check_masks: bool = True,
                check_finite: bool = True) -> torch.Tensor:
        """The block on x [B, Cin, H, W] channels_last. reuse_input: x is a ReLU output
        (>= 0) that nobody reads afterwards; variants that can (``run_inplace``) then
        write the output into it. CompiledModel sets it for the blocks of a LaudResNet;
        called on its own, the block refuses an x with negative values then (a variant
        may leave x as the output of a sample it skips, where the block gives relu(x)).
        masks: run with these (e.g. ``last_masks`` of an earlier forward on the same
        input) instead of the maskers': how ``laudtriton bench`` times the model without
        its maskers' cost. order: the batch as a CompiledModel runs it (x in that order,
        masks given in the caller's; see ``order.SampleOrder``), always with
        reuse_input=True, since a layer block on CPU then moves its active samples into
        one window of x first (a ValueError otherwise, or for an order of another
        batch). check_masks: whether given masks are checked first (``check_masks``);
        unchecked, they must still be a BlockMasks of x's batch (a ValueError naming the
        block otherwise, ``order.check_batch_masks``). check_finite: called on
        its own (no order), the block tests x for NaN and inf and gives a sample that has
        any a NaN output (as the model does); False skips that test (not the shape, dtype
        and device checks), for a caller that knows x is finite: ``laudtriton bench``
        times blocks so, since the model tests its input once, on the image. Inference
        only, as CompiledModel: it runs under no_grad, and its output carries no
        gradient; autocast does not reach it (it computes in the dtype it was compiled
        for). Calls from several threads take turns (``call_lock``)."""
        refuse_tracing(self._traced_name())
        if order is None:  # (a CompiledModel passes its own, checked, flags)
            for name, value in (("reuse_input", reuse_input), ("check_masks", check_masks),
                                ("check_finite", check_finite)):
                check_flag(value, f"{self.name}: {name}")
        elif reuse_input is not True or not isinstance(order, SampleOrder):
            raise ValueError(f"{self.name}: order is a CompiledModel's SampleOrder, given "
                             "with reuse_input=True (a layer block moves the samples of x "
                             f"in place); got order={type(order).__name__}, "
                             f"reuse_input={reuse_input!r}")
        elif not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != len(
                order.perm):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.name}: order is for a batch of {len(order.perm)}; "
                             f"x is {got}")
        return run_eagerly(CompiledBlock._locked_call, self, x, reuse_input, masks, order,
                           check_masks, check_finite)

    def _locked_call(self, x: torch.Tensor, reuse_input: bool, masks: BlockMasks | None,
                     order: SampleOrder | None, check_masks: bool,
                     check_finite: bool) -> torch.Tensor:
        with call_lock(self):
            return self._call(x, reuse_input, masks, order=order, check_masks=check_masks,
                              check_finite=check_finite)

    def _traced_name(self) -> str:
        return f"CompiledBlock {self.name}"

    def _call(self, x: torch.Tensor, reuse_input: bool, masks: BlockMasks | None, *,
              order: SampleOrder | None, check_masks: bool,
              check_finite: bool) -> torch.Tensor:
        dev = self.fb.w1.device.type
        if torch.is_grad_enabled() or torch.is_autocast_enabled(dev):  # (a CompiledModel
            with torch.no_grad(), no_autocast(dev):  # calls it with both off already)
                return self._call(x, reuse_input, masks, order=order,
                                  check_masks=check_masks, check_finite=check_finite)
        self._follow_shifts()
        if order is None:  # called on its own: the model checks its input itself
            self._check_input(x)
            if reuse_input and bool((x < 0).any()):  # (a model's blocks get its ReLU's)
                raise ValueError(f"{self.name}: reuse_input=True takes a ReLU output "
                                 "(x >= 0); x holds negative values")
        if masks is not None:
            if check_masks:
                self.check_masks(masks, x)
            elif order is None:  # (with an order, ``to_batch`` checks this)
                check_batch_masks(masks, x.shape[0], self.name)
        if order is not None and self.spec.mode == "layer" and x.device.type == "cpu":
            return self._layer_step(x, order, masks)
        if order is None:  # called on its own (a CompiledModel tests its input itself)
            bad = nonfinite_samples(x) if check_finite else None
            out = self._run(x, self._masks(x) if masks is None else masks, reuse_input, None)
            return out if bad is None else mark_nan(out, bad)
        if masks is None:
            masks = self._masks(x)
        else:
            masks = order.to_batch(masks, self.name)
        order.pooled = None  # this block may change every sample
        return self._run(x, masks, reuse_input, order.snapshot())

    def _note_shifts(self) -> None:
        """Keep b1 and b2 as fb.kappa1 and fb.kappa2 now follow them: copies of their
        values, and their ``Fingerprint`` in a ``Derived`` (which copies and pickles leave
        empty: their tensors restart their versions)."""
        fb = self.fb
        with torch.inference_mode(False), torch.no_grad():
            self._shift_values = (fb.b1.clone(), fb.b2.clone())
        self._shift_seen = Derived(Fingerprint((fb.b1, fb.b2), fb.stride), True)

    def _follow_shifts(self) -> None:
        """fb.kappa1 and fb.kappa2, the values a skipped channel carries (``ops.fold``),
        are relu(fb.b1) and relu(fb.b2): each is made again when the values of its shift
        changed since the last call (b1 or b2 replaced or edited in place), so that the
        variants that skip channels correct with the shifts the block has now. The new
        kappas are new tensors (what is derived from them is rebuilt, as for any
        weight), made outside inference mode (``fold_block`` says why). An unchanged
        ``Fingerprint`` of b1 and b2 tells at no cost that nothing changed; otherwise (an
        edit, or the first call of a copy or a pickle) the values decide, so a kappa
        edited on its own keeps its values until its shift changes."""
        fb = self.fb
        seen = getattr(self, "_shift_seen", None)  # None: a block pickled before this
        if seen is not None and seen.get(Fingerprint((fb.b1, fb.b2), fb.stride)):
            return
        if seen is not None:
            b1, b2 = self._shift_values
            with torch.inference_mode(False), torch.no_grad():
                if not same_values(fb.b1, b1):
                    fb.kappa1 = torch.relu(fb.b1)
                if not same_values(fb.b2, b2):
                    fb.kappa2 = torch.relu(fb.b2)
        self._note_shifts()

    def _masks(self, x: torch.Tensor) -> BlockMasks:
        """The maskers' masks for x; a channel MLP masker or a layer gate reads the
        global average pool of x as ``mean_rows`` computes it, in the form timed
        fastest for its shape (``pooling``); a spatial masker alone decides on the host
        where it can (``host_gates``)."""
        if not self.pools_input:
            masks = host_spatial_masks(self.gates, x)
            if masks is not None:
                return masks
            return self.gates(x)
        return self.gates(x, pooled=mean_rows(x, self.form))

    @property
    def pools_input(self) -> bool:
        """Whether the gates read the global average pool of x: a channel MLP masker or
        a layer gate."""
        return self.gates.mlp is not None or self.spec.mode == "layer"

    @property
    def times_pooling(self) -> bool:
        """Whether the gates pool x (``pools_input``) in a form chosen by timing
        (``pooling.fastest_form``): float32 on CPU."""
        return (self.pools_input and self.fb.w1.device.type == "cpu"
                and self.fb.w1.dtype == torch.float32)

    @property
    def form(self) -> str:
        """The form of ``mean_rows`` this block pools in ("gemm" for a block pickled
        before ``pooling`` was kept)."""
        return getattr(self, "pooling", "gemm")

    def _check_input(self, x) -> None:
        """Raise a ValueError naming the block unless x is [B, Cin, H, W] (B, H, W >= 1)
        of the compiled dtype, on the compiled device, index included (the map size may
        differ: ``_fit``; an empty map raised MapTooSmall, a BlockSpec error or torch's
        "stride should not be zero", by mode)."""
        want = self.fb.w1
        if isinstance(x, torch.Tensor) and x.layout != torch.strided:
            raise ValueError(strided_refusal(f"{self.name}: input", x))
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or 0 in x.shape or (
                x.shape[1] != self.spec.in_channels):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.name}: expected an input [B, {self.spec.in_channels}, "
                             f"H, W] with H, W >= 1 and B >= 1, got {shape}")
        if x.dtype != want.dtype or x.device != want.device:
            raise ValueError(f"{self.name}: input is {x.dtype} on {x.device}; the block is "
                             f"compiled for {want.dtype} on {want.device}")

    @property
    def reference(self) -> nn.Module:
        """The LaudBottleneck this block was compiled from (eval mode): a shallow copy of
        the source's block with its settings as compiled, its modules the source's
        (``frozen_reference``)."""
        return self._reference[0]

    def train(self, mode: bool = True) -> CompiledBlock:
        """Inference only: ``train(False)`` (``eval()``) returns the block, still in eval
        mode.

        Raises:
            RuntimeError: for ``mode`` True, the default (``guards.TRAIN_REFUSED``).
        """
        if mode:
            raise RuntimeError(TRAIN_REFUSED)
        return super().train(False)

    def _apply(self, fn, recurse=True):
        refuse_conversion(fn, self.fb.w1.dtype, self.fb.w1.device)
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        raise RuntimeError(LOAD_REFUSED)

    def check_masks(self, masks: BlockMasks, x: torch.Tensor) -> None:
        """Raise unless ``masks`` are masks this block's maskers could give for x: each
        field present exactly where the block has that mask, a strided tensor of real
        values on x's device, of its shape (the grid of
        the block's S on x's map, mask3 and mask1 at the output and input maps, G channel
        groups), grid and channel holding only 0 and 1 (or False and True), and mask3 and
        mask1 the grid's expansion (``spatial_masks_from_grid``), as ``last_masks`` gives
        them: the variants read whichever of them they need, so masks that disagree would
        give a variant-dependent result.

        Raises:
            ValueError: naming the block, the mask and the shape or values found, or
                what it is where a tensor of real values on x's device is needed.
        """
        check_block_masks(self.reference, masks, x, self.name, self.spec.channel_groups)

    def _run(self, x: torch.Tensor, masks: BlockMasks, reuse_input: bool,
             perm: tuple[int, ...] | None, rate: float | None = None) -> torch.Tensor:
        """The chosen variant on x; rate: ``run_rate(self.spec, masks)`` when the
        caller has it (a layer block knows its gate values)."""
        if self.rate_free:
            choice = self.static_choice
        else:
            choice = self.table.choose(run_rate(self.spec, masks) if rate is None
                                       else rate)
        if x.shape[-2:] != self.spec.in_hw:  # a block in a user's module: another size
            choice = self._fit(choice, x)
        variant = get_variant(choice.variant)
        run = variant.run_inplace if reuse_input and variant.run_inplace else variant.run
        out = run(self.fb, x, masks, choice.config_dict)
        self._last = (masks, choice, perm)
        return out

    def _fit(self, choice: Choice, x: torch.Tensor) -> Choice:
        """``choice``, or ``dense`` where its variant does not run x's map size: a block
        inside a user's module takes sizes other than the example's, and a variant
        chosen there may need that size (``patch``: S dividing the map)."""
        key = (tuple(x.shape[-2:]), choice.variant)
        if key not in self._fits:
            spec = self.spec.with_(in_hw=key[0], batch=x.shape[0])
            self._fits[key] = get_variant(choice.variant).supports(spec)
        return choice if self._fits[key] else Choice("dense", source="rule")

    def _layer_step(self, h: torch.Tensor, order: SampleOrder,
                    masks: BlockMasks | None) -> torch.Tensor:
        """This layer block on the model's activation h (a ReLU output, reordered and
        overwritten in place): the samples whose gate is on are swapped into one window
        (``SampleOrder.make_contiguous``), so the variant meets one contiguous run; the
        gate reads ``order.pooled`` when known, and order.pooled is kept up to date where
        that is cheap: without a downsample a sample whose gate is off leaves the block
        unchanged (relu(x) = x), so only the window is pooled again. With masks given
        nothing is pooled."""
        if masks is None:
            if order.pooled is None:
                order.pooled = mean_rows(h, self.form)
            masks = self.gates(h, pooled=order.pooled)
        else:
            masks, order.pooled = order.to_batch(masks, self.name), None
        on = gate_values(masks, h.shape[0], self.name)
        (a, e), moved = order.make_contiguous(on, h)
        if moved is not None:
            masks = take_masks(masks, moved)
        out = self._run(h, masks, True, order.snapshot(), rate=sum(on) / len(on))
        if self.spec.downsample:  # every sample changed
            order.pooled = None
        elif order.pooled is not None and e > a:
            order.pooled[a:e] = mean_rows(out[a:e], self.form)
        return out

    @property
    def last_masks(self) -> BlockMasks | None:
        """The masks of the last forward, in the caller's sample order; None before the
        first."""
        return None if self._last is None else caller_masks(self._last[0], self._last[2])

    @property
    def last_run(self) -> BlockRun | None:
        """The rates (spatial: of the grid, or of the layer gate; channel) and the variant
        of the last forward; None before the first."""
        if self._last is None:
            return None
        masks, choice, _ = self._last
        srate = None if self.spec.mode == "channel" else mean64(masks.grid)
        crate = None if masks.channel is None else mean64(masks.channel)
        return BlockRun(self.name, srate, crate, choice.variant, choice.config_dict)


def frozen_reference(block: nn.Module) -> nn.Module:
    """A shallow copy of the LaudBottleneck ``block``: its own attributes (S, mode,
    stride, which the gates and the masks check read at every call) and its own tables of
    submodules, parameters and buffers, holding the source's modules and tensors (nothing
    is copied: the gates read the maskers once, when made). Setting an attribute or a
    submodule of the source leaves it as it was."""
    frozen = copy.copy(block)
    for table in ("_modules", "_parameters", "_buffers"):
        object.__setattr__(frozen, table, dict(getattr(block, table)))
    return frozen


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b hold the same values (shape, dtype and device too)."""
    return (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            and torch.equal(a, b))
