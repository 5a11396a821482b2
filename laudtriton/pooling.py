"""The global average pooling that a compiled block's channel MLP masker or layer gate
reads (``CompiledBlock._masks``): ``mean_rows``, in one of two forms for one float32
sample on CPU, and ``fastest_form``, which times both on this machine.

Which form is faster depends on the machine, and inside a model by more than the work
suggests (the pooling reads an activation that the block before has just written):

- on the 2-core Intel Xeon VM (session 39), the GEMM form took a compiled ResNet-101
  with channel skipping from 0.685 to 0.663 of dense against ``avg_pool2d``;
- on the 2-core AMD EPYC with AVX-512 (session 56), ``mean`` ran that model at
  0.555-0.556 of dense and the GEMM at 0.566-0.576 (0.588-0.589 against 0.622-0.623 in
  the machine's slower state), the same masks.

So a compiled block times both on its input's shape when it is made (``fastest_form``,
once per shape and thread count in a process) and keeps the faster one.
"""

from __future__ import annotations

import time
from functools import lru_cache
from statistics import median

import torch

from .nn.maskers import is_positive_int
from .ops.masks import global_pool

FORMS = ("gemm", "mean")  # the first is kept on a tie
ROUNDS = 25  # timed rounds per form (after two untimed), alternating
BUDGET_S = 0.25  # ... fewer past this many seconds, but at least MIN_ROUNDS
MIN_ROUNDS = 5


def mean_rows(x: torch.Tensor, form: str = "gemm") -> torch.Tensor:
    """x [B, C, H, W] averaged over its map as [B, C], a new tensor. For one float32
    sample on CPU, in ``form``: "gemm" multiplies its H·W NHWC rows (a view of a
    channels_last x) by a constant row of 1/(H·W); "mean" is ``x.mean((2, 3))``. Both sum
    in another order than the reference's pooling (within float rounding). Elsewhere
    ``ops.masks.global_pool``: at batch 8 (layer skipping, whose gates pool windows of
    about 4 samples) the GEMM gave 0.623 of dense against 0.618 (Intel VM, session 39),
    and on CUDA it would be one launch more.

    Raises:
        ValueError: if ``form`` is not one of ``FORMS``.
    """
    if form not in FORMS:
        raise ValueError(f"mean_rows: form {form!r} is not one of {FORMS}")
    b, c, h, w = x.shape
    if b != 1 or x.device.type != "cpu" or x.dtype != torch.float32:
        return global_pool(x)
    if form == "mean":
        return x.mean((2, 3))
    ones = x.new_full((1, h * w), 1.0 / (h * w))
    return torch.mm(ones, x[0].permute(1, 2, 0).reshape(h * w, c))


def fastest_form(channels: int, hw: tuple[int, int]) -> str:
    """The form of ``mean_rows`` (``FORMS``) with the lower median time on a float32
    channels_last map [1, channels, *hw] of this CPU, at torch's thread count now: each
    round writes the map in place (as the block before a masker has just done) and
    times each form once, ``ROUNDS`` rounds after two untimed, or ``MIN_ROUNDS`` and
    more until ``BUDGET_S`` seconds have passed (a large map). Measured once per shape and
    thread count in a process: 4-26 ms for each of ResNet-101's five shapes at 224x224 on
    a 2-core VM.

    Raises:
        ValueError: unless channels is an int >= 1 and hw two ints >= 1 (an empty map
            divided by zero, a bad size failed inside torch).
    """
    return _fastest_form(channels, check_map(channels, hw), torch.get_num_threads())


@lru_cache(maxsize=64)
def _fastest_form(channels: int, hw: tuple[int, int], threads: int) -> str:
    times = time_forms(channels, hw)
    return min(FORMS, key=lambda f: (median(times[f]), FORMS.index(f)))


def time_forms(channels: int, hw: tuple[int, int]) -> dict[str, list[float]]:
    """{form: [seconds of ``mean_rows`` in that form, one per round]} (``fastest_form``),
    on a float32 CPU map whatever torch's default dtype and device; torch's random
    state is left alone (a generator of its own).

    Raises:
        ValueError: as ``fastest_form``.
    """
    hw = check_map(channels, hw)
    gen = torch.Generator("cpu").manual_seed(0)
    x = torch.rand(1, channels, *hw, generator=gen, dtype=torch.float32,
                   device="cpu").contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {f: [] for f in FORMS}
    start = time.perf_counter()
    with torch.no_grad():
        for r in range(ROUNDS + 2):
            if r - 2 >= MIN_ROUNDS and time.perf_counter() - start > BUDGET_S:
                break
            order = FORMS if r % 2 else FORMS[::-1]
            for form in order:
                x.mul_(1.0)  # written just now, as a block's output is
                t0 = time.perf_counter()
                mean_rows(x, form)
                if r >= 2:
                    times[form].append(time.perf_counter() - t0)
    return times


def check_map(channels: object, hw: object) -> tuple[int, int]:
    """hw as a tuple, after checking that ``channels`` is an int >= 1 and ``hw`` two ints
    >= 1 (a tuple or list).

    Raises:
        ValueError: naming the argument and the value received.
    """
    if not is_positive_int(channels):
        raise ValueError(f"channels must be an int >= 1, got {channels!r}")
    if not (isinstance(hw, (tuple, list)) and len(hw) == 2
            and all(is_positive_int(v) for v in hw)):
        raise ValueError(f"hw must be two ints >= 1 (height, width), got {hw!r}")
    return tuple(hw)
