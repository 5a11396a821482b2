"""The variant registry (DESIGN.md section 3).

A variant is one way to execute one dynamic block given its masks. Adding a variant is
one ``register(Variant(...))`` call in its module; the scheduler never changes.

Calling convention of ``Variant.run(fb, x, masks, config)``:
    fb:     FoldedBlock (weights with BN folded, κ constants, the reference block)
    x:      [B, Cin, H, W] in channels_last memory format (``x.permute(0, 2, 3, 1)`` is a
            contiguous NHWC view), dtype of the plan
    masks:  BlockMasks from the reference maskers in eval mode
    config: one dict from ``configs(spec)`` (kernel tile sizes etc.; {} for torch variants)
    returns [B, Cout, Ho, Wo] in channels_last memory format.

``Variant.run_inplace`` (optional) takes the same arguments, for an x that is a ReLU
output (every value >= 0) which the caller gives away: the variant may overwrite x and
return it as the output (no output allocation, no copy of the identity). CompiledModel
runs the blocks of a LaudResNet this way; variants without it run ``run``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .spec import BlockSpec

BACKENDS = ("cpu", "cuda")


@dataclass(frozen=True)
class Cost:
    """What the predictor needs to know of one execution: multiply-adds, the fewest bytes
    moved, and the number of kernel launches (or torch op dispatches)."""

    flops: float
    bytes: float
    launches: int


def _always(spec: BlockSpec) -> bool:
    return True


def _one_config(spec: BlockSpec) -> list[dict]:
    return [{}]


@dataclass(frozen=True)
class Variant:
    """One way to execute a dynamic block.

    name: unique name ("gather", "patch", ...). modes: block modes it handles.
    backends: "cpu" (torch, runs on any device) and/or "cuda" (Triton).
    run, run_inplace: see the module docstring (run_inplace None: not offered).
    supports(spec): whether it handles this block exactly.
    configs(spec): its kernel config space. cost(spec, rate): Cost at activation rate.
    """

    name: str
    modes: tuple[str, ...]
    backends: tuple[str, ...]
    run: Callable
    cost: Callable[[BlockSpec, float], Cost]
    supports: Callable[[BlockSpec], bool] = _always
    configs: Callable[[BlockSpec], list[dict]] = _one_config
    description: str = ""
    needs_triton: bool = field(default=False)
    run_inplace: Callable | None = None


_REGISTRY: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    """Add a variant; names are unique."""
    if variant.name in _REGISTRY:
        raise ValueError(f"variant {variant.name!r} is already registered")
    bad = [b for b in variant.backends if b not in BACKENDS]
    if bad:
        raise ValueError(f"variant {variant.name!r}: unknown backends {bad}; accepted {BACKENDS}")
    _REGISTRY[variant.name] = variant
    return variant


def get_variant(name: str) -> Variant:
    """The registered variant ``name``.

    Raises:
        ValueError: if no such variant exists (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown variant {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def all_variants() -> list[Variant]:
    return list(_REGISTRY.values())


def variants_for(spec: BlockSpec, backend: str) -> list[Variant]:
    """Variants that run ``spec`` exactly on ``backend`` ("cpu" or "cuda"), dense first."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} unknown; accepted {BACKENDS}")
    out = [
        v for v in _REGISTRY.values()
        if spec.mode in v.modes and backend in v.backends and v.supports(spec)
    ]
    return sorted(out, key=lambda v: v.name != "dense")
