"""``laudtriton gpucheck --out DIR``: the one prepared GPU run (GPU.md section 4).

In one process (and, for the Triton compiles of parts 2 and 3, up to ``--compile-jobs``
worker processes first), time-boxed to ``--budget`` seconds (default 330, under 6 minutes
on one H100/H200; the box is kept between items, and a watchdog stops an item still
running at budget + ``WATCHDOG_S`` as a SIGTERM does, at its next Python instruction):
1. versions, GPU name, measured copy bandwidth and fp16/bf16 GEMM peak;
2. every Triton kernel vs its torch reference (fresh random inputs, NaN-poisoned outputs,
   fp16/bf16/fp32, TF32 off), and every CUDA variant (``dense`` too) end to end vs the
   reference block in float64 on the same masks: pass/fail; checks not started within
   half the budget are recorded as not run. The checks, then part 3's Triton variants
   on each of its blocks and batches, first run in worker processes until 0.3 of the
   budget, for their compiles alone
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
then writes timings.csv, latency_vs_rate_<model>.png, the autotune cache file (TuneCache,
its empty ``.lock`` left beside it for any other writer of it) and summary.json into DIR
and prints a short table (into gpucheck.log too); an earlier
run's files of those names are removed as the run starts (its autotune cache is kept, and
added to). timings.csv
and summary.json are also written after each part, check, block and whole-model item,
every progress line and warning goes to gpucheck.log there too, with a line as each
check starts, and on SIGTERM (a time limit) the run stops, names what was running, and
writes what it gathered, its table too (a later SIGTERM or alarm, or one as a finished run
writes its report, is noted in gpucheck.log and does not stop that); a console that goes
away (its pipe's reader killed, a terminal hung up) does not stop the run either: its
lines still go to gpucheck.log (``record.console``). A check, a block's
timing or a part that raises is recorded as failed (its error in one line, the end of its
traceback in summary.json) and the run goes on.
Without CUDA, with TRITON_INTERPRET on for CUDA, with $LAUDTRITON_CACHE turning the
cache off (the run would write none) or a file named autotune_cache in DIR, or with a bad
option: one line on stderr (``laudtriton gpucheck: error: ...``), exit code 2, nothing run.
Exit code 0 when every check passed, 1 otherwise. Needs only torch, triton, numpy and
matplotlib (run from the source tree with ``PYTHONPATH=.``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

from ..gpureport import plot, table
from ..kernels.aot import interpreting
from ..runtime import usable_cpus
from ..tune.numbers import ascii_float, ascii_int
from ..tune.options import int_list
from .blocks import distinct_blocks, time_blocks
from .checks import kernel_checks
from .machine import machine
from .record import LOG_NAME, SAVED_NAMES, Run, Terminated, console, describe, save
from .warm import part3_warmups, warm_compiles
from .whole import whole_models

PART2_SHARE = 0.5  # of --budget: the kernel checks not started by then are not run
WATCHDOG_S = 30.0  # past --budget by this much, the run stops where it is (SIGALRM)
MAX_BUDGET_S = 86400.0  # a day: --budget above is refused
WARM_SHARE = 0.3  # of --budget: the compiles of parts 2 and 3 in worker processes stop then


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``gpucheck`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "gpucheck", help="one prepared GPU run: kernels, timings, plots",
        description="The one prepared GPU run, time-boxed to --budget: kernel and variant "
                    "checks against their references, the distinct blocks timed against "
                    "the dense block, whole LAUD-ResNet-101 against the dense network; "
                    "timings.csv, plots, the autotune cache and summary.json in --out. "
                    "Exit code 0 when every check passed, 1 when one failed, 2 for a bad "
                    "option or no CUDA device (nothing run) or a file that could not be "
                    "written, 130 on Ctrl-C.")
    _arguments(p)
    return p


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="directory for the CSV, PNGs, cache, summary")
    p.add_argument("--budget", type=ascii_float, default=330.0,
                   help="seconds for the whole run (default 330, at most 86400), kept "
                        "between items; past it by 30 s the run stops where it is, then "
                        "writes its plots and table (give a hard limit of budget + 60 s "
                        "or more)")
    p.add_argument("--configs", type=ascii_int, default=2,
                   help="kernel configs timed per variant (default 2)")
    p.add_argument("--batches", default="1,64",
                   help="batch sizes to time, comma-separated (default 1,64)")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu": plumbing test
    p.add_argument("--input-size", type=ascii_int, default=224, help=argparse.SUPPRESS)
    p.add_argument("--compile-jobs", type=ascii_int, default=min(8, max(1, usable_cpus() - 1)),
                   help="processes that compile the kernels of parts 2 and 3 first, in "
                        "parallel (1: none; default: min(8, CPUs this process may use - 1))")


def main(argv: list[str] | None = None) -> int:
    """``python -m laudtriton.gpucheck``: ``laudtriton gpucheck`` on ``argv`` (None:
    sys.argv[1:]), through the ``laudtriton`` command itself, so that its options
    (``-v`` too) and errors (one line) are the same; returns its exit code: 0 when every
    check passed, 1 when one failed, 2 with one line on stderr for a bad option value or
    no GPU (nothing ran), or for a file that could not be written during or after the run
    (an OSError), 130 on Ctrl-C, or on a SIGTERM before the run began (unless the
    process ignores SIGTERM; once the run has begun, a SIGTERM, ignored before or not,
    ends the time box: the report is written). A malformed command line exits inside
    argparse (SystemExit, code 2, one line)."""
    from ..cli import main as laudtriton_main

    return laudtriton_main(["gpucheck", *(sys.argv[1:] if argv is None else argv)])


def _options(args) -> list[int]:
    """Check every option before any work; returns the batch sizes.

    Raises:
        ValueError: naming the first bad option and its value.
    """
    from ..tune.keys import check_dir

    if args.device not in ("cuda", "cpu"):
        raise ValueError(f"--device {args.device!r}: accepted 'cuda' (the default; the "
                         "current GPU) or 'cpu' (a plumbing test)")
    if args.device == "cpu" and not interpreting():
        # the kernels would be compiled for a GPU and every kernel check would fail
        raise ValueError("--device cpu runs the Triton kernels under the interpreter: "
                         "set TRITON_INTERPRET=1 in the environment (nothing ran)")
    check_dir(args.out, "--out")  # blank, a file, or inside a file
    if not (math.isfinite(args.budget) and 0 < args.budget <= MAX_BUDGET_S):
        # the watchdog's timer takes no more (1e20: an OverflowError, with a traceback)
        raise ValueError(f"--budget {args.budget:g} must be a number of seconds > 0 and "
                         f"<= {MAX_BUDGET_S:g}")
    if args.configs < 1:
        raise ValueError(f"--configs {args.configs} must be >= 1")
    cpus = usable_cpus()
    if not 1 <= args.compile_jobs <= cpus:  # each worker loads torch and opens a context
        raise ValueError(f"--compile-jobs {args.compile_jobs} must be in [1, {cpus}] (1: no "
                         "worker processes; at most the CPUs this process may run on)")
    batches = int_list(str(args.batches), "--batches", "comma-separated ints >= 1 like 1,64")
    if len(set(batches)) != len(batches):
        raise ValueError(f"--batches {args.batches!r} repeats a batch size (each would be "
                         "timed twice)")
    from ..tune.options import check_batch, check_input_size

    for b in batches:  # the bound every command's --batch has
        check_batch(b, "--batches")
    check_input_size(args.input_size)
    _check_cache(args.out)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device found; this command needs an NVIDIA GPU (nothing ran)")
    if args.device == "cuda" and interpreting():
        # the kernels would run on the host, ~1000x slower: part 3 would time (and put
        # into the autotune cache a session commits) the interpreter's speed
        raise ValueError(f"TRITON_INTERPRET={os.environ['TRITON_INTERPRET']!r} is set: "
                         "the Triton kernels would run under the interpreter; unset it "
                         "for --device cuda (nothing ran)")
    return batches


def _check_cache(out: str) -> None:
    """Whether the run can keep its autotune cache in ``out``/autotune_cache, one of its
    outputs, which part 4 reads back: checked before anything in ``out`` is removed.

    Raises:
        ValueError: naming --out where autotune_cache there is a file (or lies inside
            one); naming $LAUDTRITON_CACHE where it is not a value it takes, or turns the
            cache off (the run would write no cache file, and part 4 would tune every
            block again, past the time box).
    """
    from ..tune.keys import cache_enabled_from_env, check_dir

    check_dir(Path(out).expanduser() / "autotune_cache",
              f"--out {out!r}: the folder of its autotune cache")
    if not cache_enabled_from_env():
        raise ValueError(f"LAUDTRITON_CACHE={os.environ['LAUDTRITON_CACHE']!r} turns the "
                         "autotune cache off: gpucheck writes its cache into --out and "
                         "reads it back in part 4; unset it (nothing ran)")


def _plot_path(out: Path, model: str) -> Path:
    """Where a run draws ``model``'s latency against rate in ``out``."""
    return out / f"latency_vs_rate_{model}.png"


def run(args: argparse.Namespace) -> int:
    """Run gpucheck with parsed ``args`` (see ``add_parser``); returns the exit code (2 with
    one line on stderr for a bad option or no GPU: nothing ran)."""
    from ..tune.options import fail
    from ..tune.paths import make_writable_dir

    try:
        batches = _options(args)
        make_writable_dir(args.out, "--out")  # before part 1 runs
    except ValueError as e:
        return fail("gpucheck", str(e))
    out = Path(args.out).expanduser()  # as check_dir read it ('--out=~/x': no shell)
    from ..tune.cache import TuneCache

    # opened before anything is removed (``_check_cache`` read what refuses it)
    cache = TuneCache(out / "autotune_cache", device=args.device)
    models = ["laud_resnet50", "laud_resnet101"]
    # an earlier run's outputs in --out (not its autotune cache, which this run adds to):
    # its log was appended to, and a plot this run does not write was left as if its own
    for path in (out / LOG_NAME, *(out / n for n in SAVED_NAMES),
                 *(_plot_path(out, m) for m in models)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    r = Run(out, args.budget, args.device)
    handler = logging.FileHandler(r.log)  # the library's warnings (a failed config's
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))  # text) too
    logging.getLogger("laudtriton").addHandler(handler)
    parts = []

    stopping = False  # set by the first stop, or as the parts end: the run then reports

    def terminated(signum, frame):  # a time limit's SIGTERM: keep what was gathered
        nonlocal stopping
        if stopping:  # a second SIGTERM, or the alarm, must not abort the report
            r.note(f"signal {signum} ignored: writing what the run gathered")
            return
        stopping = True
        raise Terminated(f"signal {signum} after {time.perf_counter() - r.t0:.0f} s")
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
    started = 0
    try:  # the handlers stay until the report is written (they ignore a signal there)
        try:
            for title, step in steps:  # a part that raises is a failed check; the next runs
                r.say(title)
                started += 1  # after its title: a stop while it is printed is before it
                r.check(f"part {title.split()[0]} completed", step, quiet=True)
                save(r, out)
            stopping = True  # a signal before this line is a stop (below); after, ignored
        except Terminated as e:  # a time limit: report what was gathered so far
            signal.setitimer(signal.ITIMER_REAL, 0)  # no second alarm while reporting
            during = f", during {' > '.join(r.running)}" if r.running else ""
            r.checks.append({"check": "gpucheck run", "ok": False,
                             "error": f"Terminated: {e}{during}"})
            r.say(f"stopped: Terminated: {e}{during}")
            for title, _ in steps[started:]:
                r.not_run(f"part {title.split()[0]} completed",
                          "the run was stopped before it")
        signal.setitimer(signal.ITIMER_REAL, 0)
        # the lock file beside the cache stays: unlinked, a writer still holding it (a
        # compile or sweep on the same cache) and the next one, which would lock a new
        # file of that name, would both write the cache at once
        if cache.path.is_file():  # what part 3 timed, a time limit's stop included: the
            parts.append(f"autotune cache: {cache.path}")  # file the session commits
            r.info["autotune_cache"] = str(cache.path)
        save(r, out)
        for m in models:
            try:
                if plot(r.rows, m, _plot_path(out, m)):
                    parts.append(f"plot: {_plot_path(out, m)}")
            except Exception as e:  # noqa: BLE001 - the table and files below still matter
                parts.append(f"plot of {m} failed: {describe(e)}")
        lines = [table(r, models), *parts, f"csv: {out / 'timings.csv'}",
                 f"summary: {out / 'summary.json'}",
                 f"gpucheck done in {time.perf_counter() - r.t0:.0f} s"]
        for line in lines:  # in gpucheck.log too: a console may keep only part of it
            console(line)
            r.note(line, stamp=False)
        return 0 if all(c["ok"] for c in r.checks) else 1
    finally:  # the log handler first: a SIGTERM once the caller's handler is back (in
        logging.getLogger("laudtriton").removeHandler(handler)  # ``laudtriton``:
        handler.close()  # KeyboardInterrupt) would otherwise leave it on the logger
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)
        signal.signal(signal.SIGTERM, previous)
