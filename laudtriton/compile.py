"""``laudtriton.compile``: turn a LAUD model into per-block dispatch plans and run them.

How a variant is chosen for a block (the rule, per ``tune`` mode):

- ``"off"``: every supported variant is timed on the example input with the masks its
  own maskers produce (blocks of equal shape are timed once, on the first one's input
  and masks); the fastest one serves every rate. Nothing is read or written
  to the autotune cache.
- ``"quick"``: the cache is read (each timing kept at the rate it was taken); the
  buckets of a small rate grid (0.2, 0.5, 0.8 and the bucket of the example's rate,
  ``tune.keys.rate_bucket``: its nearest 0.1) that no timing lies within 0.05 of are
  timed now, with masks of round(b·N) active cells, and recorded at the rate those
  realise, round(b·N)/N (``ops.masks.dispatch_rate``). A rate where every candidate
  failed is recorded so too, and not timed again.
- ``"full"``: as quick, on every bucket 0.0, 0.1, ..., 1.0.
- ``"cached"`` (default): the cache; the buckets 0.0, 0.1, ..., 1.0 that no timing lies
  within 0.05 of are filled with the latency predictor's estimates (fitted on this
  device's cached timings, ``predict``) when this machine has been calibrated and the
  cache holds timings; a block with nothing cached and no predictor falls back to the
  ``"off"`` rule. A variant that failed wherever it was timed on the block is not
  predicted, and a predicted entry carries the variant's fastest config that ran there
  (else its first); with fewer than two such variants nothing is predicted. ``plan``
  marks each entry's source.

In every mode "fastest" keeps ``dense`` unless another variant beats it by more than
``schedule.DENSE_MARGIN`` (5%): near-ties flip from one sweep to the next, and a sparse
variant that wins one alone can lose inside the model.

At run time each block computes its masks, reads its activation rate (spatial rate for
spatial/both blocks, gate rate for layer blocks, channel rate for channel blocks) and runs
the entry of the nearest rate in its table (``dispatch="dynamic"``), or always the entry chosen
for the example's rate (``dispatch="static"``: no host sync for the rate). A table whose
entries all name the same variant and config needs no rate: dynamic dispatch then skips
reading it too (channel blocks, where ``slice`` serves every rate).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import math
import os
import re
import sys
import warnings

import torch
from torch import nn

from .compiled import (
    CompiledBlock,
    CompiledModel,
    check_resnet,
    foldable_bn,
    no_autocast,
    own_forward,
    refuse_apply,
    refuse_load,
    refuse_train,
)
from .nn.block import LaudBottleneck, detached_copy
from .nn.maskers import MaskerChannelMLP, MaskerSpatial
from .nn.resnet import LaudResNet
from .ops import BlockSpec, fold_block, get_variant, variants_for
from .ops.masks import dispatch_rate
from .ops.synthetic import synthetic_masks
from .predict.calibrate import fitted_predictor
from .predict.hardware import DTYPES as PREDICTED_DTYPES
from .schedule import Choice, DispatchTable, near, rate_key
from .tune.cache import TuneCache, refuse_bad_dir
from .tune.keys import rate_bucket
from .tune.measure import config_key, time_variants

log = logging.getLogger("laudtriton")

BACKENDS = ("auto", "cpu", "cuda")
TUNE_MODES = ("cached", "quick", "full", "off")
DISPATCH = ("dynamic", "static")
QUICK_RATES = (0.2, 0.5, 0.8)
CL = torch.channels_last


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} unknown; accepted: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "cuda" and not torch.cuda.is_available():
        raise ValueError("backend 'cuda' asked for, but torch sees no CUDA device")
    return backend


def _candidates(spec: BlockSpec, backend: str, only=None):
    """Variants that run ``spec`` exactly on ``backend``; restricted to ``only`` when given
    (falling back to ``dense`` where none of them supports the block)."""
    cands = variants_for(spec, backend)
    if backend == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            cands = [v for v in cands if not v.needs_triton]
    if only is not None:
        cands = [v for v in cands if v.name in only] or [v for v in cands if v.name == "dense"]
    return cands


def _outermost(model: nn.Module, kinds, prefix: str = ""):
    """(qualified name, module) of the modules of type ``kinds`` inside ``model`` (not
    model itself), not looking inside them or inside what compile already built."""
    for name, child in model.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, kinds):
            yield full, child
        elif not isinstance(child, (CompiledBlock, CompiledModel)):
            yield from _outermost(child, kinds, full)


def _inputs(model: nn.Module, x: torch.Tensor, named: list) -> tuple[list, list[str]]:
    """Run ``model`` on x (no grad); (captured, missed): (name, module, input) of every
    module in ``named`` [(name, module)] in the order they run (first call each), and the
    names of those the forward never called. The input is the first positional argument,
    else the keyword argument ``x`` (the parameter of LaudResNet.forward and
    LaudBottleneck.forward).

    Raises:
        ValueError: if a module of ``named`` is called without a tensor input, or a
            LaudResNet on inputs of two sizes (its CompiledModel runs one)."""
    captured, seen, handles = [], {}, []

    def hook(m, args, kwargs, name):
        xin = args[0] if args else kwargs.get("x")
        if name in seen:
            first = seen[name]
            if (isinstance(m, LaudResNet) and isinstance(xin, torch.Tensor)
                    and xin.shape[1:] != first[1:]):  # a CompiledModel runs one size
                raise ValueError(
                    f"compile: {name} is called on inputs of two sizes in one forward "
                    f"([B, {', '.join(map(str, first[1:]))}] then "
                    f"[B, {', '.join(map(str, xin.shape[1:]))}]); a compiled LaudResNet "
                    "runs the input size it was compiled for: give each size its own copy "
                    "of the network (copy.deepcopy), each then compiled for its size")
            return
        if not isinstance(xin, torch.Tensor):
            raise ValueError(f"compile: {name} is called with {len(args)} positional "
                             f"arguments and keywords {sorted(kwargs)}; accepted: its input "
                             "tensor, as the first argument or as x=")
        seen[name] = tuple(xin.shape)
        captured.append((name, m, xin.detach()))
    for name, mod in named:
        handles.append(mod.register_forward_pre_hook(
            lambda m, args, kwargs, name=name: hook(m, args, kwargs, name), with_kwargs=True))
    try:
        with torch.no_grad():
            model(x)
    except ValueError:  # ours (the hooks above) or the model's, with its own message
        raise
    except Exception as e:  # the model's forward fails on its own: it cannot be compiled
        text = (str(e).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"compile: the model's own forward fails on the example input "
                         f"({type(e).__name__}: {text}); compile runs it first, to find "
                         "its blocks' inputs") from e
    finally:
        for h in handles:
            h.remove()
    return captured, [name for name, _ in named if name not in seen]


def _folded_hook(hook) -> bool:
    """A pre-hook that only recomputes its module's weight from other tensors (pruning,
    ``weight_norm``, ``spectral_norm``): the example forward runs it, and the fold reads
    the weight it leaves (a snapshot, as every folded weight is)."""
    from torch.nn.utils import prune
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    return isinstance(hook, (prune.BasePruningMethod, WeightNorm, SpectralNorm))


def _check_hooks(net: nn.Module, prefix: str = "") -> None:
    """Raise if a module of ``net`` (a LaudResNet or LaudBottleneck about to be compiled;
    ``prefix`` its name in the user's module) holds a forward hook or pre-hook that the
    compiled model would drop. It runs its own stem, blocks and maskers; only copies of a
    LaudResNet's ``avgpool`` and ``fc`` and of a block's ``conv_linear`` channel masker
    run as modules, hooks included (not on such a masker in a LaudResNet with layer
    blocks, which may reorder the batch). A LaudResNet never calls its stage containers
    (``layer1``...) as modules, and the hooks of pruning, ``weight_norm`` and
    ``spectral_norm`` are folded (``_folded_hook``). A hook on ``maxpool`` (whose copy
    runs) is refused too: the blocks overwrite the stem's output in place, under whatever
    the hook saw or returned.

    Raises:
        ValueError: naming the first hooked module.
    """
    kept = ("avgpool", "fc") if isinstance(net, LaudResNet) else ()
    copied = [n for n, m in net.named_modules() if isinstance(m, LaudBottleneck)
              and m.masker_channel is not None
              and not isinstance(m.masker_channel, MaskerChannelMLP)]
    copied = [f"{n}.masker_channel" if n else "masker_channel" for n in copied]
    reorders = kept and any(isinstance(m, LaudBottleneck) and m.dyn_mode == "layer"
                            for m in net.modules())
    if reorders:  # the blocks after a layer gate may run the batch in another order
        for c in copied:
            if any(not _folded_hook(h) for m in net.get_submodule(c).modules()
                   for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]):
                name = ".".join(n for n in (prefix, c) if n)
                raise ValueError(
                    f"compile: {name} has a forward hook or pre-hook; in a network with "
                    "layer-skipping blocks the compiled model may run the batch in another "
                    "order (order.SampleOrder), so the hook would see the samples "
                    "reordered: remove it, or compile a network without layer skipping")
    for sub, mod in net.named_modules():
        if (sub.split(".")[0] in kept or re.fullmatch(r"layer\d+", sub) and kept
                or any(sub == c or sub.startswith(c + ".") for c in copied)):
            continue
        hooks = [*mod._forward_hooks.values(), *mod._forward_pre_hooks.values()]
        if not any(not _folded_hook(h) for h in hooks):
            continue
        name = ".".join(n for n in (prefix, sub) if n) or type(net).__name__
        if sub == "maxpool" and kept:
            raise ValueError(
                f"compile: {name} has a forward hook or pre-hook; the compiled model's "
                "blocks overwrite the stem's output in place, so what the hook saw or "
                "returned would change under it: remove it, or hook a module around the "
                "LAUD network")
        raise ValueError(
            f"compile: {name} has a forward hook or pre-hook, which the compiled model "
            "would never call (it runs its own stem, blocks and maskers; of a LaudResNet "
            "only copies of avgpool and fc run as modules): remove it, or hook a module "
            "around the LAUD network")


def check_block_places(model: nn.Module) -> None:
    """Raise unless every LAUD block of a LaudResNet in ``model`` sits in one place of
    it, and no LAUD block inside another: compile finds blocks by place (each place
    becomes a compiled block), and ``LaudResNet.blocks()``, which the reference's forward
    runs, lists a shared block once and a nested one beside its parent, so the two would
    run other blocks. (A whole LaudResNet in two places of a module: its first place
    becomes a CompiledModel, the other keeps its stem and head with compiled blocks. A
    LAUD block in two places of a module outside any LaudResNet is compiled in its first
    place, with a warning naming the others.)

    Raises:
        ValueError: naming both places of a shared block, or the nested block.
    """
    for name, m in model.named_modules():
        if isinstance(m, LaudBottleneck):
            inner = next((n for n, c in m.named_modules()
                          if n and isinstance(c, LaudBottleneck)), None)
            if inner is not None:
                where = f"{name}.{inner}" if name else inner
                raise ValueError(f"compile: {where} is a LaudBottleneck inside the "
                                 f"LaudBottleneck {name or '(the model)'}, which compile "
                                 "does not support: put it beside the block")
        if not isinstance(m, LaudResNet):  # a whole network may be shared, not a block
            continue
        places: dict[int, str] = {}
        for bname, b in m.named_modules(remove_duplicate=False):
            if isinstance(b, LaudBottleneck):
                if id(b) in places:
                    net = f"{name}." if name else ""
                    raise ValueError(f"compile: {net}{places[id(b)]} and {net}{bname} are "
                                     "one LaudBottleneck (a block shared between two "
                                     "places), which compile does not support: give each "
                                     "place its own block (copy.deepcopy)")
                places[id(b)] = bname


def _block_inputs(model: nn.Module, x: torch.Tensor) -> tuple[list, list[str]]:
    """Run the reference model in eval: ``_inputs`` of every LAUD block outside what
    compile built (the blocks of a LaudResNet a user's forward calls one by one
    included)."""
    if isinstance(model, LaudBottleneck):
        return _inputs(model, x, [("block", model)])
    return _inputs(model, x, list(_outermost(model, LaudBottleneck)))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def check_foldable(name: str, block: LaudBottleneck) -> None:
    """Raise unless ``ops.fold_block`` computes ``block`` exactly, with stride 1 or 2:
    conv1 and conv3 1x1,
    conv2 3x3 with padding 1 and the block's stride, all without bias, groups 1,
    dilation 1 and zero padding; bn1-bn3 affine BatchNorm2d with running statistics; the
    activation nn.ReLU; a downsample that is None or nn.Sequential(1x1 conv of the
    block's stride, no bias; that BN); maskers as ``laudtriton.nn.maskers`` builds them.

    Raises:
        ValueError: naming the block and the module that differs.
    """
    def conv_ok(c, k, stride, pad):
        return (isinstance(c, nn.Conv2d) and own_forward(c, nn.Conv2d)  # parametrized too
                and c.kernel_size == (k, k) and c.stride == (stride,) * 2
                and c.padding == (pad, pad) and c.dilation == (1, 1) and c.groups == 1
                and c.bias is None and c.padding_mode == "zeros")

    cls = type(block)
    for attr in ("forward", "compute_masks", "grid_size", "out_hw"):
        if getattr(cls, attr) is not getattr(LaudBottleneck, attr):
            raise ValueError(
                f"compile: {name} is a {cls.__name__}, which overrides LaudBottleneck."
                f"{attr}; a compiled block computes LaudBottleneck's own masks and "
                "forward. Hold the block in a module of yours instead of subclassing it")
    s = block.stride
    if s not in (1, 2):  # LAUDNet's strides: at 3 and more the gates' mask1 of a 1x1 grid
        # (every input pixel) is not the reference's (pixels no output reads stay off)
        raise ValueError(f"compile: {name} has stride {s}; compiled LAUD blocks take stride "
                         "1 or 2 (those of LAUDNet's networks)")
    parts = [("conv1", block.conv1, conv_ok(block.conv1, 1, 1, 0)),
             ("conv2", block.conv2, conv_ok(block.conv2, 3, s, 1)),
             ("conv3", block.conv3, conv_ok(block.conv3, 1, 1, 0)),
             ("bn1", block.bn1, foldable_bn(block.bn1)), ("bn2", block.bn2, foldable_bn(block.bn2)),
             ("bn3", block.bn3, foldable_bn(block.bn3)),
             ("relu", block.relu, type(block.relu) is nn.ReLU)]
    ds = block.downsample
    if ds is not None:
        ok = (type(ds) is nn.Sequential and len(ds) == 2 and conv_ok(ds[0], 1, s, 0)
              and foldable_bn(ds[1]))
        parts.append(("downsample", ds, ok))
    for part, mod, ok in parts:
        if not ok:
            raise ValueError(
                f"compile: {name}.{part} is {mod!r}; the compiled block folds a LAUD "
                "bottleneck as LaudBottleneck builds it (1x1, 3x3 with padding 1 and the "
                "block's stride, 1x1 convolutions without bias, each followed by an affine "
                "BatchNorm2d; nn.ReLU; a downsample of a 1x1 strided convolution without "
                "bias and a BatchNorm2d)")
    _check_maskers(name, block)


def _check_maskers(name: str, block: LaudBottleneck) -> None:
    """Raise unless the block's maskers are what the compiled block's gates
    (``ops.masks.Gates``) read: a ``MaskerSpatial`` whose conv is a 1x1 nn.Conv2d with
    bias to 2 logits; a ``MaskerChannelMLP`` of nn.Linear layers with bias (two with an
    nn.ReLU between them, or one) to 2·G logits. Their weights may be parametrized
    (``weight_norm``): the gates read the weights it computes, once. Another channel
    masker runs as it is.

    Raises:
        ValueError: naming the block and the masker that differs.
    """
    def plain(m, base):  # base's own computation; a parametrized weight allowed
        return isinstance(m, base) and own_forward(m, base)

    ms, mc = block.masker_spatial, block.masker_channel
    if ms is not None:
        c = getattr(ms, "conv", None)
        if not (type(ms) is MaskerSpatial and plain(c, nn.Conv2d)
                and c.kernel_size == (1, 1) and c.stride == (1, 1) and c.padding == (0, 0)
                and c.dilation == (1, 1) and c.groups == 1 and c.bias is not None
                and c.out_channels == 2):
            raise ValueError(
                f"compile: {name}.masker_spatial is {ms!r}; the compiled block reads a "
                "MaskerSpatial whose conv is a 1x1 nn.Conv2d with bias to 2 logits")
    if isinstance(mc, MaskerChannelMLP):
        seq = mc.conv
        layers = ([seq] if plain(seq, nn.Linear)
                  else list(seq) if type(seq) is nn.Sequential else [])
        ok = (type(mc) is MaskerChannelMLP and len(layers) in (1, 3)
              and all(plain(m, nn.Linear) and m.bias is not None for m in layers[::2])
              and all(type(m) is nn.ReLU for m in layers[1::2])
              and layers[-1].out_features == 2 * mc.groups)
        if not ok:
            raise ValueError(
                f"compile: {name}.masker_channel is {mc!r}; the compiled block reads a "
                "MaskerChannelMLP of nn.Linear layers with bias (Linear, ReLU, Linear or "
                "one Linear) to 2·G logits")


ALL_BUCKETS = tuple(i / 10 for i in range(11))


def _known_configs(hit, spaces: dict[str, set[str]], cache, spec, rate):
    """The cached timings ``hit`` ({variant: {config: s}}) of the candidate variants
    (``spaces``: their config keys on ``spec``), those of a config outside its variant's
    space dropped with a warning naming the cache file: a hand-edited file, or one written
    by another version of a variant's config list, must not reach a kernel launch."""
    if not hit:
        return hit
    out, bad = {}, []
    for v, cfgs in hit.items():
        if v not in spaces:
            continue
        known = {c: t for c, t in cfgs.items()  # a JSON object (the cache checks)
                 if config_key(json.loads(c)) in spaces[v]}
        bad += [f"{v} {c}" for c in cfgs if c not in known]
        if known:
            out[v] = known
    if bad:
        log.warning("autotune cache %s: %s at rate %s has config(s) outside the "
                    "variant's space, ignored: %s", cache.path, spec.short(), rate,
                    ", ".join(bad[:4]) + (" ..." if len(bad) > 4 else ""))
    return out


def _plan_block(spec, fb, x, masks, cands, tune, cache, predictor,
                say=lambda text: None) -> DispatchTable:
    """The dispatch table of one distinct block (``compile``'s tune rule). say: called
    with one line before ``tune`` "quick"/"full" times the block's rates (minutes in all
    on a CPU with nothing cached: the caller shows progress)."""
    table = DispatchTable()
    actual = float(dispatch_rate(spec, masks))
    failed: list[float] = []  # rates timed before where every candidate failed
    seen: dict[str, dict[str, float]] = {}  # per variant, per config: the best cached time
    if tune in ("cached", "quick", "full") and cache is not None:
        names = {c.name for c in cands}
        spaces = {c.name: {config_key(k) for k in c.configs(spec)} for c in cands}
        for r in cache.rates(spec):  # each at the rate it was timed at
            hit = _known_configs(cache.lookup(spec, r), spaces, cache, spec, r)
            for v, cfgs in (hit or {}).items():
                best = seen.setdefault(v, {})
                for c, t in cfgs.items():
                    best[c] = min(t, best.get(c, math.inf))
            # a rate counts only when every candidate has a current timing: after a
            # source edit hides one variant's timings, the others' alone would decide
            if hit and names <= set(hit):
                table.add(r, {v: t for v, t in hit.items() if v in names}, "cached")
                if rate_key(r) not in table.entries:
                    failed.append(rate_key(r))
    if tune in ("quick", "full"):
        grid = QUICK_RATES if tune == "quick" else ALL_BUCKETS
        todo = [b for b in sorted({rate_bucket(r) for r in grid} | {rate_bucket(actual)})
                if not (table.covers(b) or near(failed, b))]  # not timed at every compile
        said = False
        for b in todo:
            m = synthetic_masks(spec, b, seed=int(b * 1000), device=x.device)
            # kept at the rate the masks realise (round(b·N)/N: a layer gate at batch 1
            # is off at b = 0.2), once
            r = rate_key(dispatch_rate(spec, m))
            if r in table.entries or r in failed:
                continue
            if not said:
                say(f"timing {spec.short()}, {len(cands)} variant(s), up to {len(todo)} "
                    "rate(s)")
                said = True
            timings = time_variants(fb, spec, x, m, cands)
            if cache is not None:
                # scattered masks: an entry an old clustered sweep wrote is current again
                cache.record(spec, r, timings, {"asked_rates": [b], "clustered": False})
            table.add(r, timings, "measured")
            if r not in table.entries:  # every candidate failed: not again (below, or
                failed.append(r)  # at the next compile: it is recorded)
    # the predictor models float32, float16 and bfloat16; another dtype (float64) is
    # timed on the example input below when nothing is cached
    if (tune == "cached" and predictor is not None and len(cands) > 1
            and spec.dtype in PREDICTED_DTYPES):
        from .schedule import fill_predictions

        # not a variant that failed wherever it was timed; with a config that ran
        ran = {v: min(cfgs, key=cfgs.get) for v, cfgs in seen.items()
               if any(math.isfinite(t) for t in cfgs.values())}
        usable = [c for c in cands if c.name in ran or c.name not in seen]
        if len(usable) > 1:
            fill_predictions(table, spec, ALL_BUCKETS, usable, predictor[0], predictor[1],
                             configs=ran)
    if not table.entries and len(cands) == 1:  # nothing to choose from
        table.entries[rate_key(actual)] = Choice(cands[0].name, (), math.nan, "rule")
    if not table.entries:  # "off", or "cached" with nothing cached: time on the example
        if tune == "cached":
            log.info("no cached timings for %s; timing on the example input", spec.short())
        table.add(actual, time_variants(fb, spec, x, masks, cands), "measured")
    if not table.entries:
        raise RuntimeError(
            f"compile: every candidate variant ({', '.join(c.name for c in cands)}) failed "
            f"on the example input of a block {spec.short()}; the warnings logged above "
            "say why")
    return table


def compile(model=None, example_input: torch.Tensor | None = None, *, backend: str = "auto",
            tune: str = "cached", cache_dir=None, dispatch: str = "dynamic",
            dtype: torch.dtype | None = None, variants=None):
    """Compile a LAUD model (or a single LaudBottleneck) into real sparse execution.

    Also a decorator: ``@laudtriton.compile`` or ``@laudtriton.compile(backend="cpu")`` on
    a model class or factory function compiles each model it returns. On a class the
    decorated name becomes a factory function (``isinstance`` against it, subclassing it,
    ``super(Name, self)`` in its body and pickling the models it builds no longer work):
    decorate a factory function to keep the class.

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
        dtype: compute dtype (default float32 on CPU, float16 on CUDA).
        variants: restrict the candidates to these variant names (``dense`` stands in
            where none of them supports a block); default: every registered variant.

    Returns:
        a ``CompiledModel`` (inference only) for a LaudResNet or a LaudBottleneck. A
        LaudResNet is compiled as it is built, with its own stem and head modules
        (``compiled.check_resnet`` says what may change). Any other module containing LAUD
        blocks comes back as an eval-mode copy running its own forward, in which each
        LaudResNet the example forward calls is replaced by its ``CompiledModel`` and each
        LAUD block it calls outside one (a LaudResNet's own blocks included, when your
        forward calls them and not the network) by its ``CompiledBlock``; what the example
        never reaches stays as it is, with a warning naming it. Such a copy has no
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
            that is not a floating-point torch dtype; a cache_dir that is not a path, is
            empty, or names a file or lies inside one (``tune.keys.check_dir``); a
            LaudResNet subclass that overrides forward, stem or head, or a stem the
            compiled model cannot run (``compiled.check_resnet``); a block whose modules
            the fold cannot express or whose maskers the compiled gates cannot read
            (``check_foldable``); a LAUD block in two places of a LaudResNet or inside
            another block (``check_block_places``); a model compiled already (a
            CompiledModel, and no LAUD block); a forward hook or pre-hook inside a LAUD
            network that the compiled model would not call, or one on its stem's pooling,
            or on a ``conv_linear`` channel masker in a network with layer-skipping blocks
            (``_check_hooks``); an example input holding NaN or inf, or that is not a real
            floating-point tensor with data (complex, integer, meta); ``variants`` of which
            no block of the model runs any; a LaudResNet that the user's forward calls on
            inputs of two sizes (``_inputs``); a blank $LAUDTRITON_CACHE_DIR or one naming
            a file (with cache_dir None and tune not "off"); a $LAUDTRITON_CACHE value
            other than 0/false/off/no and 1/true/on/yes (tune not "off",
            ``tune.cache.cache_enabled_from_env``); a model with a tensor on the meta
            device; a model whose own forward fails on the example input (its error
            named).
        RuntimeError: when every candidate variant fails on a block's example input.
    """
    options = dict(backend=backend, tune=tune, cache_dir=cache_dir, dispatch=dispatch,
                   dtype=dtype, variants=variants)
    if model is None or isinstance(model, type) or (
        callable(model) and not isinstance(model, nn.Module)
    ):
        _check_options(**options)  # now, not at the decorated factory's first call
        return _decorator(model, example_input, **options)
    # under torch.inference_mode() the folded weights would be inference tensors, whose
    # version counters (``ops.fold.Fingerprint``) cannot be read; under autocast the
    # example forward would capture block inputs of another dtype than the plan's
    with torch.inference_mode(False), contextlib.ExitStack() as stack:
        for dev in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
            stack.enter_context(no_autocast(dev))
        return _compile(model, example_input, **options)


def _bake_parametrizations(module: nn.Module) -> nn.Module:
    """``module`` (compile's own copy) with each parametrized tensor
    (``torch.nn.utils.parametrize``: ``parametrizations.weight_norm``, ...) replaced by
    the value it computes now, in place. The compiled model is a snapshot of those values
    anyway (the fold reads them once); kept, the parametrizations made it impossible to
    pickle or ``torch.save`` (torch serialises parametrized modules only through their
    state dict, which a compiled model refuses to load). Their load-state-dict pre-hooks
    go with them."""
    from torch.nn.utils import parametrize

    # not parametrize.remove_parametrizations: it deletes the property from the module's
    # generated class, which a deep copy shares with the original (whose parametrized
    # weight then no longer exists)
    with torch.no_grad():
        for m in list(module.modules()):
            if not parametrize.is_parametrized(m):
                continue
            values = {}
            for name, plist in m.parametrizations.items():
                # the tensor(s) parametrized (``original``, or ``original0``, ... for a
                # parametrization of several): held by the list itself, not by the
                # parametrization modules inside it (whose own parameters do not count)
                originals = list(plist.parameters(recurse=False))
                grad = any(t.requires_grad for t in originals)
                values[name] = (getattr(m, name).detach().clone(), grad, bool(originals))
            del m.parametrizations
            m.__class__ = m.__class__.__bases__[0]  # the class before parametrization
            # state-dict pre-hooks that map old checkpoints onto the parametrization's keys
            # (weight_norm's, a local function: not picklable) have nothing left to map
            m._load_state_dict_pre_hooks.clear()
            for name, (value, grad, was_parameter) in values.items():
                if was_parameter:
                    m.register_parameter(name, nn.Parameter(value, requires_grad=grad))
                else:
                    m.register_buffer(name, value)
    return module


def _check_options(backend: str, tune: str, cache_dir, dispatch: str, dtype, variants
                   ) -> tuple[str, tuple[str, ...] | None]:
    """The backend resolved and the variant names as a tuple, after checking every option
    of ``compile``.

    Raises:
        ValueError: naming the option that is not accepted.
    """
    if tune not in TUNE_MODES:
        raise ValueError(f"tune {tune!r} unknown; accepted: {', '.join(TUNE_MODES)}")
    if dispatch not in DISPATCH:
        raise ValueError(f"dispatch {dispatch!r} unknown; accepted: {', '.join(DISPATCH)}")
    backend = _resolve_backend(backend)
    if variants is not None:
        try:
            variants = (variants,) if isinstance(variants, str) else tuple(variants)
        except TypeError:
            raise ValueError(f"variants must be a variant name or a list of names, got "
                             f"{type(variants).__name__} {variants!r}") from None
        if not variants:
            raise ValueError("variants is empty; give variant names, or None for every "
                             "variant a block supports")
        for name in variants:
            if not isinstance(name, str):
                raise ValueError(f"variants: {name!r} is not a variant name")
            get_variant(name)  # raises on an unknown name
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype {dtype!r} unsupported; accepted: a floating-point torch "
                         "dtype (float32, float16, bfloat16, float64)")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise ValueError(f"cache_dir must be a path (str or os.PathLike) or None, got "
                         f"{type(cache_dir).__name__} {cache_dir!r}")
    refuse_bad_dir(cache_dir)  # whatever ``tune`` is
    return backend, variants


def _compile(model, example_input, *, backend, tune, cache_dir, dispatch, dtype, variants,
             nested: str | None = None):
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
    backend, variants = _check_options(backend, tune, cache_dir, dispatch, dtype, variants)
    # a CUDA device with its index (the example input's, else the current one): "cuda"
    # alone would put the model on whichever device is current at compile time
    device = (torch.device("cpu") if backend != "cuda"
              else example_input.device if isinstance(example_input, torch.Tensor)
              and example_input.is_cuda
              else torch.device("cuda", torch.cuda.current_device()))
    dtype = dtype or (torch.float16 if backend == "cuda" else torch.float32)
    meta = next((n for n, t in [*model.named_parameters(), *model.named_buffers()]
                 if t.is_meta), None)
    if meta is not None:
        raise ValueError(f"compile: the model's {meta} is on the meta device (no data); "
                         "load or initialise its weights first")
    if not any(isinstance(m, LaudBottleneck) for m in model.modules()):
        if any(isinstance(m, (CompiledModel, CompiledBlock)) for m in model.modules()):
            raise ValueError("compile: the model is compiled already (it holds a "
                             "CompiledModel or CompiledBlock and no LAUD block); compile "
                             "the model it came from (a CompiledModel's .source)")
        warnings.warn("laudtriton.compile: the model has no LAUD block; returning an "
                      f"eval-mode copy of it on {device} in {dtype}", stacklevel=3)
        return detached_copy(model).eval().to(device=device, dtype=dtype)
    if example_input is None:
        if not isinstance(model, LaudResNet) or model.config["input_size"] is None:
            raise ValueError("example_input is required for this model (a [B, C, H, W] tensor)")
        size = model.config["input_size"]  # drawn without touching the caller's RNG
        example_input = torch.randn(1, model.config["in_channels"], size, size,
                                    generator=torch.Generator().manual_seed(0))
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        raise ValueError("example_input must be a 4D tensor [B, C, H, W]")
    if not example_input.is_floating_point() or example_input.device.type == "meta":
        # cast to the compiled dtype it would lose its meaning (a complex one its
        # imaginary part), and the compiled model refuses such inputs anyway
        raise ValueError(f"example_input is {example_input.dtype} on "
                         f"{example_input.device.type}; give a real floating-point tensor "
                         "with data (it is cast to the compiled dtype)")
    if example_input.shape[0] < 1:
        raise ValueError(f"example_input has batch {example_input.shape[0]}; the plan "
                         "needs at least one sample")

    if not bool(torch.isfinite(example_input).all()):
        what = "example_input" if nested is None else (
            f"the input your forward gives {nested} on the example")
        raise ValueError(f"{what} holds NaN or inf; the plan is made on the masks the "
                         "maskers give for it: give a finite example")
    if isinstance(model, LaudResNet):
        check_resnet(model)
    if nested is None:  # every LAUD network in the module, before any forward runs
        check_block_places(model)
        nets = ([("", model)] if isinstance(model, (LaudResNet, LaudBottleneck))
                else _outermost(model, (LaudResNet, LaudBottleneck)))
        for name, net in nets:
            _check_hooks(net, name)
    # eval first: a parametrization may compute otherwise in training (spectral_norm's
    # power iteration), and the compiled model is the eval-mode network
    ref = _bake_parametrizations(detached_copy(model).eval()).to(device=device, dtype=dtype)
    x = example_input.to(device=device, dtype=dtype).contiguous(memory_format=CL)
    options = dict(backend=backend, tune=tune, cache_dir=cache_dir, dispatch=dispatch,
                   dtype=dtype, variants=variants)
    missed_nets = []
    if not isinstance(ref, (LaudResNet, LaudBottleneck)):
        # a LaudResNet inside another module becomes a CompiledModel there (the outer
        # forward stays); LAUD blocks outside any LaudResNet become CompiledBlocks below,
        # those of a LaudResNet whose forward is not called (a backbone whose blocks the
        # user's forward calls) included
        nets, missed_nets = _inputs(ref, x, list(_outermost(ref, LaudResNet)))
        for name, net, xin in nets:
            _set_submodule(ref, name, _compile(net, xin, **options, nested=name))
    cache = TuneCache(cache_dir, device=backend) if tune != "off" else None
    predictor = fitted_predictor(cache, backend) if tune == "cached" else None
    tables: dict[BlockSpec, DispatchTable] = {}
    blocks = []
    captured, missed = _block_inputs(ref, x)
    distinct: set[BlockSpec] = set()  # tuning progress on stderr: block i of n

    def say(text: str) -> None:
        print(f"laudtriton.compile: block {len(tables) + 1}/{len(distinct)}: {text}",
              file=sys.stderr, flush=True)
    specs = []
    for name, block, xin in captured:
        check_foldable(name, block)
        specs.append(BlockSpec.from_block(block, xin.shape, dtype))
        distinct.add(specs[-1])
    if nested is None and isinstance(ref, (LaudResNet, LaudBottleneck)):
        _check_variants(variants, specs, backend)  # before any tuning
    for (name, block, xin), spec in zip(captured, specs):
        fb = fold_block(block, dtype, device)
        with torch.no_grad():
            masks, _ = block.compute_masks(xin)
        if spec not in tables:  # equal specs are tuned once
            tables[spec] = _plan_block(spec, fb, xin.contiguous(memory_format=CL), masks,
                                       _candidates(spec, backend, variants), tune, cache,
                                       predictor, say)
        rate = float(dispatch_rate(spec, masks))
        blocks.append(CompiledBlock(name, spec, fb, tables[spec], dispatch, rate))
    if isinstance(ref, (LaudResNet, LaudBottleneck)):
        return CompiledModel(ref, blocks, x.shape, x.device, dtype, backend, tune)
    # a LaudResNet is reported once, not block by block, when none of its blocks ran
    unreached = [n for n in missed_nets
                 if not any(c[0].startswith(n + ".") for c in captured)]
    unreached += [n for n in missed if not any(n.startswith(u + ".") for u in unreached)]
    if unreached:
        warnings.warn(f"laudtriton.compile: the example forward never calls "
                      f"{', '.join(unreached)}; left uncompiled (a forward that takes "
                      "another branch on other inputs runs them as they are, dense with "
                      "masks)", stacklevel=3)
    out = _swap_blocks(ref, blocks)
    # a LAUD block in two places of the user's module: its first place was compiled, the
    # module's other attribute still holds the block itself
    shared = [n for n, m in out.named_modules(remove_duplicate=False)
              if isinstance(m, LaudBottleneck)
              and not any(n == u or n.startswith(u + ".") for u in unreached)]
    if shared:
        warnings.warn(f"laudtriton.compile: {', '.join(shared)} left uncompiled: a LAUD "
                      "block in two places of the module is compiled in its first place "
                      "only; the others run it as it is (dense with masks; give each place "
                      "its own block, copy.deepcopy, to compile it)", stacklevel=3)
    _check_variants(variants, [m.spec for m in out.modules() if isinstance(m, CompiledBlock)],
                    backend)
    return out


def _check_variants(variants, specs, backend: str) -> None:
    """Raise when ``variants`` is given and no block of ``specs`` runs any of them (each
    block falls back to dense where none of them runs it; when none runs anywhere, the
    request itself is wrong)."""
    if variants is None or not specs:
        return
    usable = {v.name for spec in set(specs) for v in _candidates(spec, backend)}
    if not usable & set(variants):
        raise ValueError(f"compile: variants {', '.join(variants)}: no block of this "
                         f"model runs any of them on {backend}; accepted here: "
                         f"{', '.join(sorted(usable))}")


def _swap_blocks(ref: nn.Module, blocks: list[CompiledBlock]) -> nn.Module:
    """Generic containers: replace each LAUD block by its CompiledBlock in place. Then
    each module of the user's that holds a compiled part refuses ``train(True)``, a change
    of dtype or device and ``load_state_dict`` before changing anything
    (``compiled.refuse_train``, ``refuse_apply``, ``refuse_load``, bound as the instance's
    methods; a shallow ``copy.copy`` of such a module shares those bindings with the
    original)."""
    for blk in blocks:
        _set_submodule(ref, blk.name, blk)
    compiled = (CompiledBlock, CompiledModel)
    todo = [ref]
    while todo:  # the user's modules, not those inside a compiled part
        mod = todo.pop()
        parts = [m for m in mod.modules() if isinstance(m, compiled)]
        if parts:
            p = parts[0]
            dtype, device = ((p.dtype, p.device) if isinstance(p, CompiledModel)
                             else (p.fb.w1.dtype, p.fb.w1.device))
            mod.train = functools.partial(refuse_train, mod)
            mod._apply = functools.partial(refuse_apply, mod, dtype, device)
            mod.load_state_dict = functools.partial(refuse_load, mod)
            todo += [c for c in mod.children() if not isinstance(c, compiled)]
    return ref.eval()


def _decorator(target, example_input, **options):
    def wrap(factory):
        if isinstance(factory, nn.Module):  # a model, not something that builds one
            raise ValueError(f"compile: as a decorator it takes a model class or factory "
                             f"function, got a {type(factory).__name__} instance; compile "
                             "a model with compile(model, example_input, ...)")
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

    if target is None:
        return wrap
    if not (inspect.isclass(target) or callable(target)):
        raise ValueError(f"compile: cannot decorate {target!r}")
    return wrap(target)
