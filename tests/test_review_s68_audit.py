"""Session 68: small defects of its own review, each test written before its fix."""

import pytest

import laudtriton.ops  # noqa: F401  (registers every variant)
from laudtriton.cli import main
from laudtriton.codesign import design_search


@pytest.mark.parametrize("kwargs, start", [
    ({"target": 1.5}, "target 1.5 must be in (0, 1]"),
    ({"modes": ("spatial", "warp")}, "modes 'spatial,warp': unknown ['warp']"),
    ({"granularities": (0, 4)}, "granularities: 0 not a positive int"),
    ({"modes": ("spatial",), "granularities": (8,)}, "modes/granularities: stage 4 (7x7)"),
])
def test_design_search_names_its_own_arguments(kwargs, start):
    """Called from Python, ``design_search`` named the ``design`` command's options
    (--target-rate, --modes, --granularities), which its caller never gave; it names its
    parameters now, as ``rate_for_flops_ratio`` does since session 66."""
    args = {"target": 0.5, **kwargs}
    with pytest.raises(ValueError) as e:
        design_search("laud_resnet50", "a100", **args)
    assert str(e.value).startswith(start)


@pytest.mark.parametrize("argv, start", [
    (["--target-rate", "1.5"], "--target-rate 1.5 must be in (0, 1]"),
    (["--target-rate", "0.5", "--modes", "spatial,warp"],
     "--modes 'spatial,warp': unknown ['warp']"),
    (["--target-rate", "0.5", "--modes", "spatial", "--granularities", "8"],
     "--modes/--granularities: stage 4 (7x7)"),
])
def test_design_command_still_names_its_options(argv, start, capsys):
    """``laudtriton design`` keeps naming its own options in the same errors."""
    assert main(["design", "--model", "laud_resnet50", "--hardware", "a100", *argv]) == 2
    err = capsys.readouterr().err
    assert f"error: {start}" in err, err
