import dataclasses
import math
import re

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


class Launches(dict):
    """{module name: the set of its kernel launches' keys}, filled by the recorder that
    ``patch`` puts in place of the ``launch`` of kernel modules (nothing runs). A key is
    the launch's tiles and options as sorted (name, value) pairs: BLOCK_*, num_stages,
    num_warps; ``of_config`` and ``aot_defaults`` build the same from a config and from
    the AOT specs."""

    def __init__(self, monkeypatch):
        super().__init__()
        self._monkeypatch = monkeypatch

    def patch(self, *mods) -> "Launches":
        for mod in mods:
            def record(kernel, grid, like, who, *args, _name=mod.__name__, **kw):
                self.setdefault(_name, set()).add(self.key(kw))
            self._monkeypatch.setattr(mod, "launch", record)
        return self

    @staticmethod
    def key(values: dict) -> tuple:
        return tuple(sorted((k, v) for k, v in values.items()
                            if k.startswith(("BLOCK_", "num_"))))

    @classmethod
    def of_config(cls, cfg) -> tuple:
        """The key of a launch on ``cfg`` (a kernel config dataclass: block_m -> BLOCK_M)."""
        return cls.key({k.upper() if k.startswith("block_") else k: v
                        for k, v in dataclasses.asdict(cfg).items()})

    @classmethod
    def aot_defaults(cls, specs, dtype_name: str) -> set:
        """The keys of the AOT specs marked default in ``dtype_name`` ("fp32", ...): the
        configs the AOT tests check for spills."""
        return {cls.key(s.constexprs | {"num_stages": s.num_stages, "num_warps": s.num_warps})
                for s in specs if s.default and dtype_name in re.split(r"[\[\],_]", s.name)}


@pytest.fixture
def launched(monkeypatch):
    """A ``Launches``: ``launched.patch(module, ...)`` records their launches."""
    return Launches(monkeypatch)


@pytest.fixture
def both_case():
    """A calibrated 'both' block's case: (folded block, channels_last x, its masks, the
    reference output), both masks partly on; for the Triton variants that run one kind
    of mask and must refuse the other."""
    from laudtriton.nn import calibrate_block
    from laudtriton.ops import fold_block
    from laudtriton.testing import make_block

    block = make_block(16, 4, 1, mode="both", granularity=2, channel_granularity=2)
    x = torch.randn(2, 16, 6, 6)
    calibrate_block(block, x, 0.5)
    with torch.no_grad():
        ref = block(x)
        masks, _ = block.compute_masks(x)
    assert 0 < masks.channel.mean().item() < 1 and 0 < masks.grid.mean().item() < 1
    return fold_block(block), x.contiguous(memory_format=torch.channels_last), masks, ref
