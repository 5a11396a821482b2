"""Compile's copy of the user's module: the parametrizations baked into plain tensors,
the compiled parts put in place of what they replace (each module holding one then
guarded, ``guards.guard``), each place of a shared LAUD block given its own block object,
and the parts its forward no longer calls."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .capture import PACKAGE, outermost_modules, stacklevel_outside
from .compile_checks import check_variants
from .compiled import CompiledModel
from .compiled_block import CompiledBlock
from .guards import first_line, guard, parts_compiled_as
from .nn.block import LaudBottleneck


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` inside ``model`` (replacing what is there)."""
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def bake_parametrizations(module: nn.Module) -> nn.Module:
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


def module_places(module: nn.Module, kinds: type | tuple[type, ...]
                  ) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """{id: [(name, parent, attribute)]}: every place (attribute) of each module of type
    ``kinds`` inside ``module`` (not module itself), one object held by several places
    listed once with all of them, in ``outermost_modules``' order. Not looking inside
    those modules or inside what compile built; one parent module reached by two paths
    is walked once (its attribute is one place)."""
    places: dict[int, list[tuple[str, nn.Module, str]]] = {}
    seen: set[int] = set()

    def walk(parent: nn.Module, prefix: str) -> None:
        if id(parent) in seen:
            return
        seen.add(id(parent))
        for attr, child in parent._modules.items():
            name = f"{prefix}.{attr}" if prefix else attr
            if isinstance(child, kinds):
                places.setdefault(id(child), []).append((name, parent, attr))
            elif child is not None and not isinstance(child, (CompiledBlock, CompiledModel)):
                walk(child, name)
    walk(module, "")
    return places


def separate_places(module: nn.Module) -> dict[str, str]:
    """Give each place of a LAUD block that ``module`` (compile's own copy) holds in
    several places (attributes of one parent or of several) its own block object, in
    place: a copy of the block sharing its submodules, parameters and buffers (weights
    stay shared; the block's own settings and hook tables are its own). The example
    forward then tells the places apart (a capture hook sits on one object, and every
    call of a shared object reached the hooks of all its places), so each is planned for
    the input it is called with. Blocks inside compiled parts are not looked at; one
    parent module reached by two paths is one place (its attribute is one).

    Returns:
        {name of each later place: name of its block's first place}, places named by
        their first path (``outermost_modules``' order).
    """
    first = {}
    for (name0, parent0, attr0), *later in module_places(module, LaudBottleneck).values():
        block = parent0._modules[attr0]
        for name, parent, attr in later:
            setattr(parent, attr, _place_copy(block))
            first[name] = name0
    return first


def _place_copy(block: nn.Module) -> nn.Module:
    """A copy of ``block`` whose submodules, parameters and buffers are block's own."""
    keep = {id(v): v for table in (block._modules, block._parameters, block._buffers)
            for v in table.values() if v is not None}
    return copy.deepcopy(block, keep)


def uncalled_parts(module: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """(name, part) of the compiled parts (CompiledModels and CompiledBlocks, outermost)
    of ``module``, the user's module with its parts in place, that its forward on ``x``
    does not call: one forward, no_grad, on a copy of x and a fork of the random number
    generators (x and the caller's draws stay as they were), read from each part's
    record of its last call (``CompiledBlock._last``), which is cleared before and
    after: compile's own forwards leave no ``last_stats``.

    Raises:
        ValueError: if that forward fails (the uncompiled one ran on ``x``).
    """
    parts = dict(outermost_modules(module, (CompiledModel, CompiledBlock)))
    blocks = {name: [m] if isinstance(m, CompiledBlock) else list(m.blocks)
              for name, m in parts.items()}

    def clear() -> None:
        for bs in blocks.values():
            for b in bs:
                b._last = None
    clear()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            module(x.clone())  # a forward may change its input in place
    except Exception as e:
        raise ValueError(f"compile: the compiled module's forward fails on the example "
                         f"input ({type(e).__name__}: {first_line(e)}), where the uncompiled "
                         "one ran") from e
    else:
        return [(name, parts[name]) for name, bs in blocks.items()
                if all(b._last is None for b in bs)]
    finally:
        clear()


def swap_blocks(ref: nn.Module, blocks: list[CompiledBlock]) -> nn.Module:
    """Generic containers: replace each LAUD block by its CompiledBlock in place. Then
    each module of the user's that holds a compiled part refuses ``train(True)``, a change
    of dtype or device and ``load_state_dict`` before changing anything (``guards.guard``:
    its class becomes a subclass that refuses them; copies and pickles keep it)."""
    for blk in blocks:
        set_submodule(ref, blk.name, blk)
    compiled = (CompiledBlock, CompiledModel)
    todo = [ref]
    while todo:  # the user's modules, not those inside a compiled part
        mod = todo.pop()
        kept = parts_compiled_as(mod)
        if kept is not None:
            guard(mod, *kept)
            todo += [c for c in mod.children() if not isinstance(c, compiled)]
    return ref.eval()


def compiled_module(ref: nn.Module, blocks: list[CompiledBlock], captured: list[str],
                    missed: list[str], missed_nets: list[str], x: torch.Tensor,
                    variants: tuple[str, ...] | None, backend: str) -> nn.Module:
    """``compile``'s result for a module of the user's: ``ref`` (its copy) with its LAUD
    blocks replaced by ``blocks``, its LaudResNets compiled already, warning about the
    parts the example forward did not reach (``captured``: the names of the blocks it
    called; ``missed``, ``missed_nets``: those it did not) and compiled parts its forward
    no longer calls; ``variants`` checked over all its blocks.
    """
    # a LaudResNet is reported once, not block by block, when none of its blocks ran
    unreached = [n for n in missed_nets
                 if not any(c.startswith(n + ".") for c in captured)]
    unreached += [n for n in missed if not any(n.startswith(u + ".") for u in unreached)]
    if unreached:
        warnings.warn(f"laudtriton.compile: the example forward never calls "
                      f"{', '.join(unreached)}; left uncompiled (a forward that takes "
                      "another branch on other inputs runs them as they are, dense with "
                      "masks)", stacklevel=stacklevel_outside(PACKAGE))
    out = swap_blocks(ref, blocks)
    check_variants(variants, [m.spec for m in out.modules() if isinstance(m, CompiledBlock)],
                   backend)
    uncalled = [n for n, _ in uncalled_parts(out, x)]
    if uncalled:
        warnings.warn(f"laudtriton.compile: the compiled module's forward did not call "
                      f"{', '.join(uncalled)} on the example input, which its uncompiled "
                      "forward reached. If it gets there through something compile does "
                      "not replace (a bound method kept in an attribute, say), it runs the "
                      "uncompiled copy, dense with masks: call the submodule itself in "
                      "forward (self.net(x)). A forward that branches on randomness or "
                      "state may just have taken another path",
                      stacklevel=stacklevel_outside(PACKAGE))
    return out
