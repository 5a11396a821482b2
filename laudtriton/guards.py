"""Guards of the compiled runtime: the lock a forward holds, what a compiled model or a
module holding compiled parts refuses (training, loading a state dict, another dtype or
device, tracing and export), autocast kept out, the test for forward hooks, and the
samples of a non-finite input, which come back as NaN."""

from __future__ import annotations

import contextlib
import copyreg
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

import torch
from torch import nn

from .ops.spec import DTYPES

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


# A module of the user's that compile returned with compiled parts inside refuses
# ``train(True)``, a change of dtype or device and ``load_state_dict`` before anything
# changes (``nn.Module``'s own methods change the modules listed before a compiled part,
# which only then raises: flags, half the tensors). ``guard`` gives it a subclass of its
# class that overrides those three (``guarded_class``; a subclass, not a mixin placed
# first, whose instance layout CPython would not let ``__class__`` assignment take), so
# copies, deep copies and pickles are guarded too: ``__reduce_ex__`` rebuilds the
# guarded class from the user's class, which a pickle names as always.

# An instance of a guarded class may also come from the class's own code, not from
# ``guard``: slicing an ``nn.Sequential`` or ``nn.ModuleList`` (``cm[:-1]``) builds
# ``type(self)(...)``. It holds no ``_laud_compiled_as``, so these methods read the
# compiled parts it holds (``compiled_as``) and act as the class's own where it holds
# none (a slice of the head; ``.cpu()`` on a slice raised AttributeError).

def _guarded_train(self, mode: bool = True):
    """mode True raises (``TRAIN_REFUSED``) where a compiled part is held; else the
    class's own ``train``."""
    if mode and compiled_as(self) is not None:
        raise RuntimeError(TRAIN_REFUSED)
    return super(type(self), self).train(mode)


def _guarded_apply(self, fn, recurse=True):
    """A change of dtype or device raises (``refuse_conversion``) before any tensor
    converts where a compiled part is held; else the class's own ``_apply``."""
    kept = compiled_as(self)
    if kept is not None:
        refuse_conversion(fn, *kept)
    return super(type(self), self)._apply(fn, recurse)


def _guarded_load(self, *args: Any, **kwargs: Any) -> Any:
    """Raises (``LOAD_REFUSED``) before any parameter is copied where a compiled part is
    held; else the class's own ``load_state_dict``."""
    if compiled_as(self) is not None:
        raise RuntimeError(LOAD_REFUSED)
    return super(type(self), self).load_state_dict(*args, **kwargs)


def compiled_as(module: nn.Module) -> tuple[torch.dtype, torch.device] | None:
    """The (dtype, device) of the compiled parts that ``module`` (a module of the user's)
    holds: those ``guard`` kept, else ``parts_compiled_as``."""
    kept = module.__dict__.get("_laud_compiled_as")
    return kept if kept is not None else parts_compiled_as(module)


def parts_compiled_as(module: nn.Module) -> tuple[torch.dtype, torch.device] | None:
    """The (dtype, device) of the first compiled part (CompiledModel or CompiledBlock)
    inside ``module``, module itself included; None when it holds none."""
    from .compiled import CompiledModel  # (both import this module)
    from .compiled_block import CompiledBlock

    for m in module.modules():
        if isinstance(m, CompiledModel):
            return m.dtype, m.device
        if isinstance(m, CompiledBlock):
            return m.fb.w1.dtype, m.fb.w1.device
    return None


def _guarded_reduce_ex(self, protocol):
    """The class's reduction, with object's own ``__newobj__`` form rebuilt from the
    user's class (``_guarded_new``): the guarded class itself is not importable."""
    cls = type(self)
    rv = super(cls, self).__reduce_ex__(protocol)
    if (isinstance(rv, tuple) and len(rv) >= 2 and rv[0] in _NEWOBJ and rv[1]
            and rv[1][0] is cls):
        return (_guarded_new, (rv[0], cls.__bases__[0], *rv[1][1:]), *rv[2:])
    return rv


_NEWOBJ = (copyreg.__newobj__, copyreg.__newobj_ex__)
_GUARDED: dict[type, type] = {}


def is_guarded(module: nn.Module) -> bool:
    """Whether ``module``'s class is a ``guarded_class``."""
    return _is_guarded_class(type(module))


def _is_guarded_class(cls: type) -> bool:
    return cls.__dict__.get("train") is _guarded_train


def guarded_class(cls: type) -> type:
    """A subclass of ``cls`` (named as ``cls``, made once per class) whose ``train``,
    ``_apply``, ``load_state_dict`` and ``__reduce_ex__`` guard its instances. Making it
    runs ``cls.__init_subclass__``, as any subclass would."""
    if _is_guarded_class(cls):
        return cls
    g = _GUARDED.get(cls)
    if g is None:
        g = _GUARDED[cls] = type(cls.__name__, (cls,), {
            "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__, "__slots__": (), "train": _guarded_train,
            "_apply": _guarded_apply, "load_state_dict": _guarded_load,
            "__reduce_ex__": _guarded_reduce_ex})
    return g


def _guarded_new(newobj, cls: type, *args: Any) -> nn.Module:
    """Unpickling and copying a guarded module: the user's class's object, guarded."""
    obj = newobj(cls, *args)
    obj.__class__ = guarded_class(cls)
    return obj


def guard(module: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Make ``module`` (the user's, holding compiled parts of ``dtype`` on ``device``)
    refuse training, loading and conversion: its class becomes ``guarded_class`` of its
    class (``isinstance`` still holds, and ``type(module).__name__`` is its class's)."""
    module._laud_compiled_as = (dtype, device)
    module.__class__ = guarded_class(type(module))


def refuse_train(module: nn.Module, mode: bool = True) -> nn.Module:
    """``module.train`` for a module of the user's that compile returned with compiled
    parts inside, as compile bound it on the instance until session 32 (pickles made
    then name it; since session 33 ``guard`` does this): mode True raises
    before any flag changes. Plain ``nn.Module.train`` sets the module's own flag and
    those of the children before the compiled one, which only then raises, and would
    leave a Dropout or BatchNorm of the user's in training mode. mode False is the
    class's own ``train``.

    Raises:
        RuntimeError: when mode is True.
    """
    if mode:
        raise RuntimeError(TRAIN_REFUSED)
    return type(module).train(module, False)


def refuse_apply(module: nn.Module, dtype: torch.dtype, device: torch.device,
                 fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
                 ) -> nn.Module:
    """``module._apply`` for a module of the user's that compile returned with compiled
    parts inside (bound by ``compile`` as ``train`` is, ``refuse_train``): a change of
    dtype or device raises before any tensor converts. The class's ``_apply`` would
    convert the modules listed before a compiled part, which only then raises, and leave
    the module half converted.

    Raises:
        RuntimeError: when ``fn`` would change the dtype or device (``refuse_conversion``).
    """
    refuse_conversion(fn, dtype, device)
    return type(module)._apply(module, fn, recurse)


def refuse_load(module: nn.Module, *args: Any, **kwargs: Any) -> NoReturn:
    """``module.load_state_dict`` for a module of the user's with compiled parts inside:
    raises before any parameter is copied (the class's method would load the modules
    before a compiled part, which only then raises).

    Raises:
        RuntimeError: always.
    """
    raise RuntimeError(LOAD_REFUSED)


def no_autocast(device_type: str) -> torch.autocast:
    """A context without autocast for ``device_type``: a compiled model computes in the
    dtype it was compiled for, its head and its maskers included (under autocast the
    copies of avgpool and fc would compute in another dtype than its blocks)."""
    return torch.autocast(device_type, enabled=False)


def is_compute_dtype(dtype: object) -> bool:
    """Whether ``dtype`` is a torch dtype a compiled model computes in (``ops.spec.DTYPES``;
    not ``is_floating_point``, which the float8 types are too). Here, not in ops.spec:
    a variant's timings are keyed to the ops sources it runs."""
    return isinstance(dtype, torch.dtype) and str(dtype).removeprefix("torch.") in DTYPES


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of ``e``'s message, at most ``limit`` characters ("" for none):
    how compile and the compiled models quote an error they wrap in their own."""
    return (str(e).strip().splitlines() or [""])[0][:limit]


def refuse_conversion(fn: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype,
                      device: torch.device) -> None:
    """Raise if ``fn`` (what ``nn.Module.to``, ``.double()``, ``.cuda()``... apply to every
    tensor) would change the dtype or device of a compiled model, or its tensors' values
    (``to_empty``): its folded weights, packed convolutions and plan are made for one
    dtype and device, from the weights it was compiled with.

    Raises:
        RuntimeError: naming the compiled and the asked dtype and device, or saying the
            values would change.
    """
    here = torch.arange(1, 9, dtype=dtype, device=device)  # exact in every float type
    try:
        probe = fn(here)
    except Exception as e:  # e.g. .cuda() in a CPU-only torch: the target is not known
        raise RuntimeError(
            f"a compiled model cannot take this conversion ({type(e).__name__}: "
            f"{first_line(e, 200)}); "
            f"it is compiled for {here.dtype} on {here.device}, and nothing was changed. "
            "Compile the model again for another dtype or device") from e
    try:
        if probe.dtype != here.dtype or probe.device != here.device:
            compilable = is_compute_dtype(probe.dtype) and probe.device.type in ("cpu", "cuda")
            advice = (f"Compile the model again with dtype={probe.dtype} (backend for the "
                      "device)" if compilable else
                      f"compile supports only {', '.join(DTYPES)} on cpu or cuda")
            raise RuntimeError(
                f"a compiled model cannot move to {probe.dtype} on {probe.device}: it is "
                f"compiled for {here.dtype} on {here.device}. {advice}")
        if not torch.equal(probe, torch.arange(1, 9, dtype=dtype, device=device)):
            raise RuntimeError(
                "a compiled model cannot take a conversion that changes its tensors' "
                "values (to_empty, say): its packed weights would no longer match them. "
                "Change the source model and compile it again")
    finally:  # memory a later probe's to_empty is given never holds these values
        with contextlib.suppress(Exception):
            probe.zero_()
            here.zero_()


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
    not refused: the forward runs outside it (``run_eagerly``).

    Raises:
        RuntimeError: naming ``who``.
    """
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    if torch.jit.is_tracing() or exporting() or _fx_tracing():
        raise tracing_refused(who)


_EAGER: dict[Callable, Callable] = {}


def run_eagerly(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) outside ``torch.compile``: a compiled model or block is one graph break,
    run as it is, and the backend sees only the user's code around it. Dynamo traced
    into the variants otherwise (their choices are Python decisions on each input's
    masks): LAUD-ResNet-50 with spatial masks at 64x64 gave 106 graphs and took a minute
    with the eager backend, and inductor failed lowering the packed row GEMM. fn is
    wrapped by ``torch._dynamo.disable`` (``torch.compiler.disable``) once torch._dynamo
    is loaded; before that no torch.compile can be running, and importing it would cost
    1.5 s, so fn is called plainly. The wrapper costs about 0.6 us a call."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is None:
        return fn(*args)
    eager = _EAGER.get(fn)
    if eager is None:
        eager = _EAGER[fn] = dynamo.disable(fn)
    return eager(*args)


def tracing_refused(who: str) -> RuntimeError:
    """The error ``refuse_tracing`` raises, and compiled modules'
    ``__prepare_scriptable__`` (``torch.jit.script`` calls it on every module it is given,
    submodules included, before it reads any code: without it, scripting failed inside
    torch on the forward's signature)."""
    return RuntimeError(f"{who} cannot be traced, exported or scripted (torch.jit.trace, "
                        "torch.export, torch.fx, torch.jit.script, torch.onnx.export): which "
                        "kernels run, on which pixels and channels, is decided on each "
                        "input's masks in Python, so a trace would fix one input's choices; "
                        "call it eagerly (torch.compile works, running it as it is)")


class RefusesTracing:
    """Mixin of the compiled modules (before ``nn.Module`` in their bases): scripting and
    TorchScript tracing are refused with ``tracing_refused``, naming ``_traced_name()``.

    - ``__prepare_scriptable__``: ``torch.jit.script`` calls it on every module it is given,
      before it reads any code;
    - ``_slow_forward``: what ``nn.Module.__call__`` runs instead of forward while torch.jit
      traces (``torch.jit.trace``, the TorchScript ``torch.onnx.export(..., dynamo=False)``),
      refused before the call binds its arguments (the ONNX exporter passes keyword-only
      defaults positionally, a TypeError that hid the reason).

    The forward itself calls ``refuse_tracing`` for the other tracers.
    """

    def _traced_name(self) -> str:
        raise NotImplementedError

    def __prepare_scriptable__(self) -> nn.Module:
        raise tracing_refused(self._traced_name())

    def _slow_forward(self, *args: Any, **kwargs: Any) -> Any:
        raise tracing_refused(self._traced_name())


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
    sync. A float16 input is summed in float32: its own sum overflowed 65504 on
    unnormalised images (values ~255 over 3x224x224), and the per-sample test that then
    ran on every input took 1230-1270 us at 3x224x224, batch 8, where this sum takes 91 us
    (2-core x86). bfloat16 has float32's range, and its own sum is faster (44 vs 105 us)."""
    if x.device.type == "cpu":
        total = x.sum(dtype=torch.float32) if x.dtype == torch.float16 else x.sum()
        if bool(torch.isfinite(total)):
            return None
    return ~torch.isfinite(x).flatten(1).all(1)


def strided_refusal(who: str, t: torch.Tensor) -> str:
    """The message refusing a tensor of another layout than strided (mkldnn, sparse):
    the engine's ops take dense strided tensors, and such an input failed inside torch
    ('unsupported memory format option ChannelsLast')."""
    layout = str(t.layout).replace("torch.", "").lstrip("_")  # torch._mkldnn: "mkldnn"
    return f"{who} is a {layout} tensor; give a strided (dense) one (.to_dense())"


def mark_nan(out: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """out with the samples ``bad`` ([B] bool, ``nonfinite_samples``) set to NaN, in
    place."""
    return out.masked_fill_(bad.view(-1, *(1,) * (out.dim() - 1)), float("nan"))
