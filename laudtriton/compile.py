"""``laudtriton.compile``: turn a LAUD model into per-block dispatch plans and run them.

How a variant is chosen for a block (the rule, per ``tune`` mode):

- ``"off"``: every supported variant is timed on the example input with the masks its
  own maskers produce (blocks of equal shape are timed once, on the first one's input
  and masks; a progress line each); the fastest one serves every rate. Nothing is read
  or written to the autotune cache.
- ``"quick"``: the cache is read (each timing kept at the rate it was taken); the
  buckets of a small rate grid (0.2, 0.5, 0.8 and the bucket of the example's rate,
  ``tune.keys.rate_bucket``: its nearest 0.1) that no timing lies within 0.05 of are
  timed now, with masks of round(b·N) active cells, and recorded at the rate those
  realise, round(b·N)/N (``schedule.run_rate``). A rate where every candidate
  failed is recorded so too, and not timed again. When the example's bucket is still
  uncovered (its masks realise another rate: with one grid cell per sample, round(0.5·1)
  = 0), the variants are also timed on the example's own masks, for this plan only.
- ``"full"``: as quick, on every bucket 0.0, 0.1, ..., 1.0.
- ``"cached"`` (default): the cache; the buckets 0.0, 0.1, ..., 1.0 that no timing lies
  within 0.05 of are filled with the latency predictor's estimates (fitted on this
  device's cached timings, ``predict``) when this machine has been calibrated, the
  calibration has a peak for the dtype (a CPU's measures float32's only) and the cache
  holds timings; a block with nothing cached and no predictor falls back to the
  ``"off"`` rule (with a progress line). A cached rate counts only where every candidate
  variant has a current timing (one missing: not swept, or its code changed since; a
  warning names it and the cache file, once per process). A variant that failed wherever
  it was timed on the block is not predicted, and a predicted entry carries the variant's
  fastest config that ran there (else its first); with fewer than two such variants
  nothing is predicted. ``plan`` marks each entry's source.

In every mode "fastest" keeps ``dense`` unless another variant beats it by more than
``schedule.DENSE_MARGIN`` (5%): near-ties flip from one sweep to the next, and a sparse
variant that wins one alone can lose inside the model.

At run time each block computes its masks, reads its activation rate (spatial rate for
spatial/both blocks, gate rate for layer blocks, channel rate for channel blocks) and runs
the entry of the nearest rate in its table (``dispatch="dynamic"``), or always the entry chosen
for the example's rate (``dispatch="static"``: no host sync for the rate). A table whose
entries all name the same variant and config needs no rate: dynamic dispatch then skips
reading it too (channel blocks, where ``slice`` serves every rate).

The gates of a block that pool its whole input (a channel MLP masker, a layer gate) pool
one float32 sample on CPU in the form ``pooling.fastest_form`` times faster on this machine
for the block's input shape, when the block is made (once per shape and thread count in
a process, in every tune mode: 4-26 ms per shape at 224x224 on a 2-core VM, fewer rounds
on a large map, ``pooling.BUDGET_S``); ``plan`` names it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .block_checks import check_downsamples, check_foldable
from .capture import block_inputs, capture_inputs, outermost_modules, stacklevel_outside
from .compile_checks import (
    check_block_places,
    check_example_input,
    check_example_tensor,
    check_finite,
    check_folded,
    check_hooks,
    check_maskers_match_mode,
    check_not_dynamo_wrapped,
    check_options,
    check_variants,
)
from .compiled import CompiledModel
from .compiled_block import CompiledBlock
from .guards import no_autocast
from .module_copy import (
    bake_parametrizations,
    compiled_module,
    module_places,
    separate_places,
    set_submodule,
)
from .nn.block import LaudBottleneck, detached_copy
from .nn.calibrate import meta_tensor
from .nn.resnet import LaudResNet
from .ops import BlockSpec, fold_block
from .ops.fold import FoldedBlock
from .planning import candidate_variants, plan_block
from .predict.calibration import fitted_predictor
from .schedule import DispatchTable, run_rate
from .stem import check_resnet
from .tune.cache import TuneCache

CL = torch.channels_last


def compile(model: nn.Module | Callable[..., nn.Module] | None = None,
            example_input: torch.Tensor | None = None, *, backend: str = "auto",
            tune: str = "cached", cache_dir: str | os.PathLike[str] | None = None,
            dispatch: str = "dynamic", dtype: torch.dtype | None = None,
            variants: str | Iterable[str] | None = None, progress: bool = True
            ) -> nn.Module | Callable[..., Any]:  # Callable: used as a decorator
    """Compile a LAUD model (or a single LaudBottleneck) into real sparse execution.

    Also a decorator: ``@laudtriton.compile`` or ``@laudtriton.compile(backend="cpu")`` on
    a model class or factory function compiles each model it returns. On a class the
    decorated name becomes a factory function (``isinstance`` against it, subclassing it,
    ``super(Name, self)`` in its body and pickling the models it builds no longer work):
    decorate a factory function to keep the class. Its options, and what needs no model
    of a given ``example_input`` (a finite 4D floating-point tensor with a sample), are
    checked when it is applied; the example's shape, against each model it builds.

    The compiled model is a snapshot: its convolutions hold the weights folded at compile
    time and its maskers the weights read then, so later changes to the model you
    compiled (or to ``CompiledModel.source``) do not reach them; compile again. It refuses
    ``load_state_dict`` and a move to another dtype or device for the same reason.

    Args:
        model: a ``LaudResNet``, a ``LaudBottleneck``, or any module containing them.
        example_input: [B, C, H, W] input the plan is made for (default for a LaudResNet:
            one random image of its ``input_size``); required for other modules.
        backend: "auto" (cuda if available), "cpu" (torch sparse engine) or "cuda".
        tune: "cached" | "quick" | "full" | "off" (see the module docstring).
        cache_dir: autotune cache directory (default: $LAUDTRITON_CACHE_DIR, else the
            source tree's autotune_cache/ when the package is installed from one, else
            ~/.cache/laudtriton).
        dispatch: "dynamic" (per-input rate) or "static" (the example's rate; no host sync).
        dtype: compute dtype, torch.float32, float16, bfloat16 or float64 (default
            float32 on CPU, float16 on CUDA).
        variants: restrict the candidates to these variant names, a list or a comma
            list (``dense`` stands in where none of them supports a block); default:
            every registered variant.
        progress: print a line on stderr before each block that is timed now (tune
            "quick" and "full", "off", and "cached" where nothing is cached: seconds to
            minutes in all on a CPU); False for none.

    Returns:
        a ``CompiledModel`` (inference only) for a LaudResNet or a LaudBottleneck. A
        LaudResNet is compiled as it is built, with its own stem and head modules
        (``stem.check_resnet`` says what may change). Any other module containing LAUD
        blocks comes back as an eval-mode copy running its own forward, in which each
        LaudResNet the example forward calls is replaced by its ``CompiledModel`` and each
        LAUD block it calls outside one (a LaudResNet's own blocks included, when your
        forward calls them and not the network) by its ``CompiledBlock``; what the example
        never reaches stays as it is, with a warning naming it. A LaudResNet held in
        several places (attributes) becomes one CompiledModel, the same object in each.
        A block object held in several places gets a CompiledBlock in each, planned for
        the input that place is called with, all on one copy of its folded weights; one
        place called at several map sizes is planned for the first, with a warning (the
        others run that plan, or ``dense`` where its variant does not run the size).
        Your forward runs on the
        example two or three times: to find those parts and their inputs (once more
        when a LaudResNet is compiled first), then with every part in place, to check
        that it calls each (one reached through a reference compile does not replace,
        a network's bound ``__call__`` kept in an attribute, say, would still run the
        uncompiled copy: a warning names what it did not call; a bound ``forward`` kept
        so runs on the copy, with compiled blocks). None of those forwards draws random
        numbers of yours (each runs on a fork of the generators), and none changes
        ``example_input`` (each runs on a copy). Such a copy has no
        ``plan`` or ``last_stats`` of its own, and your forward runs as it is: each
        compiled part checks the input it gets (a CompiledBlock names itself in a
        ValueError on a wrong channel count, dtype or device). A module with no LAUD
        block is returned as an eval-mode copy on the backend's device in ``dtype``, with
        a warning; one that is compiled already
        (a CompiledModel) is refused.

    Raises:
        ValueError: on a model that is not an nn.Module, an unknown backend, tune or
            dispatch mode, an unknown, empty or non-string ``variants``, a missing example
            input, an example input without a sample, or one the model rejects; a dtype
            other than those four; a cache_dir that is not a path, is
            empty, or names a file or lies inside one (``tune.keys.check_dir``); a
            LaudResNet subclass that overrides forward, stem or head, or a stem the
            compiled model cannot run (``stem.check_resnet``); a block whose modules
            the fold cannot express or whose maskers the compiled gates cannot read
            (``check_foldable``), or whose dyn_mode is unknown, or that lacks a masker
            its dyn_mode reads or holds a channel masker it does not
            (``check_maskers_match_mode``); a downsample whose conv maps to another
            shape than the block's output, before any forward (``check_downsample``); a
            LAUD block in two places of a LaudResNet or inside another block
            (``check_block_places``); a model compiled already (a
            CompiledModel, and no LAUD block); a forward hook or pre-hook inside a LAUD
            network that the compiled model would not call, or one on its stem's pooling,
            or on a ``conv_linear`` channel masker in a network with layer-skipping blocks
            (``check_hooks``); an example input holding NaN or inf (itself, or once
            cast to ``dtype``), or that is not a real floating-point tensor with data
            (complex, integer, meta) or is not strided (mkldnn, sparse); a parameter or
            buffer of a LAUD network or block that holds NaN or inf, or BatchNorm
            statistics that fold to them (``check_finite``, ``check_folded``);
            ``variants`` of which no block of the model runs any; a LaudResNet that the
            user's forward calls on inputs of two sizes (``capture_inputs``); a
            $LAUDTRITON_CACHE_DIR of spaces only (an empty one is unset) or one naming a
            file (with cache_dir None and tune not "off"); a $LAUDTRITON_CACHE value
            other than 0/false/off/no and 1/true/on/yes (tune not "off",
            ``tune.cache.cache_enabled_from_env``); a model with a tensor on the meta
            device; a model whose own forward fails on the example input (its error
            named), or whose compiled copy's forward fails on it; a module holding LAUD
            blocks that is ``torch.compile``'s wrapper (``OptimizedModule``: compile the
            module inside it first).
        RuntimeError: when every candidate variant fails on a block's example input.
    """
    options = dict(backend=backend, tune=tune, cache_dir=cache_dir, dispatch=dispatch,
                   dtype=dtype, variants=variants, progress=progress)
    if model is None or isinstance(model, type) or (
        callable(model) and not isinstance(model, nn.Module)
    ):
        # now, not at the decorated factory's first call; the names as a tuple (a
        # generator, read here, would be empty at each call)
        options["variants"] = check_options(**options)[1]
        if example_input is not None:  # what needs no model, at once too
            check_example_tensor(example_input, None, dtype)
        return _decorator(model, example_input, **options)
    # under torch.inference_mode() the folded weights would be inference tensors, whose
    # version counters (``ops.fold.Fingerprint``) cannot be read; under autocast the
    # example forward would capture block inputs of another dtype than the plan's
    with torch.inference_mode(False), contextlib.ExitStack() as stack:
        for dev in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
            stack.enter_context(no_autocast(dev))
        return _compile(model, example_input, **options)


def _compile(model, example_input, *, backend, tune, cache_dir, dispatch, dtype, variants,
             progress, nested: str | None = None):
    """``compile``; nested: the name of ``model`` (a LaudResNet) inside the user's module
    being compiled, whose call checks ``variants`` over the whole module (and here its
    input is what the user's forward gives the network)."""
    if not isinstance(model, nn.Module):
        hint = ("; an example input goes in example_input= (as a decorator: "
                "@laudtriton.compile(example_input=x))" if isinstance(model, torch.Tensor)
                else "")
        raise ValueError(f"compile: model must be an nn.Module (a LaudResNet, a "
                         f"LaudBottleneck or a module containing them), got "
                         f"{type(model).__name__}{hint}")
    backend, variants = check_options(backend, tune, cache_dir, dispatch, dtype, variants,
                                      progress)
    # a CUDA device with its index (the example input's, else the current one): "cuda"
    # alone would put the model on whichever device is current at compile time
    device = (torch.device("cpu") if backend != "cuda"
              else example_input.device if isinstance(example_input, torch.Tensor)
              and example_input.is_cuda
              else torch.device("cuda", torch.cuda.current_device()))
    dtype = dtype or (torch.float16 if backend == "cuda" else torch.float32)
    meta = meta_tensor(model)
    if meta is not None:
        raise ValueError(f"compile: the model's {meta} is on the meta device (no data); "
                         "load or initialise its weights first")
    if not any(isinstance(m, LaudBottleneck) for m in model.modules()):
        if any(isinstance(m, (CompiledModel, CompiledBlock)) for m in model.modules()):
            raise ValueError("compile: the model is compiled already (it holds a "
                             "CompiledModel or CompiledBlock and no LAUD block); compile "
                             "the model it came from (a CompiledModel's .source)")
        if example_input is not None:  # nothing runs it, but a bad one is still refused
            check_example_tensor(example_input, nested, dtype)
        warnings.warn("laudtriton.compile: the model has no LAUD block; returning an "
                      f"eval-mode copy of it on {device} in {dtype}",
                      stacklevel=stacklevel_outside(__file__))
        return detached_copy(model).eval().to(device=device, dtype=dtype)
    example_input = check_example_input(model, example_input, nested, dtype)
    if isinstance(model, LaudResNet):
        check_resnet(model)
    if nested is None:  # every LAUD network in the module, before any forward runs
        check_not_dynamo_wrapped(model)
        check_block_places(model)
        nets = ([("", model)] if isinstance(model, (LaudResNet, LaudBottleneck))
                else outermost_modules(model, (LaudResNet, LaudBottleneck)))
        for name, net in nets:
            check_hooks(net, name)
            check_downsamples(net, name)  # before the forward, which names no block
    # eval first: a parametrization may compute otherwise in training (spectral_norm's
    # power iteration), and the compiled model is the eval-mode network
    ref = bake_parametrizations(detached_copy(model).eval()).to(device=device, dtype=dtype)
    if isinstance(ref, (LaudResNet, LaudBottleneck)):  # (a module of the user's: below,
        check_finite(ref, "" if nested is None else f"{nested}.")  # its LAUD blocks)
    x = example_input.to(device=device, dtype=dtype).contiguous(memory_format=CL)
    options = dict(backend=backend, tune=tune, cache_dir=cache_dir, dispatch=dispatch,
                   dtype=dtype, variants=variants, progress=progress)
    missed_nets, replaced = [], []
    if not isinstance(ref, (LaudResNet, LaudBottleneck)):
        # a LaudResNet inside another module becomes a CompiledModel there (the outer
        # forward stays); LAUD blocks outside any LaudResNet become CompiledBlocks below,
        # those of a LaudResNet whose forward is not called (a backbone whose blocks the
        # user's forward calls) included
        # a network in several places (a.net = b.net = net) is one CompiledModel in each
        places = {p[0][0]: [n for n, _, _ in p] for p in module_places(ref, LaudResNet).values()}
        found = [(name, ref.get_submodule(name)) for name in places]
        nets, missed_nets = capture_inputs(ref, x, found) if found else ([], [])
        missed_nets = [place for name in missed_nets for place in places[name]]
        for name, net, xin in nets:
            cm = _compile(net, xin, **options, nested=name)
            for place in places[name]:
                set_submodule(ref, place, cm)
        replaced = [place for name, _, _ in nets for place in places[name]]
    # the device the blocks are timed on: "cuda" alone named the current one's cache and
    # calibration, whichever GPU the example input is on
    cache = TuneCache(cache_dir, device=device) if tune != "off" else None
    predictor = fitted_predictor(cache, device) if tune == "cached" else None
    tables: dict[BlockSpec, DispatchTable] = {}
    blocks = []
    # a LAUD block in several places of a user's module: a block object per place, each
    # planned for its own input, all on one fold (``folds``, by the first place's name)
    first_place = ({} if isinstance(ref, (LaudResNet, LaudBottleneck))
                   else separate_places(ref))
    folds: dict[str, FoldedBlock] = {}
    captured, missed = block_inputs(ref, x, replaced)
    distinct: set[BlockSpec] = set()  # tuning progress on stderr: block i of n

    def say(text: str) -> None:
        if progress:
            print(f"laudtriton.compile: block {len(tables) + 1}/{len(distinct)}: {text}",
                  file=sys.stderr, flush=True)
    specs = []
    for name, block, xin in captured:
        check_foldable(name, block)
        check_maskers_match_mode(name, block)
        specs.append(BlockSpec.from_block(block, xin.shape, dtype))
        distinct.add(specs[-1])
    if nested is None and isinstance(ref, (LaudResNet, LaudBottleneck)):
        check_variants(variants, specs, backend)  # before any tuning
    for (name, block, xin), spec in zip(captured, specs):
        if not isinstance(ref, (LaudResNet, LaudBottleneck)):
            check_finite(block, f"{name}.")
        fb = folds.get(first_place.get(name, name))
        if fb is None:
            fb = folds[first_place.get(name, name)] = fold_block(block, dtype, device)
            check_folded(f"{name}: its BatchNorm layers fold", fb.fingerprint().tensors)
        with torch.no_grad():
            masks, _ = block.compute_masks(xin)
        if spec not in tables:  # equal specs are tuned once
            tables[spec] = plan_block(spec, fb, xin.contiguous(memory_format=CL), masks,
                                      candidate_variants(spec, backend, variants), tune,
                                      cache, predictor, say)
        rate = float(run_rate(spec, masks))
        blocks.append(CompiledBlock(name, spec, fb, tables[spec], dispatch, rate))
    if isinstance(ref, (LaudResNet, LaudBottleneck)):
        cm = CompiledModel(ref, blocks, x.shape, x.device, dtype, backend, tune)
        if cm.is_resnet:
            check_folded("the stem's BatchNorm folds", (cm.stem_w, cm.stem_b))
        return cm
    return compiled_module(ref, blocks, [c[0] for c in captured], missed, missed_nets, x,
                           variants, backend)


def _decorator(target, example_input, **options):
    def wrap(factory):
        if isinstance(factory, nn.Module):  # a model, not something that builds one
            raise ValueError(f"compile: as a decorator it takes a model class or factory "
                             f"function, got a {type(factory).__name__} instance; compile "
                             "a model with compile(model, example_input, ...)")
        if not callable(factory):
            raise ValueError(f"compile: as a decorator it takes a model class or factory "
                             f"function, got {type(factory).__name__} {factory!r:.80}")
        if isinstance(factory, type):
            @functools.wraps(factory, updated=())
            def make(*args, **kwargs):
                return compile(_module(factory, factory(*args, **kwargs)), example_input,
                               **options)
            return make

        @functools.wraps(factory)
        def build(*args, **kwargs):
            return compile(_module(factory, factory(*args, **kwargs)), example_input,
                           **options)
        return build

    def _module(factory, built):
        if not isinstance(built, nn.Module):
            raise ValueError(f"compile: the decorated {getattr(factory, '__name__', factory)!r}"
                             f" returned {type(built).__name__}, not an nn.Module")
        return built

    # compile calls this only with None, a class or a callable that is no module
    return wrap if target is None else wrap(target)
