"""Part 2 of gpucheck: every Triton kernel against its torch reference and every variant
that runs on CUDA (``dense`` too) end to end against the reference block in float64 on
the same masks, in fp16, bf16 and fp32 (TF32 off)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .record import Run, save


# -- 2. kernels and variants vs references ------------------------------------------------
def part2_checks(device: str) -> list[tuple[str, Callable[[], object]]]:
    """(name, no-argument check) of part 2, in order: every kernel family and every
    variant of the device's backend (``dense`` too: the fallback) against its reference,
    in fp16, bf16 and fp32."""
    from functools import partial

    from ..kernelchecks import (
        channel_kernel_checks,
        masker_kernel_checks,
        spatial_kernel_checks,
        variant_check,
    )
    from ..ops import all_variants

    dtypes = (torch.float16, torch.bfloat16, torch.float32)
    out = []
    for dt in dtypes:
        tag = str(dt)[6:]
        out += [(f"kernel channel_gemm/conv3x3 {tag}", partial(channel_kernel_checks, device, dt)),
                (f"kernel maskers {tag}", partial(masker_kernel_checks, device, dt)),
                (f"kernel spatial family {tag}", partial(spatial_kernel_checks, device, dt))]
    backend = "cuda" if device == "cuda" else "cpu"
    for v in all_variants():
        if backend not in v.backends:
            continue
        for mode in v.modes:
            out += [(f"variant {v.name} {mode} {str(dt)[6:]}",
                     partial(variant_check, v, mode, device, dt)) for dt in dtypes]
    return out


def kernel_checks(r: Run, until: float | None = None) -> None:
    """Part 2: every kernel and CUDA variant against its reference, in fp16, bf16 and
    fp32 (TF32 off); checks not started by ``until`` are recorded as not run."""
    from ..kernelchecks import exact_fp32

    with exact_fp32():  # cuDNN's fp32 convolutions in TF32 would miss the fp32 bound
        for name, fn in part2_checks(r.device):
            if name in r.sticky:  # it broke CUDA in its worker: a failure, not re-run
                r.checks.append({"check": name, "ok": False,
                                 "error": f"in a compile worker: {r.sticky[name]}"})
                r.say(f"FAIL {name}  (in a compile worker, not run again here: "
                      f"{r.sticky[name]})")
                continue
            r.check(name, fn, until)
            save(r, r.out)  # a run killed outright keeps every check done so far
