"""README claims, as a new user would meet them, pinned where the text was corrected:
when ``calibrate_rates`` warns about tied masker logits, and when ``last_stats`` is
recorded around ``torch.jit.trace``, and when a compiled part inside a module of yours is
freed. CPU only, small LAUD-ResNet-50s at 32x32 and 64x64."""

from __future__ import annotations

import copy
import gc
import warnings
import weakref

import pytest
import torch

import laudtriton
from laudtriton.nn import calibrate_rates, laud_resnet50


def _tie_warnings(model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """The tie warnings calibrate_rates gives on x at rate 0.5."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrate_rates(model, x, 0.5)
    return [str(w.message) for w in caught if "logits tie" in str(w.message)]


def test_calibrate_warns_where_ties_keep_a_gate_from_its_count():
    """One image repeated twice: a layer gate cannot put 1 of its 2 samples on."""
    model = laud_resnet50(mode="layer").eval()
    x = torch.randn(1, 3, 32, 32).repeat(2, 1, 1, 1)
    assert _tie_warnings(model, x)


def test_calibrate_silent_where_repeated_cells_still_reach_the_count():
    """One image repeated twice: spatial masks of an even cell count reach rate 0.5 in
    pairs of tied cells, so calibrate_rates does not warn (README: "not always")."""
    model = laud_resnet50(mode="spatial").eval()
    x = torch.randn(1, 3, 64, 64).repeat(2, 1, 1, 1)
    assert _tie_warnings(model, x) == []


@pytest.mark.filterwarnings("ignore")
def test_last_stats_not_recorded_by_tracing_but_by_check_trace():
    model = laud_resnet50(mode="spatial").eval()
    x = torch.randn(1, 3, 32, 32)
    model.last_stats = None
    torch.jit.trace(model, x, check_trace=False)
    assert model.last_stats is None
    torch.jit.trace(model, x)  # check_trace=True: an eager run records them
    assert model.last_stats is not None


def _freed(module: torch.nn.Module, inp: torch.Tensor) -> tuple[bool, bool]:
    """Compile module on inp, run it, drop it with the garbage collector off: whether its
    first compiled block's folded w1 was freed then, and after ``gc.collect()``."""
    compiled = laudtriton.compile(copy.deepcopy(module), inp, tune="off", progress=False)
    compiled(inp)
    block = next(m for m in compiled.modules() if type(m).__name__ == "CompiledBlock")
    w1 = weakref.ref(block.fb.w1)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del block, compiled
        at_once = w1() is None
        gc.collect()
        return at_once, w1() is None
    finally:
        if was_enabled:
            gc.enable()


def test_compiled_parts_in_a_module_of_yours_are_freed_as_the_readme_says():
    """README: a compiled LAUD block inside a module of yours is freed by gc.collect();
    a compiled LaudResNet inside it at once."""
    net = laud_resnet50(mode="channel").eval()
    x = torch.randn(1, 3, 32, 32)
    calibrate_rates(net, x, 0.5)
    assert _freed(torch.nn.Sequential(net, torch.nn.ReLU()), x) == (True, True)
    block = torch.nn.Sequential(net.layer1[1], torch.nn.ReLU())
    assert _freed(block, torch.randn(1, 256, 8, 8)) == (False, True)
