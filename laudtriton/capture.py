"""The example forward ``laudtriton.compile`` runs: the LAUD networks and blocks inside a
model, and the input the forward calls each of them with."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .compiled import CompiledModel
from .compiled_block import CompiledBlock
from .guards import first_line
from .nn.block import LaudBottleneck
from .nn.resnet import LaudResNet


def outermost_modules(model: nn.Module, kinds: type | tuple[type, ...], prefix: str = ""
                      ) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) of the modules of type ``kinds`` inside ``model`` (not
    model itself), not looking inside them or inside what compile already built."""
    for name, child in model.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, kinds):
            yield full, child
        elif not isinstance(child, (CompiledBlock, CompiledModel)):
            yield from outermost_modules(child, kinds, full)


def capture_inputs(model: nn.Module, x: torch.Tensor, named: list,
                   replaced: Sequence[str] = ()) -> tuple[list, list[str]]:
    """Run ``model`` on a copy of x (no grad; x stays as it is, whatever the forward
    does to its input); (captured, missed): (name, module, input) of every
    module in ``named`` [(name, module)] in the order they run (first call each; a copy
    of the input as it was at that call, whatever the forward writes into it later), and
    the names of those the forward never called. The input is the first positional argument,
    else the keyword argument ``x`` (the parameter of LaudResNet.forward and
    LaudBottleneck.forward). replaced: the names of the LaudResNets of ``model`` that
    compile has replaced by their CompiledModels already (a forward failing now fails
    on them: one reading ``net.config`` or ``net.layer1``, which a CompiledModel lacks).

    Raises:
        ValueError: if a module of ``named`` is called without a tensor input, or a
            LaudResNet on inputs of two sizes (its CompiledModel runs one), or if the
            forward fails (naming its error, and ``replaced`` where there are some).

    Warns (UserWarning) for a LAUD block called at several map sizes: its CompiledBlock is
    planned for the first (at the others it runs the variant chosen there, or ``dense``
    where that variant does not run the size: ``CompiledBlock._fit``)."""
    captured, seen, handles = [], {}, []
    sizes: dict[str, list[tuple[int, ...]]] = {}  # the map sizes each block is called at

    def hook(m, args, kwargs, name):
        xin = args[0] if args else kwargs.get("x")
        if name in seen:
            first = seen[name]
            if (isinstance(m, LaudBottleneck) and isinstance(xin, torch.Tensor)
                    and tuple(xin.shape[2:]) not in sizes[name]):
                sizes[name].append(tuple(xin.shape[2:]))
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
        sizes[name] = [tuple(xin.shape[2:])]
        # a copy: the forward may write the tensor in place after the call (an inplace
        # ReLU on it), and compile plans on the input as the module was called with it
        captured.append((name, m, xin.detach().clone()))
    for name, mod in named:
        handles.append(mod.register_forward_pre_hook(
            lambda m, args, kwargs, name=name: hook(m, args, kwargs, name), with_kwargs=True))
    try:
        # the caller's random numbers stay as they were, as compile's check forward
        # leaves them (a forward may draw some: noise, a random crop); x too, on a copy
        # (a forward may change its input in place: ``x /= 255``)
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            model(x.clone())
    except ValueError as e:  # ours (the hooks above), or the model's own refusal
        if not str(e).startswith("compile:"):
            name_example_input(e)
        raise
    except Exception as e:  # the model's forward fails on its own: it cannot be compiled
        if replaced:  # the user's forward ran before they were: it fails on them
            raise ValueError(
                f"compile: the module's forward fails on the example input once a "
                f"CompiledModel is in place of {', '.join(replaced)} ({type(e).__name__}: "
                f"{first_line(e)}), where it ran on the uncompiled network; a "
                "CompiledModel runs the network's forward and holds its head (avgpool, "
                "fc) but not its other attributes (config, conv1, layer1...): read those "
                "from the network before compiling, or call only the network in forward"
            ) from e
        raise ValueError(f"compile: the model's own forward fails on the example input "
                         f"({type(e).__name__}: {first_line(e)}); compile runs it first, to find "
                         "its blocks' inputs, on the example in channels_last memory format "
                         "(the layout compiled blocks take and return: where a .view() of "
                         "a 4D map fails on it, use .reshape())") from e
    finally:
        for h in handles:
            h.remove()
    for name, hws in sizes.items():
        if len(hws) > 1:
            shown = [f"{h}x{w}" for h, w in hws]
            warnings.warn(
                f"laudtriton.compile: {name} is called at map sizes "
                f"{', '.join(shown[:-1])} and {shown[-1]} in one forward; its compiled "
                f"block is planned for the first ({shown[0]}) and runs that plan at the "
                "others (dense where the variant chosen does not run the size): call a "
                "block of its own at each size (copy.deepcopy) to plan each",
                stacklevel=stacklevel_outside(PACKAGE))
    return captured, [name for name, _ in named if name not in seen]


def stacklevel_outside(prefix: str) -> int:
    """The ``stacklevel`` that makes a warning raised in the function calling this one
    point at the first frame whose file does not start with ``prefix``: this package's
    folder (``PACKAGE``, the user's call of compile), or one module's file (compile's
    warnings, reached through ``compile`` alone or also through a decorated factory)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(prefix):
        frame, level = frame.f_back, level + 1
    return level


PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


REFUSES = "compile: the model refuses the example input"


def name_example_input(e: ValueError) -> None:
    """Say in ``e`` (the model's own ValueError on the example input) where it came from:
    its message gets a "compile: the model refuses the example input: " prefix where it
    is one string shown as it is, else a note (Python >= 3.11); its class, attributes
    and traceback stay."""
    if (type(e).__str__ is BaseException.__str__ and len(e.args) == 1
            and isinstance(e.args[0], str) and e.args[0]):
        e.args = (f"{REFUSES}: {e.args[0]}",)
    elif hasattr(e, "add_note"):
        e.add_note(REFUSES)


def block_inputs(model: nn.Module, x: torch.Tensor, replaced: Sequence[str] = ()
                 ) -> tuple[list, list[str]]:
    """Run the reference model in eval: ``capture_inputs`` of every LAUD block outside what
    compile built (the blocks of a LaudResNet a user's forward calls one by one
    included), each block object once, by its first name (one reached through a module
    held in two places: its one attribute is one place); replaced: the LaudResNets
    compile replaced already (``capture_inputs``).

    Raises:
        ValueError: as ``capture_inputs``.
    """
    if isinstance(model, LaudBottleneck):
        return capture_inputs(model, x, [("block", model)])
    firsts: dict[int, tuple[str, nn.Module]] = {}
    for name, block in outermost_modules(model, LaudBottleneck):
        firsts.setdefault(id(block), (name, block))
    return capture_inputs(model, x, list(firsts.values()), replaced)
