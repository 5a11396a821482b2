"""Part 3 of gpucheck: the distinct blocks of LAUD-ResNet-50/-101 in each mode, and each
block's static dense time (fp16 and bf16) against every variant's configs at each rate,
each config's first output checked before it is timed; the timings go to the run's rows
and the autotune cache."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from ..gpureport import RATES
from .record import Run, describe, save

if TYPE_CHECKING:
    from ..nn.block import BlockMasks, LaudBottleneck
    from ..ops.spec import BlockSpec
    from ..tune.cache import TuneCache

    # what ``distinct_blocks`` returns
    Blocks = dict[tuple[str, str], tuple[str, LaudBottleneck, BlockSpec, dict[str, list[str]]]]

MODES = (("spatial", "4-4-2-1"), ("channel", "4-4-2-1"), ("layer", "4-4-2-1"))


# -- 3. per-block timings -------------------------------------------------------------------
def distinct_blocks(models: list[str], input_size: int) -> Blocks:
    """{(mode, spec key at batch 1): (mode, block, spec, {model: [block names]})} for the
    blocks of every model and mode (ResNet-50 and -101 share their distinct shapes)."""
    from ..bench import build_model
    from ..tune.sweep_blocks import model_blocks

    out = {}
    for mode, gran in MODES:
        for name in models:
            model = build_model(name, mode, gran)
            for bname, block, spec in model_blocks(model, input_size, 1, "float16"):
                key = (mode, spec.key())
                entry = out.setdefault(key, (mode, block, spec, {}))
                entry[3].setdefault(name, []).append(bname)
    return out


def time_blocks(r: Run, blocks: Blocks, batches: Iterable[int], n_configs: int,
                budget_end: float, cache: TuneCache) -> list[int]:
    """Part 3: each block's dense and variant timings, batch by batch, into ``r.rows`` and
    ``cache``. A block whose timing raises is a failed check; the others go on. Returns
    the batches whose every block was reached before ``budget_end``."""
    done = []
    for batch in batches:
        for mode, block, spec1, members in blocks.values():
            if time.perf_counter() > budget_end:
                r.say(f"time box reached: skipping the rest of batch {batch} and later ones")
                return done
            r.check(f"timing b{batch} {mode} {spec1.short()}",
                    lambda: _time_block(r, mode, block, spec1.with_(batch=batch), members,
                                        n_configs, cache), quiet=True)
            save(r, r.out)  # a run killed outright keeps every block timed so far
        done.append(batch)
    return done


def _static_dense_time(fb, x, dev) -> float:
    """Median seconds of the static dense block (no masks, in place on a scratch copy of
    x, as ``laudtriton bench``'s baseline): the dense network's block, not the ``dense``
    variant, which applies masks (in channel mode, unfused: about 3x the ops)."""
    from ..baseline import NO_MASKS
    from ..ops.dense import dense_block
    from ..tune.timing import median_time

    scratch = x.clone()
    with torch.no_grad():
        return median_time(lambda: dense_block(fb, scratch, NO_MASKS, inplace=True), dev)


def same_masks(a: BlockMasks, b: BlockMasks) -> bool:
    """Whether two blocks' masks are equal, field by field (None only equal to None)."""
    for f in dataclasses.fields(a):  # not astuple: it would deep-copy every tensor
        u, v = getattr(a, f.name), getattr(b, f.name)
        if (u is None) != (v is None) or (u is not None and (
                u.shape != v.shape or u.dtype != v.dtype or not torch.equal(u, v))):
            return False
    return True


def _time_rate(r: Run, spec, fb, xd, fb32, x32, masks, rate: float, cands, cfgs: dict,
               failed: dict) -> tuple[dict, float]:
    """One rate of ``_time_block``: each config of ``cfgs`` not in ``failed`` checked
    against the float32 dense block and timed; a config that fails or is wrong is a
    failed check and goes into ``failed`` (not run at the later rates: a compile that
    failed would fail again, seconds each). Returns the timings and the realised rate."""
    from ..kernelchecks import exact_fp32
    from ..ops.dense import dense_block
    from ..schedule import rate_key, run_rate
    from ..testing import TOLERANCE, assert_close
    from ..tune.measure import config_key, time_variants

    with torch.no_grad(), exact_fp32():
        ref = dense_block(fb32, x32, masks).float()

    def check(name, cfg, out):
        assert_close(out.float(), ref, TOLERANCE[torch.float16], f"{name} {cfg}")

    now = {v: [c for c in cs if (v, config_key(c)) not in failed] for v, cs in cfgs.items()}
    dropped = [f"{v} {k} (failed at rate {at})" for (v, k), at in failed.items()]
    if dropped:
        r.say(f"not run on b{spec.batch} {spec.short()} at rate {rate}: " + ", ".join(dropped))
    errors: dict = {}
    timings = time_variants(fb, spec, xd, masks, [v for v in cands if now[v.name]],
                            configs=now, check=check, errors=errors)
    r.info["part3_configs_checked"] = (r.info.get("part3_configs_checked", 0)
                                       + sum(len(c) for c in timings.values()))
    for (vname, ckey), e in errors.items():  # failed or wrong: a failed check each
        failed[(vname, ckey)] = rate
        r.checks.append({"check": f"config b{spec.batch} {spec.short()} rate {rate} "
                                  f"{vname} {ckey}", "ok": False, "error": describe(e)})
        r.say(f"FAIL config {vname} {ckey} on b{spec.batch} {spec.short()} rate {rate}: "
              f"{describe(e)}")
    # at the rate the masks realise (``schedule.run_rate``), as sweep
    return timings, rate_key(run_rate(spec, masks))


def _with_failed(timings: dict, failed: dict, cached: dict | None = None) -> dict:
    """``timings`` ({variant: {config key: seconds}}) with each config of ``failed`` (not
    run at this rate: it failed at an earlier one) as inf, as a sweep records a failed
    config: the cache then has every candidate at every rate, and compile uses those
    rates (``planning``: a rate lacking a candidate is not used, and compile would time
    the block again, every config, past gpucheck's time box). A config ``cached`` (the
    cache's timings at this rate, ``TuneCache.lookup``) already holds keeps that time:
    an earlier run measured it there, and an inf never measured would replace it."""
    out = {v: dict(cs) for v, cs in timings.items()}
    for v, k in failed:
        if k not in (cached or {}).get(v, {}):
            out.setdefault(v, {}).setdefault(k, math.inf)
    return out


def _time_block(r: Run, mode: str, block, spec, members, n_configs: int, cache) -> None:
    """One block of part 3: the static dense block in fp16 and bf16 (the baseline of the
    ratios), the ``dense`` variant with masks (what the cache's "dense" holds, as a
    sweep's), and each variant's first ``n_configs`` configs at every rate, each config's
    first output checked against the float32 dense block on the same masks (TF32 off)
    before it is timed: a config that fails or is wrong is a failed check, not run at
    the later rates. A rate whose masks equal an earlier rate's (a layer gate at batch
    1) gets that rate's timings again, as its rows, without timing the same work twice."""
    from ..ops import fold_block, variants_for
    from ..ops.synthetic import synthetic_masks
    from ..tune.measure import time_variants

    dev = r.device
    backend = "cuda" if dev == "cuda" else "cpu"
    batch = spec.batch
    x = torch.randn(batch, spec.in_channels, *spec.in_hw).relu()
    # the block folded and its input, per half type (float16's for the variants too)
    half = {dt: (fold_block(block, dt, dev),
                 x.to(dev, dt).contiguous(memory_format=torch.channels_last))
            for dt in (torch.float16, torch.bfloat16)}
    dense = {str(dt)[6:]: _static_dense_time(f, xh, dev) for dt, (f, xh) in half.items()}
    dt_best = min(dense, key=dense.get)
    fb, xd = half[torch.float16]
    m = synthetic_masks(spec, 0.5, seed=0, device=dev)
    masked = time_variants(fb, spec, xd, m, [v for v in variants_for(spec, backend)
                                             if v.name == "dense"])["dense"]
    cands = [v for v in variants_for(spec, backend) if v.name != "dense"
             and (spec.key(), v.name) not in r.deny]  # it broke CUDA in a worker
    if dev != "cuda":
        cands = [v for v in cands if not v.needs_triton]
    cfgs = {v.name: v.configs(spec)[:n_configs] for v in cands}
    fb32 = fold_block(block, torch.float32, dev)
    x32 = xd.float()  # the values the fp16 runs see
    failed: dict[tuple[str, str], float] = {}  # (variant, config key): the rate it failed at
    timed: list[tuple[BlockMasks, dict, float]] = []  # masks, their timings, realised rate
    for rate in RATES:
        masks = synthetic_masks(spec, rate, seed=1, device=dev)
        again = next((t for t in timed if same_masks(t[0], masks)), None)
        if again is not None:  # e.g. a layer gate at batch 1: rates 0.25 and 0.5 both off
            _, timings, realised = again  # the same work: its rows again, timed once
        else:
            timings, realised = _time_rate(r, spec, fb, xd, fb32, x32, masks, rate, cands,
                                           cfgs, failed)
            timed.append((masks, timings, realised))
            meta = {"models": members, "source": "gpucheck", "asked_rates": [rate]}
            known = cache.lookup(spec, realised) if failed else None  # an earlier run's
            cache.record(spec, realised,
                         _with_failed(timings, failed, known) | {"dense": masked}, meta)
        base = {"mode": mode, "spec": spec.short(), "spec_key": spec.key(),
                "batch": batch, "rate": rate, "realised_rate": realised,
                "models": json.dumps(members)}
        for dname, t in dense.items():
            r.rows.append(base | {"variant": "dense", "dtype": dname, "config": "{}",
                                  "spec": spec.with_(dtype=dname).short(),
                                  "seconds": t, "ratio": t / dense[dt_best]})
        for vname, cs in timings.items():
            for c, t in cs.items():
                r.rows.append(base | {"variant": vname, "dtype": "float16",
                                      "config": c, "seconds": t,
                                      "ratio": t / dense[dt_best]})
    best = {v: min(cs.values()) for v, cs in timings.items()}
    r.say(f"b{batch} {spec.short():<48} dense {dense[dt_best] * 1e6:8.1f} us  rate 0.75: "
          + "  ".join(f"{v} {t / dense[dt_best]:.2f}x" for v, t in best.items()))
