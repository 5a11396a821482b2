"""The compiled runtime: ``CompiledBlock`` (one LAUD block with BN folded, its maskers and
its dispatch table) and ``CompiledModel`` (folded stem, compiled blocks, head), which
``laudtriton.compile`` builds; ``Plan`` prints their choices."""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .nn.block import BlockMasks, LaudBottleneck, detached_copy
from .nn.resnet import LaudResNet
from .ops import BlockSpec, get_variant
from .ops.fold import Fingerprint, FoldedBlock, bn_scale_shift, derived
from .ops.layer import gate_values
from .ops.masks import Gates, global_pool, host_array, spatial_masks_from_grid
from .ops.packed import PackedConv
from .order import SampleOrder, caller_masks, take_masks
from .schedule import Choice, DispatchTable

CL = torch.channels_last

_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def call_lock(module: nn.Module) -> threading.RLock:
    """The lock a compiled block or model holds for the length of a forward (re-entrant:
    a model's forward calls its blocks'), made on first use and kept outside the module,
    so that copies and pickles of it hold none. Concurrent calls from several threads
    take turns: the engine's per-block caches (sliced and packed weights, their byte
    count) and ``last_*`` are updated by every call, and raced, lost cache accounting
    or raised KeyError (a review in session 29)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(module)
        if lock is None:
            lock = _LOCKS[module] = threading.RLock()
    return lock


LOAD_REFUSED = (
    "a compiled model cannot load a state dict: its convolutions hold weights folded at "
    "compile time (BN folded in). Load the state dict into the model you compiled and "
    "call laudtriton.compile on it again")


TRAIN_REFUSED = (
    "a compiled model is inference only; train the model you compiled (or the eval-mode "
    "copy in `.source` of a CompiledModel) and call laudtriton.compile on it again")


def refuse_train(module: nn.Module, mode: bool = True) -> nn.Module:
    """``module.train`` for a module of the user's that compile returned with compiled
    parts inside (``compile`` binds it as the instance's ``train``): mode True raises
    before any flag changes. Plain ``nn.Module.train`` sets the module's own flag and
    those of the children before the compiled one, which only then raises, and would
    leave a Dropout or BatchNorm of the user's in training mode. mode False is the
    class's own ``train``."""
    if mode:
        raise RuntimeError(TRAIN_REFUSED)
    return type(module).train(module, False)


def refuse_apply(module: nn.Module, dtype: torch.dtype, device: torch.device, fn,
                 recurse: bool = True) -> nn.Module:
    """``module._apply`` for a module of the user's that compile returned with compiled
    parts inside (bound by ``compile`` as ``train`` is, ``refuse_train``): a change of
    dtype or device raises before any tensor converts. The class's ``_apply`` would
    convert the modules listed before a compiled part, which only then raises, and leave
    the module half converted."""
    refuse_conversion(fn, dtype, device)
    return type(module)._apply(module, fn, recurse)


def refuse_load(module: nn.Module, *args, **kwargs):
    """``module.load_state_dict`` for a module of the user's with compiled parts inside:
    raises before any parameter is copied (the class's method would load the modules
    before a compiled part, which only then raises)."""
    raise RuntimeError(LOAD_REFUSED)


def no_autocast(device_type: str):
    """A context without autocast for ``device_type``: a compiled model computes in the
    dtype it was compiled for, its head and its maskers included (under autocast the
    copies of avgpool and fc would compute in another dtype than its blocks)."""
    return torch.autocast(device_type, enabled=False)


def refuse_conversion(fn, dtype: torch.dtype, device: torch.device) -> None:
    """Raise if ``fn`` (what ``nn.Module.to``, ``.double()``, ``.cuda()``... apply to every
    tensor) would change the dtype or device of a compiled model: its folded weights,
    packed convolutions and plan are made for one dtype and device.

    Raises:
        RuntimeError: naming the compiled and the asked dtype and device.
    """
    here = torch.zeros(1, dtype=dtype, device=device)
    probe = fn(here)
    if probe.dtype != here.dtype or probe.device != here.device:
        raise RuntimeError(
            f"a compiled model cannot move to {probe.dtype} on {probe.device}: it is "
            f"compiled for {here.dtype} on {here.device}. Compile the model again with "
            f"dtype={probe.dtype} (backend for the device)")


@dataclass(frozen=True)
class BlockRun:
    """What one block did in the last forward: its rates, the variant and config run."""

    name: str
    spatial_rate: float | None
    channel_rate: float | None
    variant: str
    config: dict


class CompiledBlock(nn.Module):
    """One LAUD block with BN folded, its maskers, and its dispatch table.

    The rate is read on the host (one sync) only when the table's choice depends on it
    (``dispatch="dynamic"`` and more than one distinct entry; the table is fixed once
    compiled); ``last_run`` computes the rates of the last forward when it is read, from
    the masks it keeps."""

    replaces_laud_block = True  # listed by LaudResNet.blocks() in its block's place

    def __init__(self, name: str, spec: BlockSpec, fb: FoldedBlock, table: DispatchTable,
                 dispatch: str, expected_rate: float):
        super().__init__()
        self.name, self.spec, self.fb, self.table = name, spec, fb, table
        # the source's block (eval; its convs are not run), in a list so that it is not
        # registered: its parameters are not this module's (nothing trains them here)
        self._reference = [fb.block]
        self.gates = Gates(fb.block)  # its maskers, read once (a snapshot, like fb)
        self.dispatch = dispatch
        self.static_choice = table.choose(expected_rate)
        choices = {(c.variant, json.dumps(c.config_dict, sort_keys=True))  # configs nest
                   for c in table.entries.values()}
        self.rate_free = dispatch == "static" or len(choices) == 1
        self._last: tuple[BlockMasks, Choice, tuple[int, ...] | None] | None = None
        self._fits: dict[tuple, bool] = {}  # (map size, variant): runs there (``_fit``)
        self.train(False)  # inference only, from the start (a module starts in training)

    def forward(self, x: torch.Tensor, reuse_input: bool = False,
                masks: BlockMasks | None = None, *,
                order: SampleOrder | None = None, check_masks: bool = True,
                check_finite: bool = True) -> torch.Tensor:
        """The block on x [B, Cin, H, W] channels_last. reuse_input: x is a ReLU output
        (>= 0) that nobody reads afterwards; variants that can (``run_inplace``) then
        write the output into it. CompiledModel sets it for the blocks of a LaudResNet.
        masks: run with these (e.g. ``last_masks`` of an earlier forward on the same
        input) instead of the maskers': how ``laudtriton bench`` times the model without
        its maskers' cost. order: the batch as a CompiledModel runs it (with reuse_input,
        x in that order, masks given in the caller's; see ``order.SampleOrder``); a layer
        block on CPU then moves its active samples into one window first. check_masks:
        whether given masks are checked first (``check_masks``). check_finite: called on
        its own (no order), the block tests x for NaN and inf and gives a sample that has
        any a NaN output (as the model does); False skips that test (not the shape, dtype
        and device checks), for a caller that knows x is finite: ``laudtriton bench``
        times blocks so, since the model tests its input once, on the image. Inference
        only, as CompiledModel: it runs under no_grad, and its output carries no
        gradient; autocast does not reach it (it computes in the dtype it was compiled
        for). Calls from several threads take turns (``call_lock``)."""
        refuse_tracing(f"CompiledBlock {self.name}")
        with call_lock(self):
            return self._call(x, reuse_input, masks, order=order, check_masks=check_masks,
                              check_finite=check_finite)

    def _call(self, x: torch.Tensor, reuse_input: bool, masks: BlockMasks | None, *,
              order: SampleOrder | None, check_masks: bool,
              check_finite: bool) -> torch.Tensor:
        dev = self.fb.w1.device.type
        if torch.is_grad_enabled() or torch.is_autocast_enabled(dev):  # (a CompiledModel
            with torch.no_grad(), no_autocast(dev):  # calls it with both off already)
                return self._call(x, reuse_input, masks, order=order,
                                  check_masks=check_masks, check_finite=check_finite)
        if order is None:  # called on its own: the model checks its input itself
            self._check_input(x)
        if masks is not None and check_masks:
            self.check_masks(masks, x)
        if order is not None and self.spec.mode == "layer" and x.device.type == "cpu":
            return self._layer_step(x, order, masks)
        if order is None:  # called on its own (a CompiledModel tests its input itself)
            bad = nonfinite_samples(x) if check_finite else None
            out = self._run(x, self.gates(x) if masks is None else masks, reuse_input, None)
            return out if bad is None else mark_nan(out, bad)
        if masks is None:
            masks = self.gates(x)
        else:
            masks = order.to_batch(masks)
        order.pooled = None  # this block may change every sample
        return self._run(x, masks, reuse_input, order.snapshot())

    def _check_input(self, x) -> None:
        """Raise a ValueError naming the block unless x is [B >= 1, Cin, H, W] of the
        compiled dtype, on the compiled device, index included (the map size may differ:
        ``_fit``)."""
        want = self.fb.w1
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0 or (
                x.shape[1] != self.spec.in_channels):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.name}: expected an input [B, {self.spec.in_channels}, "
                             f"H, W] with B >= 1, got {shape}")
        if x.dtype != want.dtype or x.device != want.device:
            raise ValueError(f"{self.name}: input is {x.dtype} on {x.device}; the block is "
                             f"compiled for {want.dtype} on {want.device}")

    @property
    def reference(self) -> nn.Module:
        """The source's LaudBottleneck this block was compiled from (eval mode)."""
        return self._reference[0]

    def train(self, mode: bool = True):
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
        field present exactly where the block has that mask, of its shape (the grid of
        the block's S on x's map, mask3 and mask1 at the output and input maps, G channel
        groups), grid and channel holding only 0 and 1 (or False and True), and mask3 and
        mask1 the grid's expansion (``spatial_masks_from_grid``), as ``last_masks`` gives
        them: the variants read whichever of them they need, so masks that disagree would
        give a variant-dependent result.

        Raises:
            ValueError: naming the block, the mask and the shape or values found.
        """
        if not isinstance(masks, BlockMasks):
            raise ValueError(f"{self.name}: masks must be a BlockMasks, got "
                             f"{type(masks).__name__}")
        b, _, h, w = x.shape
        ho, wo = self.reference.out_hw((h, w))
        g = self.reference.grid_size((h, w))
        expected = {
            "grid": None if g is None else (b, 1, *g),
            "mask3": None if g is None else (b, 1, ho, wo),
            "mask1": None if g is None else (b, 1, h, w),
            "channel": (b, self.spec.channel_groups) if self.spec.channel else None,
        }
        for name, shape in expected.items():
            t = getattr(masks, name)
            got = None if t is None else tuple(t.shape)
            if got != shape:
                raise ValueError(f"{self.name}: masks.{name} has shape {got}; this block on "
                                 f"an input of {b}x{h}x{w} takes {shape}")
            if t is not None and name in ("grid", "channel") and not bool(
                    ((t == 0) | (t == 1)).all()):
                raise ValueError(f"{self.name}: masks.{name} holds values other than 0 and 1")
        if g is not None:  # mask3 and mask1 equal to the grid's 0/1 expansion, values too
            want = spatial_masks_from_grid(masks.grid.to(torch.float32), (h, w),
                                           self.spec.stride)
            for name, w01 in zip(("mask3", "mask1"), want):
                if not torch.equal(getattr(masks, name).to(torch.float32), w01.float()):
                    raise ValueError(f"{self.name}: masks.{name} is not the expansion of "
                                     "masks.grid (spatial_masks_from_grid): other pixels "
                                     "or values other than 0 and 1")

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
                order.pooled = global_pool(h)
            masks = self.gates(h, pooled=order.pooled)
        else:
            masks, order.pooled = order.to_batch(masks), None
        on = gate_values(masks, h.shape[0], self.name)
        (a, e), moved = order.make_contiguous(on, h)
        if moved is not None:
            masks = take_masks(masks, moved)
        out = self._run(h, masks, True, order.snapshot(), rate=sum(on) / len(on))
        if self.spec.downsample:  # every sample changed
            order.pooled = None
        elif order.pooled is not None and e > a:
            order.pooled[a:e] = global_pool(out[a:e])
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


class CompiledModel(nn.Module):
    """An inference-only LAUD model: folded stem, compiled blocks, head.

    ``plan`` describes the choices per block; ``last_stats`` lists a BlockRun per block of
    the last forward. ``source`` is the eval-mode copy of the compiled model (in the
compiled dtype and device) that the blocks and maskers were read from (changing it
changes nothing here); to train, train the original model and compile it again.
    """

    def __init__(self, source: nn.Module, blocks: list[CompiledBlock], input_shape,
                 device: torch.device, dtype: torch.dtype, backend: str, tune: str):
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

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(TRAIN_REFUSED)
        return super().train(False)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected a 4D input [B, C, H, W] with B >= 1, got {shape}")
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            raise ValueError(
                f"input of shape [B, {', '.join(map(str, x.shape[1:]))}] does not match the "
                f"compiled plan [B, {', '.join(map(str, self.input_shape[1:]))}]; compile "
                "again with an example input of the new shape"
            )
        if x.dtype != self.dtype:
            hint = (f"compile with dtype={x.dtype}" if x.dtype.is_floating_point else
                    "a compiled model takes floating-point inputs")
            raise ValueError(f"input dtype {x.dtype} does not match the compiled dtype "
                             f"{self.dtype}; cast the input or {hint}")
        if x.device != self.device:
            raise ValueError(f"input on {x.device} but the model is compiled for {self.device}")

    @torch.no_grad()
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
        refuse_tracing("CompiledModel")
        with call_lock(self):
            return self._locked_forward(x, masks, check_masks)

    def _locked_forward(self, x: torch.Tensor, masks: list[BlockMasks] | None,
                        check_masks: bool) -> torch.Tensor:
        self._check_input(x)
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
            # one on the stem's pooling keeps an output no block then writes over
            if bad is not None:
                h = mark_nan(h, bad)
            for i, blk in enumerate(self.blocks):
                h = blk(h, masks=None if masks is None else masks[i],
                        check_masks=check_masks, check_finite=bad is not None)
            out = self.fc(torch.flatten(self.avgpool(h), 1))
            return out if bad is None else mark_nan(out, bad)
        order = SampleOrder(h.shape[0])
        for i, blk in enumerate(self.blocks):
            h = blk(h, reuse_input=True, masks=None if masks is None else masks[i],
                    order=order, check_masks=check_masks)
        # the head's modules see the samples in x's order: the pooled features are put
        # back (B x C values), or the whole map when a hook on avgpool would see it
        if hooked(self.avgpool):
            out = self.fc(torch.flatten(self.avgpool(order.to_caller(h)), 1))
        else:
            out = self.fc(order.to_caller(torch.flatten(self.avgpool(h), 1)))
        return out if bad is None else mark_nan(out, bad)

    @property
    def plan(self) -> Plan:
        return Plan(self)


def mean64(t: torch.Tensor) -> float:
    """The mean of a mask in float64: in a half type its own mean is rounded (0.55 read
    0.5498 in bfloat16, and a rate halfway between two table entries went to the upper
    one where float32 masks' went to the lower). A CPU mask of a numpy dtype is read
    through numpy (no torch op)."""
    a = host_array(t)
    if a is not None:
        return float(a.mean(dtype=np.float64))
    return float(t.double().mean())


def run_rate(spec: BlockSpec, masks: BlockMasks) -> float:
    """``ops.masks.dispatch_rate`` in float64 whatever the masks' dtype (``mean64``): the
    rate a compiled block reads its dispatch table at."""
    return mean64(masks.channel if spec.mode == "channel" else masks.grid)


def _fx_tracing() -> bool:
    """Whether torch.fx symbolic tracing runs (not ``is_fx_tracing``, which logs a warning
    on its first call, tracing or not)."""
    import torch.fx._symbolic_trace as fx

    check = getattr(fx, "is_fx_symbolic_tracing", None)
    return bool(check() if check is not None else getattr(fx, "_is_fx_tracing_flag", False))


def refuse_tracing(who: str) -> None:
    """Raise under ``torch.jit.trace``, ``torch.export`` and ``torch.fx`` symbolic tracing:
    the variant, the sliced weights and the gather indices are chosen in Python from each
    input's masks, so a trace would record one input's choices as constants and give
    wrong results on every other input, silently (a traced channel block: 0.71 relative
    error on another input, while torch's own trace check passed). ``torch.compile`` is
    not refused: it breaks its graph at the call lock and runs the forward eagerly.

    Raises:
        RuntimeError: naming ``who``.
    """
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    if torch.jit.is_tracing() or exporting() or _fx_tracing():
        raise RuntimeError(f"{who} cannot be traced or exported (torch.jit.trace, "
                           "torch.export, torch.fx): which kernels run, on which pixels and "
                           "channels, is decided on each input's masks in Python, so a "
                           "trace would fix one input's choices; call it eagerly "
                           "(torch.compile works, running it as it is)")


def hooked(module: nn.Module) -> bool:
    """Whether ``module`` or a module inside it has a forward hook or pre-hook, its own or
    one registered for every module (``nn.modules.module.register_module_forward_hook``,
    ``register_module_forward_pre_hook``)."""
    glob = nn.modules.module
    if (getattr(glob, "_global_forward_hooks", None)
            or getattr(glob, "_global_forward_pre_hooks", None)):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def nonfinite_samples(x: torch.Tensor) -> torch.Tensor | None:
    """[B] bool, the samples of x that hold NaN or inf, for ``mark_nan``: the fused ReLUs
    of the engine (oneDNN's, ``ops.packed.PackedConv``; the Triton kernels'
    ``tl.maximum``) turn NaN into 0 where torch.relu keeps it, so without this a
    non-finite input could come back as finite numbers where the reference's output is
    not finite. On CPU one sum first, and None when it is finite (the per-sample test
    only when it is not); on CUDA the per-sample test on the device, without a host
    sync."""
    if x.device.type == "cpu" and bool(torch.isfinite(x.sum())):
        return None
    return ~torch.isfinite(x).flatten(1).all(1)


def mark_nan(out: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """out with the samples ``bad`` ([B] bool, ``nonfinite_samples``) set to NaN, in
    place."""
    return out.masked_fill_(bad.view(-1, *(1,) * (out.dim() - 1)), float("nan"))


class Plan:
    """Printable per-block plan: name, mode, S, and the variant chosen per rate (each rate
    a timing was taken at, or a bucket where it is predicted)."""

    def __init__(self, model: CompiledModel):
        self.rows = [(b.name, b.spec, b.table, b.dispatch, b.static_choice)
                     for b in model.blocks]
        self.header = (f"backend={model.backend} dtype={str(model.dtype).replace('torch.', '')}"
                       f" tune={model.tune} input={list(model.input_shape)}")

    def __str__(self) -> str:
        lines = [self.header, f"{'block':<12} {'mode':<8} {'S':>2} {'G':>4}  rate:variant"
                              " (m=measured now, c=cached, p=predicted, r=only candidate)"]
        for name, spec, table, dispatch, static in self.rows:
            g = spec.channel_groups or "-"
            s = spec.granularity if spec.spatial else "-"
            tag = f" [static: {static.variant} at every rate]" if dispatch == "static" else ""
            lines.append(f"{name:<12} {spec.mode:<8} {s:>2} {g:>4}  {table.describe()}{tag}")
        return "\n".join(lines)

    __repr__ = __str__


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


def set_stem(owner: nn.Module, model: LaudResNet, device, dtype: torch.dtype,
             memory_format: torch.memory_format) -> None:
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
