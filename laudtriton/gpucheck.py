"""``laudtriton gpucheck --out DIR``: the one prepared GPU run (GPU.md section 4).

In one process (and, for the Triton compiles of parts 2 and 3, up to ``--compile-jobs``
worker processes first), time-boxed to ``--budget`` seconds (default 330, under 6 minutes
on one H100/H200; the box is kept between items, and a watchdog stops an item still
running at budget + ``WATCHDOG_S`` as a SIGTERM does, at its next Python instruction):
1. versions, GPU name, measured copy bandwidth and fp16/bf16 GEMM peak;
2. every Triton kernel vs its torch reference (fresh random inputs, NaN-poisoned outputs,
   fp16/bf16/fp32, TF32 off), and every CUDA variant end to end vs the folded reference:
   pass/fail; checks not started within half the budget are recorded as not run. The
   checks, then part 3's Triton variants on each of its blocks and batches, first run
   in worker processes until 0.3 of the budget, for their compiles alone
   (``warm_compiles``: they land in Triton's on-disk cache, where the main process
   finds them);
3. the static dense block (cuDNN with its autotuner on, channels_last, best of
   fp16/bf16) vs each variant (fp16) for the distinct blocks of LAUD-ResNet-50/-101
   (spatial 4-4-2-1, channel, layer) at rates 0.25/0.5/0.75, batch 1 then 64, do_bench
   medians (``tune.measure.time_variants``); each config's first output is checked
   against the float32 dense block on the same masks before it is timed, and a config
   that fails or is wrong is a failed check;
4. whole LAUD-ResNet-101 compiled (``laudtriton.compile(..., tune="quick")``, float16 on
   CUDA, reading and filling part 3's cache in DIR) vs the dense network with the same
   folded weights, at rate 0.5, for the batches part 3 timed in full (the others are
   recorded as not run: tuning them here would time their blocks past the time box); its
   logits within ``WHOLE_TOL`` of the dense variants' on its own masks;
then writes timings.csv, latency_vs_rate_<model>.png, the autotune cache file (TuneCache)
and summary.json into DIR and prints a short table. timings.csv and summary.json are also
written after each part, block and whole-model item, every progress line and warning goes
to gpucheck.log there too, and on SIGTERM (a time limit) the run stops and writes what it
gathered. A check, a block's timing or a part that raises is recorded as failed (its
error in one line, the end of its traceback in summary.json) and the run goes on.
Without CUDA, or with a bad option:
one line on stderr (``laudtriton gpucheck: error: ...``), exit code 2, nothing run.
Exit code 0 when every check passed, 1 otherwise. Needs only torch, triton, numpy and
matplotlib (run from the source tree with ``PYTHONPATH=.``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

from .gpureport import RATES, plot, table, write_csv
from .tune.measure import is_sticky

MODES = (("spatial", "4-4-2-1"), ("channel", "4-4-2-1"), ("layer", "4-4-2-1"))
PART2_SHARE = 0.5  # of --budget: the kernel checks not started by then are not run
WATCHDOG_S = 30.0  # past --budget by this much, the run stops where it is (SIGALRM)
WARM_SHARE = 0.3  # of --budget: the compiles of parts 2 and 3 in worker processes stop then


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``gpucheck`` on an argparse subparsers object."""
    p = subparsers.add_parser("gpucheck", help="one prepared GPU run: kernels, timings, plots")
    _arguments(p)
    return p


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="directory for the CSV, PNGs, cache, summary")
    p.add_argument("--budget", type=float, default=330.0,
                   help="seconds for the whole run (default 330)")
    p.add_argument("--configs", type=int, default=2,
                   help="kernel configs timed per variant (default 2)")
    p.add_argument("--batches", default="1,64",
                   help="batch sizes to time, comma-separated (default 1,64)")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu": plumbing test
    p.add_argument("--input-size", type=int, default=224, help=argparse.SUPPRESS)
    p.add_argument("--compile-jobs", type=int, default=min(8, max(1, (os.cpu_count() or 1) - 1)),
                   help="processes that compile the kernels of parts 2 and 3 first, in "
                        "parallel (1: none; default: min(8, CPUs - 1))")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="laudtriton gpucheck", description=__doc__.split("\n")[0],
                                allow_abbrev=False)
    _arguments(p)
    return run(p.parse_args(argv))


class Run:
    """Collects checks, timing rows and printed lines of one gpucheck."""

    def __init__(self, out: Path, budget: float, device: str):
        self.out, self.device, self.t0 = out, device, time.perf_counter()
        self.deadline = self.t0 + budget
        self.checks: list[dict] = []
        self.rows: list[dict] = []
        self.info: dict = {}
        # part 2's checks that left CUDA broken in a compile worker ({name: error}): not
        # run again here, where the fault would break every later check and timing
        self.sticky: dict[str, str] = {}
        # part 3's variants that left CUDA broken in a compile worker, {(spec key with
        # batch, variant): error}: not timed here on that block, nor compiled in part 4
        self.deny: dict[tuple[str, str], str] = {}
        self.log = out / LOG_NAME

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def say(self, text: str) -> None:
        """Print a progress line, and append it to ``gpucheck.log`` in the output folder
        (the run's whole story, where a console keeps only its end)."""
        line = f"[{time.perf_counter() - self.t0:6.1f}s] {text}"
        print(line, flush=True)
        with contextlib.suppress(OSError), open(self.log, "a") as fh:
            fh.write(line + "\n")

    def check(self, name: str, fn, until: float | None = None, quiet: bool = False) -> bool:
        """Run ``fn`` and record a pass or a failure (with its error and the end of its
        traceback, for summary.json). until: a perf_counter time after which the check is
        not run but recorded as not run (a time box). quiet: record and print failures
        only. A SIGTERM (``Terminated``) is not a failed check: it stops the run."""
        if until is not None and time.perf_counter() > until:
            self.not_run(name, "time box")
            return False
        try:
            fn()
            ok, err, tb = True, "", ""
        except Exception as e:  # a failed check is a result, not a crash
            ok, err = False, describe(e)
            tb = "\n".join(traceback.format_exc().strip().splitlines()[-TRACEBACK_LINES:])
        if ok and quiet:
            return True
        self.checks.append({"check": name, "ok": ok, "error": err}
                           | ({"traceback": tb} if tb else {}))
        self.say(f"{'PASS' if ok else 'FAIL'} {name}{'' if ok else '  ' + err}")
        return ok

    def not_run(self, name: str, why: str) -> None:
        """Record ``name`` as a check not run (not a pass), and why."""
        self.checks.append({"check": name, "ok": False, "error": f"not run: {why}"})
        self.say(f"SKIP {name}  ({why})")


TRACEBACK_LINES = 30  # of a failed check's traceback, kept in summary.json
LOG_NAME = "gpucheck.log"  # progress lines and the library's warnings, in --out


class WarmError(RuntimeError):
    """A Triton variant's config failing in ``warm_block``; ``variant`` names it."""

    def __init__(self, variant: str, text: str):
        super().__init__(text)
        self.variant = variant


def describe(e: BaseException) -> str:
    """One line for an exception: its type, its message's first line and, for a message
    of several lines, its last one too (a Triton CompilationError starts with the source
    position and ends with the cause); its type alone when it has no message."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return f"{type(e).__name__}: {text[:300]}"


# -- 1. machine ---------------------------------------------------------------------------
def _bench(fn, device: str) -> float:
    from .tune.timing import median_time

    return median_time(fn, device, warmup=2, reps=5)


def machine(r: Run) -> None:
    import triton

    from ._version import __version__

    dev = r.device
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__, "laudtriton": __version__}
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu": p.name, "capability": f"{p.major}.{p.minor}",
                 "sms": p.multi_processor_count,
                 "memory_gib": round(p.total_memory / 2**30, 1), "cuda": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version()}
    n = (1 << 28) if dev == "cuda" else (1 << 22)  # 512 MiB of fp16 per buffer on a GPU
    a = torch.empty(n, dtype=torch.float16, device=dev).uniform_()
    b = torch.empty_like(a)
    t = _bench(lambda: b.copy_(a), dev)
    info["copy_GBps"] = round(2 * a.numel() * 2 / t / 1e9, 1)  # read + write
    m = 8192 if dev == "cuda" else 256
    for dt in (torch.float16, torch.bfloat16):
        x = torch.randn(m, m, device=dev, dtype=dt)
        y = torch.randn(m, m, device=dev, dtype=dt)
        info[f"gemm_{str(dt)[6:]}_TFLOPs"] = round(2 * m**3 / _bench(lambda: x @ y, dev) / 1e12, 1)
    r.info = info
    for k, v in info.items():
        r.say(f"{k:<16} {v}")


# -- 2. kernels and variants vs references ------------------------------------------------
def part2_checks(device: str) -> list[tuple[str, object]]:
    """(name, no-argument check) of part 2, in order: every kernel family and CUDA
    variant against its reference, in fp16, bf16 and fp32."""
    from functools import partial

    from .kernelchecks import (
        channel_kernel_checks,
        masker_kernel_checks,
        spatial_kernel_checks,
        variant_check,
    )
    from .ops import all_variants

    dtypes = (torch.float16, torch.bfloat16, torch.float32)
    out = []
    for dt in dtypes:
        tag = str(dt)[6:]
        out += [(f"kernel channel_gemm/conv3x3 {tag}", partial(channel_kernel_checks, device, dt)),
                (f"kernel maskers {tag}", partial(masker_kernel_checks, device, dt)),
                (f"kernel spatial family {tag}", partial(spatial_kernel_checks, device, dt))]
    backend = "cuda" if device == "cuda" else "cpu"
    for v in all_variants():
        if backend not in v.backends or v.name == "dense":
            continue
        for mode in v.modes:
            out += [(f"variant {v.name} {mode} {str(dt)[6:]}",
                     partial(variant_check, v, mode, device, dt)) for dt in dtypes]
    return out


def _random_block(spec):
    """A LAUD block of ``spec``'s shape and configuration with random weights: what the
    Triton kernels compile for depends on shapes, dtypes and configs, not on values."""
    from .ops import BlockSpec
    from .testing import make_block

    g = spec.width // spec.channel_groups if spec.channel_groups else 1
    block = make_block(spec.in_channels, spec.width, spec.stride, spec.mode, spec.granularity,
                       channel_granularity=g, downsample=spec.downsample)
    made = BlockSpec.from_block(block, (spec.batch, spec.in_channels, *spec.in_hw), spec.dtype)
    if made != spec:
        raise ValueError(f"a random block of {spec.short()} came out as {made.short()}")
    return block


def warm_block(device: str, spec, n_configs: int) -> None:
    """Run once, at each of part 3's rates, every config part 3 times (the first
    ``n_configs``) of each Triton variant of ``spec`` (float16, as part 3), for their
    compiles alone. Raises the first error (a WarmError naming its variant) after trying
    every config, or at once an error that leaves CUDA unusable (``is_sticky``)."""
    from .ops import fold_block, variants_for
    from .ops.synthetic import synthetic_masks

    fb = fold_block(_random_block(spec), torch.float16, device)
    x = torch.randn(spec.batch, spec.in_channels, *spec.in_hw).relu().to(device, torch.float16)
    x = x.contiguous(memory_format=torch.channels_last)
    at_rate = [synthetic_masks(spec, rate, seed=1, device=device) for rate in RATES]
    first = None
    for v in variants_for(spec, "cuda"):
        if not v.needs_triton:
            continue
        for cfg in v.configs(spec)[:n_configs]:
            for masks in at_rate:
                try:
                    with torch.no_grad():
                        if v.run_inplace is not None:  # the form part 3 times
                            v.run_inplace(fb, x.clone(), masks, cfg)
                        else:
                            v.run(fb, x, masks, cfg)
                except Exception as e:  # the other configs still compile
                    err = WarmError(v.name, f"{v.name} {cfg}: {describe(e)}")
                    if is_sticky(str(err)):  # CUDA unusable: every later run fails (this
                        raise err from None  # one, not an earlier harmless failure)
                    first = first or err
    if first is not None:
        raise first


def part3_warmups(blocks, batches: list[int]) -> list[tuple[str, dict]]:
    """(name, spec as a dict) of part 3's blocks that have a Triton variant (layer
    blocks have none: nothing to compile), batch by batch as part 3 times them, for
    ``warm_block`` in the compile workers."""
    from .ops import variants_for

    return [(f"warm b{b} {mode} {spec1.short()} #{i}", spec1.with_(batch=b).to_dict())
            for b in batches for i, (mode, _, spec1, _) in enumerate(blocks.values())
            if any(v.needs_triton for v in variants_for(spec1, "cuda"))]


def _warm_worker(device: str, names: list[str], folder: str, deadline: float,
                 part3: list[tuple[str, dict]] = (), n_configs: int = 2,
                 threads: int = 1) -> None:
    """A compile worker: claims the jobs one by one (a claim file made with O_EXCL, so
    that no two workers run the same job and none waits on another) and runs each for
    its Triton compiles, which land in Triton's on-disk cache; it writes ``<i>.done``
    holding the job's error line (empty: passed; the main process runs every check
    itself and reports it). The jobs: part 2's checks ``names``, then ``warm_block`` on
    each spec of ``part3`` (numbered after them). No new job starts after ``deadline``
    (``time.time()``), so that a worker orphaned by a killed run ends soon. A check of
    the main process's list that this process does not know (none expected) counts as
    failed."""
    from .kernelchecks import exact_fp32
    from .ops import BlockSpec

    torch.set_num_threads(threads)
    checks = dict(part2_checks(device))
    jobs = [checks.get(name, name) for name in names]
    jobs += [(BlockSpec.from_dict(d),) for _, d in part3]
    for i, job in enumerate(jobs):
        if time.time() > deadline:
            return
        try:
            os.close(os.open(os.path.join(folder, f"{i}.claim"),
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        error, variant = "", ""
        try:
            with exact_fp32():
                if isinstance(job, tuple):
                    warm_block(device, job[0], n_configs)
                elif isinstance(job, str):
                    raise KeyError(f"no check named {job!r} in this process")
                else:
                    job()
        except Exception as e:
            error, variant = describe(e), getattr(e, "variant", "")
        with open(os.path.join(folder, f"{i}.done"), "w") as fh:
            fh.write(f"{variant}\n{error}")  # the variant that failed (part 3), the error
        if is_sticky(error):  # its CUDA context is broken: every later job here would
            return  # fail alike and be taken for a fault of its own; the others go on


def warm_compiles(r: Run, until: float, jobs: int, part3=None, n_configs: int = 2) -> int:
    """Run part 2's checks, then part 3's Triton variants (``warm_block``), first in
    ``jobs`` spawned worker processes, so that their Triton JIT compiles (dozens, seconds
    each on a fresh machine: the bulk of parts 2 and 3) run in parallel and land in
    Triton's on-disk cache, where this process finds them. part3: a callable giving part
    3's jobs (``part3_warmups``), called only when workers start; None: part 2 alone.
    Best effort, never raising but for a SIGTERM: the workers are killed at ``until``
    (and on any exit from here), and whatever failed or was not reached is compiled
    where it runs. Plain processes, no pool: a worker killed by a signal holds no lock
    the main process would wait on. Only on CUDA with jobs >= 2. Returns how many jobs
    the workers finished (passed or failed)."""
    import multiprocessing
    import tempfile

    if r.device != "cuda" or jobs < 2 or until <= time.perf_counter():
        return 0
    t0 = time.perf_counter()
    names = [name for name, _ in part2_checks(r.device)]
    try:
        warm3 = list(part3()) if part3 is not None else []
    except Exception as e:  # part 3's blocks could not be listed: part 2 alone
        r.say(f"part 3's blocks could not be listed for the compile workers ({describe(e)})")
        warm3 = []
    n = len(names) + len(warm3)
    k = min(jobs, n)
    threads = max(1, (os.cpu_count() or 1) // k)
    procs = []
    try:
        with tempfile.TemporaryDirectory(prefix="laudtriton_warm_") as folder:
            try:
                ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
                deadline = time.time() + (until - time.perf_counter())
                for _ in range(k):
                    proc = ctx.Process(target=_warm_worker, daemon=True,
                                       args=(r.device, names, folder, deadline, warm3,
                                             n_configs, threads))
                    proc.start()
                    procs.append(proc)  # started: joined and, if alive, killed below
                for p in procs:
                    p.join(timeout=max(0.0, until - time.perf_counter()))
            finally:
                for p in procs:
                    if p.is_alive():
                        p.kill()
                for p in procs:
                    p.join(timeout=10)
            errors, variants = {}, {}
            for i in range(n):
                path = os.path.join(folder, f"{i}.done")
                if os.path.exists(path):
                    with open(path) as fh:
                        variants[i], _, errors[i] = fh.read().partition("\n")
    except Exception as e:  # no worker could start (no /dev/shm, no spawn...)
        r.say(f"the compile workers failed ({describe(e)}); compiling in this process")
        return 0
    failed = [e for e in errors.values() if e]
    done2 = sum(1 for i in errors if i < len(names))
    r.sticky.update({names[i]: e for i, e in errors.items()
                     if i < len(names) and is_sticky(e)})
    for i, e in errors.items():  # part 3: a variant that broke CUDA is denied there;
        if i >= len(names) and is_sticky(e):  # a fault outside any variant (the block's
            from .ops import BlockSpec  # fold, its input) names none: a failure alone

            name, spec = warm3[i - len(names)]
            variant = variants.get(i, "")
            if variant:
                r.deny[(BlockSpec.from_dict(spec).key(), variant)] = e
            r.checks.append({"check": f"{name} {variant}".strip(), "ok": False,
                             "error": f"in a compile worker: {e}"})
            r.say(f"FAIL {name}: {e} (in a compile worker"
                  + (f"; {variant} is not run on this block here, nor in part 4)"
                     if variant else ")"))
    r.say(f"compiles first, in {k} processes: {done2} of part 2's {len(names)} checks"
          + (f" and {len(errors) - done2} of part 3's {len(warm3)} blocks" if warm3 else "")
          + f" in {time.perf_counter() - t0:.0f} s"
          + (f", {len(failed)} failed there (first: {failed[0]})" if failed else "")
          + ("" if len(errors) == n else " (the others not reached by the time box)"))
    return len(errors)


def kernel_checks(r: Run, until: float | None = None) -> None:
    """Part 2: every kernel and CUDA variant against its reference, in fp16, bf16 and
    fp32 (TF32 off); checks not started by ``until`` are recorded as not run."""
    from .kernelchecks import exact_fp32

    with exact_fp32():  # cuDNN's fp32 convolutions in TF32 would miss the fp32 bound
        for name, fn in part2_checks(r.device):
            if name in r.sticky:  # it broke CUDA in its worker: a failure, not re-run
                r.checks.append({"check": name, "ok": False,
                                 "error": f"in a compile worker: {r.sticky[name]}"})
                r.say(f"FAIL {name}  (in a compile worker, not run again here: "
                      f"{r.sticky[name]})")
                continue
            r.check(name, fn, until)


# -- 3. per-block timings -------------------------------------------------------------------
def distinct_blocks(models: list[str], input_size: int):
    """{(mode, spec key at batch 1): (mode, block, spec, {model: [block names]})} for the
    blocks of every model and mode (ResNet-50 and -101 share their distinct shapes)."""
    from .bench import build_model
    from .tune.sweep import model_blocks

    out = {}
    for mode, gran in MODES:
        for name in models:
            model = build_model(name, mode, gran)
            for bname, block, spec in model_blocks(model, input_size, 1, "float16"):
                key = (mode, spec.key())
                entry = out.setdefault(key, (mode, block, spec, {}))
                entry[3].setdefault(name, []).append(bname)
    return out


def time_blocks(r: Run, blocks, batches, n_configs: int, budget_end: float,
                cache) -> list[int]:
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
    from .bench import NO_MASKS
    from .ops.dense import dense_block
    from .tune.timing import median_time

    scratch = x.clone()
    with torch.no_grad():
        return median_time(lambda: dense_block(fb, scratch, NO_MASKS, inplace=True), dev)


def _time_block(r: Run, mode: str, block, spec, members, n_configs: int, cache) -> None:
    """One block of part 3: the static dense block in fp16 and bf16 (the baseline of the
    ratios), the ``dense`` variant with masks (what the cache's "dense" holds, as a
    sweep's), and each variant's first ``n_configs`` configs at every rate, each config's
    first output checked against the float32 dense block on the same masks (TF32 off)
    before it is timed: a config that fails or is wrong is a failed check."""
    from .kernelchecks import exact_fp32
    from .ops import fold_block, variants_for
    from .ops.dense import dense_block
    from .ops.masks import dispatch_rate
    from .ops.synthetic import synthetic_masks
    from .schedule import rate_key
    from .testing import TOLERANCE, assert_close
    from .tune.measure import time_variants

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
    for rate in RATES:
        masks = synthetic_masks(spec, rate, seed=1, device=dev)
        with torch.no_grad(), exact_fp32():
            ref = dense_block(fb32, x32, masks).float()

        def check(name, cfg, out, ref=ref):
            assert_close(out.float(), ref, TOLERANCE[torch.float16], f"{name} {cfg}")

        errors: dict = {}
        timings = time_variants(fb, spec, xd, masks, cands, configs=cfgs, check=check,
                                errors=errors)
        r.info["part3_configs_checked"] = (r.info.get("part3_configs_checked", 0)
                                           + sum(len(c) for c in timings.values()))
        for (vname, ckey), e in errors.items():  # failed or wrong: a failed check each
            r.checks.append({"check": f"config b{batch} {spec.short()} rate {rate} "
                                      f"{vname} {ckey}", "ok": False, "error": describe(e)})
            r.say(f"FAIL config {vname} {ckey} on b{batch} {spec.short()} rate {rate}: "
                  f"{describe(e)}")
        meta = {"models": members, "source": "gpucheck", "asked_rates": [rate]}
        # at the rate the masks realise (``ops.masks.dispatch_rate``), as sweep
        realised = rate_key(dispatch_rate(spec, masks))
        cache.record(spec, realised, timings | {"dense": masked}, meta)
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


# -- 4. whole model ---------------------------------------------------------------------------
def _dense_model(model, dev, dt):
    from .bench import DenseModel

    dm = DenseModel(model, torch.channels_last)
    dm.stem_w = dm.stem_w.to(dev, dt).contiguous(memory_format=torch.channels_last)
    dm.stem_b = dm.stem_b.to(dev, dt)
    dm.folded = [fb.to(dev, dt) for fb in dm.folded]
    for fb in dm.folded:
        fb.w2 = fb.w2.contiguous(memory_format=torch.channels_last)
    dm.fc = dm.fc.to(dev, dt)
    return dm


def _within_float16(model):
    """``model`` with every block's last BN scaled by ``BN3_SCALE`` (in place; returned).
    With ``bench.build_model``'s random BN statistics the residual stream grows about 1.3x
    a block: LAUD-ResNet-101's activations reach 1.5e5, past float16's largest value
    (65504), and its logits come out inf or nan in float16, which no comparison can
    read. Scaled, they stay under 35 (spatial, layer and channel at rate 0.5, measured
    on CPU); the work, hence the timing, is unchanged."""
    with torch.no_grad():
        for _, block in model.blocks():
            block.bn3.weight.mul_(BN3_SCALE)
            block.bn3.bias.mul_(BN3_SCALE)
    return model


def whole_models(r: Run, batches, input_size: int, budget_end: float, cache_dir=None) -> None:
    """Part 4: whole LAUD-ResNet-101 compiled (tune "quick", reading and filling the cache
    in ``cache_dir``, part 3's) against its dense forms, per batch and mode (the network
    kept within float16's range, ``_within_float16``). The compiled
    logits are also compared with the float32 reference model's, on the device: the
    largest difference over the reference's largest logit and the share of samples with
    the same top-1 class go to ``info["whole_vs_float32_reference"]`` and the printed
    line. They are recorded, not bounded: in float16 a gate whose two logits nearly tie
    may decide otherwise than the float32 reference's, and the difference then has no
    bound. What is bounded: the compiled model against the same network compiled with
    every block ``dense`` (torch's convolutions, the masks applied) run on the compiled
    model's own masks, in the same dtype: no gate decides there, so the two differ by
    rounding alone, and ``WHOLE_TOL`` of the largest logit (loose for 33 float16 blocks
    in a row, far under what a wrong kernel gives) fails the item."""
    import laudtriton

    from .bench import build_model
    from .kernelchecks import exact_fp32
    from .nn import calibrate_rates
    from .testing import logits_agreement
    from .tune.timing import median_time

    dev = r.device
    for batch in batches:
        for mode, gran in MODES:
            name = f"whole laud_resnet101 {mode} b{batch} rate 0.5"
            if time.perf_counter() > budget_end:
                r.not_run(name, "time box")
                continue

            def one(batch=batch, mode=mode, gran=gran, name=name):
                model = _within_float16(build_model("laud_resnet101", mode, gran)).to(dev)
                xd = torch.randn(batch, 3, input_size, input_size).to(dev)
                with exact_fp32():  # on the device: ~20 s on a CPU at batch 64
                    calibrate_rates(model, xd, 0.5)
                # without a variant that broke CUDA in a compile worker (part 3)
                variants = None
                if r.deny:
                    from .ops import all_variants

                    denied = {v for _, v in r.deny}
                    variants = [v.name for v in all_variants() if v.name not in denied]
                cm = laudtriton.compile(model, xd, backend="cuda" if dev == "cuda" else "cpu",
                                        tune="quick", cache_dir=cache_dir, variants=variants)
                xc = xd.to(cm.dtype)  # compile's dtype (float16 on CUDA), not x's
                dense = {}
                for dt in (torch.float16, torch.bfloat16):
                    dm = _dense_model(model, dev, dt)
                    xdt = xd.to(dt)
                    with torch.no_grad():
                        dense[str(dt)[6:]] = median_time(lambda: dm(xdt), dev, 2, 5)
                with torch.no_grad():
                    tc = median_time(lambda: cm(xc), dev, 2, 5)
                td = min(dense.values())
                # model: the float32 reference, on the device, in fp32 (TF32 off)
                with torch.no_grad(), exact_fp32():
                    out = cm(xc)
                    err, top1 = logits_agreement(out, model(xd))
                r.info.setdefault("whole_vs_float32_reference", {})[name] = {
                    "dtype": str(cm.dtype)[6:], "max_rel_error": err, "same_top1": top1}
                masks = [b.last_masks for b in cm.blocks]
                plain = laudtriton.compile(model, xd, backend="cuda" if dev == "cuda"
                                           else "cpu", tune="off", variants=["dense"])
                with torch.no_grad():
                    same = plain(xc, masks=masks, check_masks=False)
                gap = float((out.float() - same.float()).abs().max()
                            / same.float().abs().max().clamp_min(1e-30))
                r.info.setdefault("whole_vs_dense_on_its_masks", {})[name] = gap
                r.rows.append({"mode": mode, "spec": "laud_resnet101 whole", "spec_key": "",
                               "batch": batch, "rate": 0.5, "models": "", "variant": "compiled",
                               "dtype": "", "config": "tune=quick", "seconds": tc,
                               "ratio": tc / td})
                for dname, t in dense.items():
                    r.rows.append({"mode": mode, "spec": "laud_resnet101 whole", "spec_key": "",
                                   "batch": batch, "rate": 0.5, "models": "", "variant": "dense",
                                   "dtype": dname, "config": "", "seconds": t, "ratio": t / td})
                r.say(f"{name}: compiled {tc * 1e3:.2f} ms, dense {td * 1e3:.2f} ms, "
                      f"ratio {tc / td:.2f}; logits vs float32 reference: max rel. error "
                      f"{err:.2e}, same top-1 {top1:.2f}; vs the dense variants on its "
                      f"masks: {gap:.2e}")
                if not gap <= WHOLE_TOL:  # nan fails too
                    raise AssertionError(f"compiled logits {gap:.3g} of the largest away "
                                         "from the dense variants' on the same masks "
                                         f"(bound {WHOLE_TOL})")

            r.check(name, one)
            save(r, r.out)


# compiled model vs the same network's dense variants on its masks, relative to the largest
# logit (``whole_models``); measured on CPU (LAUD-ResNet-101 at 96x96, batch 2, rate 0.5,
# bn3 scaled): 0 to 7.9e-4 in float16 (spatial, channel, layer), 8.3e-3 at most in
# bfloat16 (unscaled): rounding stays far under it, a wrong kernel does not
WHOLE_TOL = 0.05
BN3_SCALE = 0.3  # ``_within_float16``


class Terminated(BaseException):
    """SIGTERM during a run (a time limit): the run stops and writes what it gathered. A
    BaseException, so that no handler of a failed check or timing (``except Exception``)
    takes it for one and carries on."""


def save(r: Run, out: Path) -> None:
    """Write timings.csv and summary.json of what ``r`` gathered so far: after each part,
    so that a run stopped by its time limit still leaves its results."""
    write_csv(r.rows, out / "timings.csv")
    summary = {"info": r.info, "checks": r.checks, "seconds": time.perf_counter() - r.t0}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))


def _options(args) -> list[int]:
    """Check every option before any work; returns the batch sizes.

    Raises:
        ValueError: naming the first bad option and its value.
    """
    from .tune.keys import check_dir

    if args.device not in ("cuda", "cpu"):
        raise ValueError(f"--device {args.device!r}: accepted 'cuda' (the default; the "
                         "current GPU) or 'cpu' (a plumbing test)")
    check_dir(args.out, "--out")  # blank, a file, or inside a file
    if not (math.isfinite(args.budget) and args.budget > 0):
        raise ValueError(f"--budget {args.budget:g} must be a number of seconds > 0")
    if args.configs < 1:
        raise ValueError(f"--configs {args.configs} must be >= 1")
    if args.compile_jobs < 1:
        raise ValueError(f"--compile-jobs {args.compile_jobs} must be >= 1 (1: no worker "
                         "processes)")
    try:
        batches = [int(b) for b in str(args.batches).split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise ValueError(f"--batches {args.batches!r}: expected comma-separated ints >= 1 "
                         "like 1,64")
    if len(set(batches)) != len(batches):
        raise ValueError(f"--batches {args.batches!r} repeats a batch size (each would be "
                         "timed twice)")
    from .tune.commands import check_input_size

    check_input_size(args.input_size)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device found; this command needs an NVIDIA GPU (nothing ran)")
    return batches


def run(args) -> int:
    """Run gpucheck with parsed ``args`` (see ``add_parser``); returns the exit code (2 with
    one line on stderr for a bad option or no GPU: nothing ran)."""
    from .tune.commands import fail, make_writable_dir

    try:
        batches = _options(args)
        make_writable_dir(args.out, "--out")  # before part 1 runs
    except ValueError as e:
        return fail("gpucheck", str(e))
    out = Path(args.out).expanduser()  # as check_dir read it ('--out=~/x': no shell)
    r = Run(out, args.budget, args.device)
    handler = logging.FileHandler(r.log)  # the library's warnings (a failed config's
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))  # text) too
    logging.getLogger("laudtriton").addHandler(handler)
    models = ["laud_resnet50", "laud_resnet101"]
    parts = []

    def terminated(signum, frame):  # a time limit's SIGTERM: keep what was gathered
        raise Terminated(f"signal {signum} after {time.perf_counter() - r.t0:.0f} s")
    from .tune.cache import TuneCache

    cache = TuneCache(out / "autotune_cache", device=args.device)
    done3: list[int] = []

    blocks: dict = {}  # part 3's, listed once: for the compile workers, or by part 3

    def listed():
        if not blocks:
            blocks.update(distinct_blocks(models, args.input_size))
        return blocks

    def part3():
        if args.device == "cuda":  # the dense baselines get cuDNN's fastest algorithms
            torch.backends.cudnn.benchmark = True
            r.info["cudnn_benchmark"] = True
        listed()  # before the time box starts, as when the workers listed them
        end3 = time.perf_counter() + 0.7 * max(0.0, r.left())
        done3.extend(time_blocks(r, listed(), batches, args.configs, end3, cache))
        parts.append(f"autotune cache: {cache.path}")

    def part4():  # a batch part 3 did not reach would be tuned here, past the time box
        for b in batches:
            if b not in done3:
                r.not_run(f"whole laud_resnet101 b{b}", f"part 3 did not time batch {b}")
        whole_models(r, done3, args.input_size, r.deadline, cache.dir)

    steps = [("1/4 machine", lambda: machine(r)),
             ("2/4 kernels and variants vs references (NaN-poisoned outputs)",
              lambda: (warm_compiles(r, r.t0 + WARM_SHARE * args.budget, args.compile_jobs,
                                     lambda: part3_warmups(listed(), batches), args.configs),
                       kernel_checks(r, r.t0 + PART2_SHARE * args.budget))),
             ("3/4 blocks: dense vs variants", part3),
             ("4/4 whole LAUD-ResNet-101 compiled vs dense", part4)]
    previous = signal.signal(signal.SIGTERM, terminated)
    # a watchdog: the time box is kept between items only, so one long item (a compile,
    # a whole model) could overrun it; past budget + WATCHDOG_S the run stops as on SIGTERM
    previous_alarm = signal.signal(signal.SIGALRM, terminated)
    signal.setitimer(signal.ITIMER_REAL, args.budget + WATCHDOG_S)
    try:
        for title, step in steps:  # a part that raises is a failed check; the next runs
            r.say(title)
            r.check(f"part {title.split()[0]} completed", step, quiet=True)
            save(r, out)
    except Terminated as e:  # a time limit: report what was gathered so far
        signal.setitimer(signal.ITIMER_REAL, 0)  # no second alarm while reporting
        r.checks.append({"check": "gpucheck run", "ok": False,
                         "error": f"Terminated: {e}"})
        r.say(f"stopped: Terminated: {e}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)
        signal.signal(signal.SIGTERM, previous)
        logging.getLogger("laudtriton").removeHandler(handler)
        handler.close()
    save(r, out)
    with contextlib.suppress(OSError):  # an empty lock file: one file fewer to fetch
        cache.lock_path.unlink()
    for m in models:
        try:
            if plot(r.rows, m, out / f"latency_vs_rate_{m}.png"):
                parts.append(f"plot: {out / f'latency_vs_rate_{m}.png'}")
        except Exception as e:  # noqa: BLE001 - the table and files below still matter
            parts.append(f"plot of {m} failed: {describe(e)}")
    print(table(r, models))
    for p in parts + [f"csv: {out / 'timings.csv'}", f"summary: {out / 'summary.json'}"]:
        print(p)
    print(f"gpucheck done in {time.perf_counter() - r.t0:.0f} s")
    return 0 if all(c["ok"] for c in r.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
