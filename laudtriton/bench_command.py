"""The ``laudtriton bench`` command: its options (``add_bench_parser``), their checks, the
run in this process or in several (``cmd_bench``), torch's threads set for it, and the
checks of counts and of the cache's environment that ``demo`` shares. The benchmark
itself is :mod:`laudtriton.bench`'s, its rows :mod:`laudtriton.bench_report`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

from .runtime import usable_cpus


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``bench`` to an argparse subparsers object, run by ``cmd_bench``; returns its
    parser (also set as ``bench_parser``, which ``_bench_argv`` reads)."""
    from .tune.layout_options import add_layout_options
    from .tune.numbers import ascii_int

    s = subparsers.add_parser("bench", help="dense vs compiled, per block and whole model")
    s.add_argument("--model", default="laud_resnet50",
                   choices=["laud_resnet50", "laud_resnet101"],
                   help="the LAUD network (default laud_resnet50)")
    add_layout_options(s)
    s.add_argument("--rates", default="0.25,0.5,0.75",
                   help="target rates the maskers are calibrated to, comma-separated or "
                        "start:stop:step (default 0.25,0.5,0.75)")
    s.add_argument("--batch", type=ascii_int, default=1, help="batch size (default 1)")
    s.add_argument("--threads", type=ascii_int, default=0,
                   help="torch threads, from 0 to the CPUs this process may run on "
                        "(default 0: the count this process has, torch's default in a "
                        "fresh `laudtriton` process, set by OMP_NUM_THREADS if given; "
                        "with --processes, each child's own default)")
    s.add_argument("--reps", type=ascii_int, default=20,
                   help="timed runs per candidate (default 20, as in BENCHMARKS.md; "
                   "fewer is noisier; at most 10000); also the untimed new inputs that "
                   "start the new-input stream")
    s.add_argument("--tune", default="cached", choices=["cached", "quick", "full", "off"],
                   help="compile's tune mode (default cached: the autotune cache, the rates it "
                        "lacks filled by the latency predictor where this machine is "
                        "calibrated, else timing on the example input)")
    s.add_argument("--model-only", action="store_true", help="skip the per-block table")
    s.add_argument("--repeat", type=ascii_int, default=1,
                   help="time the whole-model rows this many times (default 1, at most 100); "
                        "report the median run (for an even count the upper middle one)")
    s.add_argument("--allocator", default="retain",
                   help="retain (default): glibc keeps freed blocks for reuse, for dense and "
                        "compiled alike (laudtriton.runtime); default: leave the C allocator as is")
    s.add_argument("--processes", type=ascii_int, default=1,
                   help="run the benchmark in this many fresh processes, one after another "
                        "(per-block rows from the first only), and summarise the whole-model "
                        "rows over all of them; --csv then holds every process's rows (default 1, "
                        "at most 100)")
    s.add_argument("--csv", default=None, help="write every row to this CSV file")
    s.add_argument("--no-progress", action="store_true",
                   help="no progress bar on stderr")
    s.set_defaults(func=cmd_bench, bench_parser=s)
    return s


def check_cache_env(tune: str) -> None:
    """A bad $LAUDTRITON_CACHE or $LAUDTRITON_CACHE_DIR (tune not "off"): a ValueError now,
    not after the model's build and calibration (``demo`` found it at step 3 of 4)."""
    if tune != "off":
        from .tune.keys import cache_enabled_from_env, default_cache_dir

        default_cache_dir()
        cache_enabled_from_env()


# the largest counts bench and demo take: more runs for hours or days (demo --reps 1e12
# compiled, checked, then timed without end; --repeat and --processes passed any value)
MAX_COUNTS = {"reps": 10000, "repeat": 100, "processes": 100}


def check_counts(args: argparse.Namespace, *names: str) -> None:
    """Each named option (``--reps``, ``--repeat``, ...) must be an integer >= 1, and at
    most its ``MAX_COUNTS`` entry where it has one."""
    for name in names:
        value, top = getattr(args, name), MAX_COUNTS.get(name)
        flag = f"--{name.replace('_', '-')}"
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
        if top is not None and value > top:
            raise ValueError(f"{flag} must be at most {top}, got {value}")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``laudtriton bench``: check every option, then ``bench.bench`` in this process
    (it prints a table per rate), or with --processes > 1 in that many fresh processes
    one after another (``bench_report.run_processes``; its summary is printed); write every row
    to --csv when given. Returns 0, or 1 when a child process failed (one line on stderr),
    or 130 on Ctrl-C (or SIGTERM, which ``cli.main`` turns into it; the children of
    --processes stopped too): one line on stderr says --csv was not written (it is
    written at the end only, atomically: the old file is left as it was) and that the
    tables printed hold the rates finished.

    Raises:
        ValueError: naming the first bad option (--batch, --reps, --repeat, --processes,
            --threads, --allocator, --csv, --rates, --mode, --granularity,
            --channel-granularity, or the cache's environment variables; --reps with
            --batch whose fresh inputs would fill half the memory: ``check_fresh_inputs``),
            or --batch and --reps when the C allocator refuses the memory
            (``tune.options.out_of_memory``).
    """
    from . import runtime
    from .bench import check_fresh_inputs
    from .bench_report import HANDOFF_ENV, ProcessFailed, write_csv
    from .tune.keys import default_cache_dir
    from .tune.layout_options import check_layout_options
    from .tune.options import check_batch, fail, parse_rates
    from .tune.paths import check_not_cache_file, check_output_path

    check_batch(args.batch)
    check_counts(args, "reps", "repeat", "processes")
    check_fresh_inputs(args.batch, args.reps)
    cpus = usable_cpus()
    if not 0 <= args.threads <= cpus:  # more oversubscribes the cores: dense and compiled
        # slow down unequally (4 threads on 2 cores: dense 60-72 -> 120 ms, ratio 1.2 -> 1.09)
        raise ValueError(f"--threads must be in [0, {cpus}] (0: keep this process's count; "
                         f"at most the {cpus} CPUs this process may run on), got {args.threads}")
    if args.allocator not in runtime.SETTINGS:
        raise ValueError(f"--allocator must be 'retain' or 'default', got {args.allocator!r}")
    if args.csv:  # '--csv=~/x' reaches us without a shell's expansion
        args.csv = os.path.expanduser(args.csv)
    check_output_path(args.csv, "--csv")
    if args.csv:  # not over a file of the cache folder (tune "off": if it has a valid one)
        try:
            cache_dir = default_cache_dir()
        except ValueError:  # a bad $LAUDTRITON_CACHE_DIR (check_cache_env refuses it
            pass  # unless --tune off): no folder to keep
        else:
            check_not_cache_file(args.csv, "--csv", cache_dir)
    rates = parse_rates(args.rates)
    check_layout_options(args)
    check_cache_env(args.tune)
    if args.reps < 20 and not os.environ.get(HANDOFF_ENV):  # once, not in every process
        print(f"laudtriton bench: note: --reps {args.reps}: medians of fewer than 20 runs "
              "(BENCHMARKS.md uses 20); the CSV's reps column records it", file=sys.stderr)
    try:  # Ctrl-C, or SIGTERM (``cli.main``): the children of --processes stopped,
        # their files removed, and a CSV cut short not left as a temp file beside it
        with torch_threads(args.threads):
            rows = _run(args, rates)
            if args.csv:
                try:  # (checked before the run; a disk that filled meanwhile is said so)
                    write_csv(rows, args.csv)
                except OSError as e:
                    raise ValueError(f"--csv {args.csv!r} cannot be written "
                                     f"({e.strerror or e}); the table above has the "
                                     "results") from None
    except ProcessFailed as e:
        return fail("bench", str(e), code=1)
    except KeyboardInterrupt:  # the CSV is written at the end only (atomically): say so
        if os.environ.get(HANDOFF_ENV):  # a child of run_processes: its parent says it
            return 130
        kept = ("no --csv asked for" if not args.csv else
                f"--csv {args.csv!r} not written ("
                + ("left as it was" if os.path.exists(args.csv) else "no file made") + ")")
        print(f"laudtriton bench: interrupted: {kept}; the tables above hold the rates "
              "finished", file=sys.stderr)
        return 130
    if args.csv and not os.environ.get(HANDOFF_ENV):  # a child's: a temporary file
        print(f"wrote {args.csv}")
    return 0


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to n (0: left as they are) inside the block, and back
    to their count before it after (a caller of ``main``, a test or a script, kept
    ``bench --threads``' count, and timed and fingerprinted with it)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(args: argparse.Namespace, rates: list[float]) -> list:
    """``cmd_bench``'s run, its options checked: ``bench.bench`` in this process, or with
    --processes > 1 ``bench_report.run_processes`` (its summary printed); returns the
    rows (BenchRow), or raises ProcessFailed (a child failed) or ValueError (the C
    allocator refused --batch with --reps)."""
    from .bench import bench
    from .tune.options import out_of_memory

    if args.processes > 1:
        from .bench import build_model
        from .bench_report import process_summary, run_processes

        # a bad --mode or --granularity: one line here, not an error in a child process
        build_model(args.model, args.mode, args.granularity, args.channel_granularity)
        rows = run_processes(_bench_argv(args), args.processes, verbose=args.verbose)
        print(process_summary(rows))
        return rows
    try:
        return bench(args.model, args.mode, args.granularity, rates, args.batch,
                     args.channel_granularity, reps=args.reps, tune=args.tune,
                     blocks=not args.model_only, repeat=args.repeat,
                     allocator=args.allocator, progress=not args.no_progress)
    except RuntimeError as e:  # the C allocator's refusal: a batch that does not fit
        raise out_of_memory(e, f"--batch {args.batch} with --reps {args.reps}") from None


def _bench_argv(args) -> list[str]:
    """bench's options as parsed, for a child process (every option of the bench
    subcommand's parser but --csv, --processes and -v, which run_processes passes)."""
    argv = []
    for action in args.bench_parser._actions:
        if not action.option_strings or action.dest in ("help", "csv", "processes", "verbose"):
            continue
        value = getattr(args, action.dest)
        if action.nargs == 0:  # a flag
            argv += [action.option_strings[0]] if value else []
        elif value is not None:  # one word: a value may start with '-' ('-0.0,0.5')
            argv.append(f"{action.option_strings[0]}={value}")
    return argv
