"""Time every variant x config of one block on one input and its masks."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

from ..kernelchecks import exact_fp32
from ..nn.block import BlockMasks
from ..nn.maskers import check_flag
from ..ops.dense import dense_block
from ..ops.fold import FoldedBlock
from ..ops.registry import Variant
from ..ops.spec import BlockSpec
from .timing import check_runs, interleaved_medians, median_time

log = logging.getLogger("laudtriton")

# error text that means the process's CUDA context is unusable (a kernel's fault): every
# later CUDA call fails alike, so such an error is raised, not scored as one config's
STICKY = ("CUDA error", "illegal memory access", "illegal instruction",
          "unspecified launch failure", "misaligned address")


def is_sticky(error: str) -> bool:
    """Whether an error's text says the process's CUDA context is unusable (``STICKY``)."""
    return any(s in error for s in STICKY)


def config_key(config: dict) -> str:
    """Stable string of a kernel config ("{}" for torch variants)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def _check_shape(spec: BlockSpec, x: torch.Tensor, out: object) -> None:
    """Raise unless ``out`` is a tensor of the block's output shape, x's dtype and device
    (a variant's wrong shape was timed, and could win the plan)."""
    want = (x.shape[0], spec.out_channels, *spec.out_hw)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want or (
            out.dtype != x.dtype or out.device != x.device):
        got = (tuple(out.shape), out.dtype, out.device) if isinstance(out, torch.Tensor) \
            else type(out).__name__
        raise ValueError(f"output {got}, expected {want} {x.dtype} on {x.device}")


def reference_output(fb: FoldedBlock, x: torch.Tensor, masks: BlockMasks) -> torch.Tensor:
    """The block's output on (x, masks) in float32 (float64 for float64 x): the ``dense``
    variant's computation (the reference semantics with folded weights) on ``fb``'s
    weights and x upcast, TF32 off (``kernelchecks.exact_fp32``). x is not written."""
    dtype = torch.promote_types(x.dtype, torch.float32)  # float64 stays float64
    ref = fb if fb.w1.dtype == dtype else fb.to(dtype=dtype)
    with torch.no_grad(), exact_fp32():
        return dense_block(ref, x.to(dtype), masks)


def _guarded(call: Callable[[], object], i: int, broken: dict[int, Exception]
             ) -> Callable[[], object]:
    """call, which records its first exception in broken[i] and then does nothing (timed
    round-robin, one config failing after its first call must not stop the others)."""
    def run():
        if i in broken:
            return None
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - scored inf and reported by the caller
            broken[i] = e
            return None
    return run


def time_variants(fb: FoldedBlock, spec: BlockSpec, x: torch.Tensor, masks: BlockMasks,
                  variants: Sequence[Variant], warmup: int = 2, reps: int = 10,
                  configs: dict[str, list[dict]] | None = None,
                  check: Callable[[str, dict, torch.Tensor], object] | None = None,
                  verify: bool = False,
                  errors: dict[tuple[str, str], Exception] | None = None
                  ) -> dict[str, dict[str, float]]:
    """Median seconds of every variant x config on (x, masks).

    x: [B, Cin, H, W] channels_last on the device to time on. ``configs`` overrides the
    config space of the variants it names (e.g. after predictor pruning; an empty list:
    none of that variant's configs is timed). A config that fails to compile
    or run (on its first, untimed call, whose output must have the block's output shape,
    x's dtype and device; or while timed) scores inf and is logged;
    it is never fatal, unless its error leaves CUDA unusable (``is_sticky``: an illegal
    address, a launch failure), which is raised (every later call would fail alike, and
    its inf be cached as another config's failure).
    check: called as check(variant name, config, output) on that first call's output
    (computed on relu(x) for an in-place variant, as on x for the others), raising when
    it is wrong: the config then fails too. verify: also check that first output against
    :func:`reference_output` on the input the variant got (x, or relu(x) in place), within
    ``testing.TOLERANCE`` of x's dtype times max|reference| (``testing.assert_close``);
    a config past it fails (AssertionError), so a fast wrong config cannot win a plan
    (a sample whose reference is not finite or passes the range of x's dtype is left
    out: it cannot tell right from wrong; the others are judged). With verify, that
    first call runs with TF32 off, as the reference does (``kernelchecks.exact_fp32``:
    on CUDA, cuDNN's default TF32 puts a correct float32 convolution about 3e-4 of
    max|ref| off, past the 1e-4 bound); the timed calls run with the caller's settings.
    errors: filled with {(variant name,
    config_key): the exception} of every failed config. On CPU
    the candidates are timed round-robin (``interleaved_medians``), so that a burst of
    machine load hits them alike instead of deciding the winner; on CUDA each runs
    ``median_time`` (CUDA events).

    A variant with ``run_inplace`` is timed in that form, the one CompiledModel runs the
    blocks of a LaudResNet with (it saves the output allocation and the identity copy,
    up to half a block's time at batch 8), on a scratch copy of relu(x) that it
    overwrites. On CPU the scratch is restored from relu(x) before every call, untimed
    (``interleaved_medians``' setup), so every call sees the same values, in cache as a
    block's input just written by the block before. On CUDA (``do_bench`` has no untimed
    hook) the calls chain: the values drift and may overflow; the masks and shapes, all
    that the cost depends on, do not. x itself is never written.

    Returns {variant name: {config_key: seconds}}.

    Raises:
        ValueError: if reps < 1 or warmup < 0, or either is not an int, or verify is not
            a bool, before any variant runs (on CUDA ``median_time``'s refusal was scored
            inf as every config's failure, "while timed").
    """
    check_runs(warmup, reps)
    check_flag(verify, "time_variants: verify")
    out: dict[str, dict[str, float]] = {v.name: {} for v in variants}
    calls, keys, setup = [], [], []
    source = scratch = None
    refs: dict[bool, torch.Tensor] = {}  # reference_output on x (False) or relu(x) (True)

    def verified(v: Variant, cfg: dict, result: torch.Tensor) -> None:
        from ..testing import TOLERANCE, assert_close

        inplace = v.run_inplace is not None
        if inplace not in refs:
            refs[inplace] = reference_output(fb, source if inplace else x, masks)
        ref = refs[inplace]
        # a sample whose reference holds NaN or inf (a stem that folds to inf), or passes
        # the range of x's dtype (float16 above 65504: its output is inf or NaN in every
        # variant, dense's too), cannot tell right from wrong: the other samples are
        # judged (one such sample left a wrong output on the others unjudged)
        peak = ref.flatten(1).abs().amax(1) if ref.numel() else ref.new_zeros(len(ref))
        judged = torch.isfinite(peak) & (peak <= torch.finfo(x.dtype).max)
        if bool(judged.any()):
            assert_close(result[judged].to(ref.dtype), ref[judged], TOLERANCE[x.dtype],
                         f"{v.name} {config_key(cfg)}")

    def restore():  # an in-place variant's input back to relu(x)
        scratch.copy_(source)

    def failed(name: str, key: str, e: Exception, when: str) -> float:
        """A config's failure (called inside its ``except``): logged, kept in ``errors``,
        scored inf; re-raised when it left CUDA unusable (every later config would fail
        alike, and its inf be cached as that config's failure)."""
        if x.device.type == "cuda" and is_sticky(str(e)):
            raise e
        log.warning("variant %s config %s failed %s on %s: %s", name, key, when,
                    spec.short(), e)
        if errors is not None:
            errors[(name, key)] = e
        return math.inf

    for v in variants:
        space = (configs or {}).get(v.name)  # [] pruned all: not the full space
        for cfg in v.configs(spec) if space is None else space:
            if v.run_inplace is not None:
                if scratch is None:
                    source = torch.relu(x).contiguous(memory_format=torch.channels_last)
                    scratch = source.clone()

                def call(v=v, cfg=cfg):
                    return v.run_inplace(fb, scratch, masks, cfg)
            else:
                def call(v=v, cfg=cfg):
                    return v.run(fb, x, masks, cfg)
            try:
                if v.run_inplace is not None:
                    restore()  # the first call (checked) reads relu(x) itself
                with torch.no_grad(), exact_fp32() if verify else nullcontext():
                    result = call()  # (verified without TF32, see the docstring)
                if x.device.type == "cuda":  # a kernel's fault is reported for its own
                    torch.cuda.synchronize(x.device)  # config, not a later one's (a sticky
                    # one, e.g. an illegal address, still leaves CUDA unusable after it)
                _check_shape(spec, x, result)
                if verify:
                    verified(v, cfg, result)
                if check is not None:
                    check(v.name, cfg, result)
            except Exception as e:  # a failing config is reported, not fatal
                out[v.name][config_key(cfg)] = failed(v.name, config_key(cfg), e,
                                                      "on its first call")
                continue
            calls.append(call)
            keys.append((v.name, config_key(cfg)))
            setup.append(restore if v.run_inplace is not None else None)
    with torch.no_grad():
        if x.device.type == "cuda":  # one config failing while timed (out of memory, a
            times = []  # launch failure) scores inf; the others keep their timings
            for c, (name, key) in zip(calls, keys):
                try:
                    times.append(median_time(c, x.device, warmup=warmup, reps=reps))
                except Exception as e:  # noqa: BLE001 - reported, as a first call's
                    times.append(failed(name, key, e, "while timed"))
        else:  # the same there: a config that fails after its first call scores inf
            broken: dict[int, Exception] = {}
            times = (interleaved_medians([_guarded(c, i, broken) for i, c in enumerate(calls)],
                                         warmup=warmup, reps=reps, setup=setup)
                     if calls else [])
            for i, e in broken.items():
                times[i] = failed(*keys[i], e, "while timed")
    for (name, key), t in zip(keys, times):
        out[name][key] = t
    return out
