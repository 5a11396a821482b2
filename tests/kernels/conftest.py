import pytest

from laudtriton.kernelchecks import poisoned


@pytest.fixture
def nan_empty():
    """Every float torch.empty and torch.empty_like (the launchers' and the torch
    variants' outputs) starts as NaN, so an element a kernel fails to write fails the
    comparison."""
    with poisoned():
        yield
