import math

import pytest
import torch

from laudtriton.kernelchecks import poisoned


@pytest.fixture
def nan_empty():
    """Every float torch.empty and torch.empty_like (the launchers' and the torch
    variants' outputs) starts as NaN, so an element a kernel fails to write fails the
    comparison."""
    with poisoned():
        yield


@pytest.fixture
def dot_precisions(monkeypatch):
    """The input precision of every tl.dot the interpreter runs ("IEEE", "TF32", ...): it
    multiplies in numpy whatever the precision, so the value tests cannot see a lost
    ``input_precision="ieee"`` that a GPU runs in TF32 (~3e-4 of max|ref|, over the fp32
    1e-4 contract)."""
    from triton.runtime import interpreter

    seen = []
    real = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, *rest):
        seen.append(input_precision.name)
        return real(self, a, b, d, input_precision, *rest)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)
    return seen


@pytest.fixture
def guarded_empty(monkeypatch):
    """Every float torch.empty (the launchers' outputs) is the head of a NaN buffer with
    256 more NaN elements after it, all NaN like ``nan_empty``. Returns those tails: a
    kernel that stores past its output's end (a dropped store mask) changes one, where the
    interpreter wrote the neighbouring heap silently (or aborted much later)."""
    real = torch.empty
    tails = []

    def empty(*size, dtype=None, device=None, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
        dtype = dtype or torch.get_default_dtype()
        if kwargs:  # a launcher that passes more (a memory format) must not lose the guard
            raise TypeError(f"guarded_empty: torch.empty{size} with {sorted(kwargs)}")
        if not dtype.is_floating_point:
            return real(*size, dtype=dtype, device=device)
        n = math.prod(shape)
        buf = torch.full((n + 256,), float("nan"), dtype=dtype, device=device)
        tails.append(buf[n:])
        return buf[:n].view(shape)

    monkeypatch.setattr(torch, "empty", empty)
    return tails


@pytest.fixture
def launched(monkeypatch):
    """A function that replaces the ``launch`` of the kernel modules it is given by a
    recorder (nothing runs) and returns {module name: the set of its launches' (BLOCK_*
    by name, num_stages, num_warps) values}, filled as the launchers are called."""
    seen: dict[str, set[tuple]] = {}

    def patch(*mods):
        for mod in mods:
            def record(kernel, grid, like, who, *args, _name=mod.__name__, **kw):
                seen.setdefault(_name, set()).add(tuple(
                    v for k, v in sorted(kw.items()) if k.startswith(("BLOCK_", "num_"))))
            monkeypatch.setattr(mod, "launch", record)
        return seen
    return patch
