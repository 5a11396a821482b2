"""Ahead-of-time compilation specs of the Triton kernels (GPU.md section 2).

Every kernel family module exposes ``aot_specs() -> list[AOTSpec]``: one entry per kernel
x config of its space (``default=True`` for the configs the launchers use by default), so
that one test can compile all of them for sm_80 and sm_90 without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AOTSpec:
    """name: readable id; fn: the @triton.jit function; signature: {arg: type str, e.g.
    "*fp16", "i32"} for the non-constexpr args; constexprs: {arg: value}; num_warps,
    num_stages: launch options; default: whether launchers use this config by default."""

    name: str
    fn: object
    signature: dict
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2
    default: bool = False
