"""What ``laudtriton.compile`` checks before it plans anything: its options and example
input, the places of the LAUD blocks in a model, the forward hooks a compiled model would
drop, and that the tensors it computes with are finite (that each block's modules and
maskers are what the fold and the compiled gates compute: ``block_checks``)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .guards import is_compute_dtype, strided_refusal
from .nn.block import MODES, LaudBottleneck
from .nn.maskers import MaskerChannelMLP
from .nn.resnet import LaudResNet
from .ops import BlockSpec, get_variant
from .ops.spec import DTYPES
from .planning import TUNE_MODES, candidate_variants
from .tune.keys import refuse_bad_dir
from .tune.options import variant_names

BACKENDS = ("auto", "cpu", "cuda")
DISPATCH = ("dynamic", "static")


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} unknown; accepted: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "cuda" and not torch.cuda.is_available():
        raise ValueError("backend 'cuda' asked for, but torch sees no CUDA device")
    return backend


def _folded_hook(hook) -> bool:
    """A pre-hook that only recomputes its module's weight from other tensors (pruning,
    ``weight_norm``, ``spectral_norm``): the example forward runs it, and the fold reads
    the weight it leaves (a snapshot, as every folded weight is)."""
    from torch.nn.utils import prune
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    return isinstance(hook, (prune.BasePruningMethod, WeightNorm, SpectralNorm))


def check_hooks(net: nn.Module, prefix: str = "") -> None:
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


def check_not_dynamo_wrapped(model: nn.Module) -> None:
    """Raise if a module of ``model`` holding LAUD blocks is ``torch.compile``'s wrapper
    (``OptimizedModule``): it runs a callable bound to the module it wrapped, so the
    compiled copy would still run the uncompiled network, in silence.

    Raises:
        ValueError: naming the wrapper and what to compile instead.
    """
    dynamo = sys.modules.get("torch._dynamo.eval_frame")  # never imported: no wrapper
    wrapper = getattr(dynamo, "OptimizedModule", None)
    if wrapper is None:
        return
    for name, m in model.named_modules():
        if isinstance(m, wrapper) and any(isinstance(b, LaudBottleneck) for b in m.modules()):
            where = "the model" if not name else name
            inner = "model._orig_mod" if not name else f"{name}._orig_mod"
            raise ValueError(
                f"compile: {where} is torch.compile's wrapper (OptimizedModule), which runs "
                "the module it wrapped and not what laudtriton.compile puts in its place; "
                f"compile the module inside ({inner}) first, then torch.compile the result "
                "if you like (it runs a compiled model as it is)")


def check_block_places(model: nn.Module) -> None:
    """Raise unless every LAUD block of a LaudResNet in ``model`` sits in one place of
    it, and no LAUD block inside another: compile finds blocks by place (each place
    becomes a compiled block), and ``LaudResNet.blocks()``, which the reference's forward
    runs, lists a shared block once and a nested one beside its parent, so the two would
    run other blocks. (A whole LaudResNet in two places of a module becomes one
    CompiledModel, in both. A LAUD block in two places of a module outside any
    LaudResNet is compiled in each, planned for that place's input:
    ``module_copy.separate_places``.)

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


def check_options(backend: str, tune: str, cache_dir: str | os.PathLike[str] | None,
                  dispatch: str, dtype: torch.dtype | None,
                  variants: str | Iterable[str] | None, progress: bool = True
                  ) -> tuple[str, tuple[str, ...] | None]:
    """The backend resolved and the variant names as a tuple, after checking every option
    of ``compile``.

    Raises:
        ValueError: naming the option that is not accepted.
    """
    if not isinstance(progress, bool):  # a string "False" would print
        raise ValueError(f"progress must be True or False, got {progress!r}")
    if tune not in TUNE_MODES:
        raise ValueError(f"tune {tune!r} unknown; accepted: {', '.join(TUNE_MODES)}")
    if dispatch not in DISPATCH:
        raise ValueError(f"dispatch {dispatch!r} unknown; accepted: {', '.join(DISPATCH)}")
    backend = _resolve_backend(backend)
    if variants is not None:  # a comma list too, as sweep and the CLI take it
        variants = variant_names(variants, "variants",
                                 "a variant name, a comma list or a list of names")
        if not variants:
            raise ValueError("variants is empty; give variant names, or None for every "
                             "variant a block supports")
        for name in variants:
            get_variant(name)  # raises on an unknown name
    if dtype is not None and not is_compute_dtype(dtype):
        raise ValueError(f"dtype {dtype!r} unsupported; accepted: a floating-point torch "
                         f"dtype ({', '.join(DTYPES)})")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise ValueError(f"cache_dir must be a path (str or os.PathLike) or None, got "
                         f"{type(cache_dir).__name__} {cache_dir!r}")
    refuse_bad_dir(cache_dir)  # whatever ``tune`` is
    return backend, variants


def check_example_input(model: nn.Module, example_input: object,
                        nested: str | None, dtype: torch.dtype | None = None
                        ) -> torch.Tensor:
    """``compile``'s example input: the one given, or, for a LaudResNet built with an
    input size and given none, a seeded random image of that size, with as many
    channels as its stem convolution takes (``conv1`` may have been replaced since the
    network was built). nested: the LaudResNet's name inside the user's module (named in
    the NaN message), or None. dtype: the compiled dtype, where the example must stay
    finite once cast to it (1e5 is inf in float16), or None.

    Raises:
        ValueError: no example where one is needed; not a strided 4D real floating-point
            tensor with data; an empty batch; NaN or inf in it, or once cast to dtype.
    """
    if example_input is None:
        if not isinstance(model, LaudResNet) or model.config["input_size"] is None:
            raise ValueError("example_input is required for this model (a [B, C, H, W] tensor)")
        size = model.config["input_size"]  # drawn without touching the caller's RNG
        channels = getattr(model.conv1, "in_channels", model.config["in_channels"])
        example_input = torch.randn(1, channels, size, size,
                                    generator=torch.Generator().manual_seed(0))
    return check_example_tensor(example_input, nested, dtype)


def check_example_tensor(example_input: object, nested: str | None = None,
                         dtype: torch.dtype | None = None) -> torch.Tensor:
    """``check_example_input``'s checks of a given example that need no model (so the
    decorator form makes them at once): a strided 4D real floating-point tensor with data
    and a sample, finite, and finite once cast to ``dtype`` where given. nested: as
    ``check_example_input`` takes it.

    Raises:
        ValueError: naming what is wrong with the example.
    """
    if isinstance(example_input, torch.Tensor) and example_input.layout != torch.strided:
        raise ValueError(strided_refusal("example_input", example_input))
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
    if dtype is not None and not bool(torch.isfinite(example_input.to(dtype)).all()):
        what = "example_input" if nested is None else (
            f"the input your forward gives {nested} on the example")
        raise ValueError(f"{what} overflows {dtype} (NaN or inf once cast to the compiled "
                         "dtype); the plan is made on the masks the maskers give for it: "
                         "give an example finite in that dtype (scale it down)")
    return example_input


def check_variants(variants: tuple[str, ...] | None, specs: Sequence[BlockSpec],
                   backend: str) -> None:
    """Raise when ``variants`` (as ``check_options`` returns them) is given and no block
    of ``specs`` runs any of them on ``backend`` (each block falls back to dense where
    none of them runs it; when none runs anywhere, the request itself is wrong).

    Raises:
        ValueError: naming the variants and those the blocks accept here.
    """
    if variants is None or not specs:
        return
    usable = {v.name for spec in set(specs) for v in candidate_variants(spec, backend)}
    if not usable & set(variants):
        raise ValueError(f"compile: variants {', '.join(variants)}: no block of this "
                         f"model runs any of them on {backend}; accepted here: "
                         f"{', '.join(sorted(usable))}")


def check_maskers_match_mode(name: str, block: LaudBottleneck) -> None:
    """Raise unless ``block`` (named ``name``) holds the maskers its ``dyn_mode`` reads and
    no channel masker that mode does not read: a masker set to None after the block was
    built (spatial, layer and both read ``masker_spatial``, channel ``masker_channel``)
    failed inside the planner with an AttributeError, and a channel masker given to a
    spatial or layer block, which the reference applies (``compute_masks`` runs every
    masker the block holds), was left out of the compiled block's plan: its output
    differed from the reference's, in silence. (A ``both`` block without its channel
    masker runs its spatial mask alone, as the reference does.)

    Raises:
        ValueError: naming the block, the masker and the mode; or the block's
            ``dyn_mode`` where it is none of ``nn.block.MODES`` (set after the block was
            built: the reference runs such a block as a spatial one).
    """
    mode = block.dyn_mode
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"compile: {name}.dyn_mode {mode!r} unknown; accepted: "
                         f"{', '.join(MODES)}")
    needed = {"masker_spatial": mode in ("spatial", "layer", "both"),
              "masker_channel": mode == "channel"}
    for attr, needs in needed.items():
        if needs and getattr(block, attr, None) is None:
            raise ValueError(
                f"compile: {name}.{attr} is None, but the block's dyn_mode {mode!r} reads "
                "it; give the block its masker back, or build the block with the mode of "
                "the maskers it has")
    if mode in ("spatial", "layer") and getattr(block, "masker_channel", None) is not None:
        raise ValueError(
            f"compile: {name}.masker_channel is set, but the block's dyn_mode {mode!r} has "
            "no channel mask: the block applies it, a compiled block of that mode would "
            "not. Remove it, or build the block with dyn_mode 'both' (spatial and "
            "channel masks)")


def check_finite(module: nn.Module, prefix: str = "") -> None:
    """Raise a ValueError naming the first floating-point parameter or buffer of
    ``module`` that holds NaN or inf. The engine's fused ReLUs turn NaN into 0, so a NaN
    weight (a corrupted checkpoint) gave finite logits where the reference's are NaN, and
    an infinite masker bias a wrong decision (the gates compare logits by their
    difference, inf - inf)."""
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"compile: {prefix}{name} holds NaN or inf (in {t.dtype}); a "
                             "compiled model refuses non-finite weights (its fused ReLUs "
                             "turn NaN into 0 where the model's outputs are NaN)")


def check_folded(what: str, tensors: Iterable[torch.Tensor | None]) -> None:
    """Raise a ValueError unless the folded ``tensors`` (weights with BatchNorm folded in)
    are finite: BN statistics of finite values may still fold to inf or NaN (running_var
    + eps <= 0), where the reference computes NaN. what: "<name>: its BatchNorm layers
    fold" or "the stem's BatchNorm folds", for the message."""
    if any(t is not None and not bool(torch.isfinite(t).all()) for t in tensors):
        raise ValueError(f"compile: {what} to NaN or inf (running_var + eps <= 0?); the "
                         "model computes NaN there")
