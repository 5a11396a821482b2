"""The ``laudtriton`` command: demo | bench | sweep | plot | cache | predict | calibrate |
design | env | gpucheck. User errors print one line and exit with code 2, no traceback."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import logging
import os
import platform
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import NoReturn

from .bench_command import add_bench_parser, check_cache_env, check_counts
from .runtime import usable_cpus
from .tune.layout_options import add_layout_options, check_layout_options, options_read
from .tune.numbers import ascii_float, ascii_int

# Subcommands provided by other modules: (module, add-parser function, run function).
EXTERNAL = {
    "sweep": ("laudtriton.tune.commands", "add_sweep_parser", "run_sweep"),
    "cache": ("laudtriton.tune.cache_command", "add_cache_parser", "run_cache"),
    "plot": ("laudtriton.plot_command", "add_plot_parser", "run_plot"),
    "predict": ("laudtriton.predict.commands", "add_predict_parser", "run_predict"),
    "calibrate": ("laudtriton.predict.commands", "add_calibrate_parser", "run_calibrate"),
    "design": ("laudtriton.predict.design_command", "add_design_parser", "run_design"),
    "gpucheck": ("laudtriton.gpucheck.command", "add_parser", "run"),
}


def cpu_count_text() -> str:
    """The machine's CPU count, and the CPUs this process may run on where fewer
    (``usable_cpus``: ``taskset``, a container's cpuset), which ``bench --threads`` is
    checked against."""
    total, usable = os.cpu_count() or 1, usable_cpus()
    return str(total) if usable >= total else f"{total} ({usable} usable by this process)"


def _allocator() -> str:
    from .runtime import glibc_version

    ver = glibc_version()
    return "not glibc" if ver is None else (
        f"glibc {ver} (laudtriton bench retains freed memory unless --allocator default)")


def cmd_env(args: argparse.Namespace) -> int:
    """Run ``laudtriton env``: print one line each for the Python, torch, Triton and
    laudtriton versions, the device (cuda if available, else cpu) and the fingerprint that
    names its cache file, torch's threads, the CPU count (and the CPUs this process
    may use, where fewer), the autotune cache directory (or
    what disables it) and the C allocator. Returns 0; ``args`` is not read. A cache that
    cannot be opened is reported in its line, not raised."""
    import torch

    from . import __version__

    try:
        import triton

        triton_v = triton.__version__
    except ImportError:
        triton_v = "not installed"
    try:
        from .tune.cache import TuneCache
        from .tune.keys import disabled_by

        tc = TuneCache(device="cpu")
        cache = str(tc.dir) if tc.enabled else (
            f"disabled by {disabled_by()} (else {tc.dir})")
    except Exception as e:  # the cache module reports its own problems
        cache = f"unavailable ({e})"
    from .tune.keys import device_fingerprint

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rows = [("python", platform.python_version()), ("torch", torch.__version__),
            ("triton", triton_v), ("laudtriton", __version__),
            ("device", f"{dev}: {device_fingerprint(dev)} (names its cache file)"),
            ("threads", str(torch.get_num_threads())), ("cpu count", cpu_count_text()),
            ("cache dir", cache), ("allocator", _allocator())]
    for k, v in rows:
        print(f"{k:<11} {v}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run ``laudtriton demo``: build LAUD-ResNet-50 with random weights, laid out by
    ``args.mode``, ``args.granularity`` and ``args.channel_granularity`` (bench's layout
    options, ``tune.layout_options``; by default spatial masks, 4-4-2-1), calibrate its
    maskers to ``args.rate`` on one [args.batch, 3, 224, 224] input, compile it for
    the CPU (``args.tune``), check the compiled logits against the reference's, and print
    the medians (ms) of ``args.reps`` interleaved runs of the dense baseline (the faster
    of its two forms), the masked-dense reference and the compiled model; after the
    calibration, a note where the masks realise another rate than asked
    (``bench.calibration_note``: a layer gate at batch 1 is on or off). Its input is
    drawn from torch's generator seeded with 0, on a fork (``torch.random.fork_rng``):
    the caller's generator is left as it was. Returns 0, or
    130 on Ctrl-C (or SIGTERM, which ``main`` turns into it), after one line; with tune
    "quick" or "full" it says the blocks timed so far are in the autotune cache.

    Raises:
        ValueError: --reps outside [1, 10000], --batch outside [1, 4096], --rate outside
            [0, 1], a bad --mode, --granularity or --channel-granularity
            (``check_layout_options``: also one the mode does not read), or (tune not
            "off") a bad $LAUDTRITON_CACHE or $LAUDTRITON_CACHE_DIR, before the model is
            built; a --batch whose memory the allocator refuses
            (``tune.options.out_of_memory``).
        AssertionError: if the compiled logits are not close to the reference's.
    """
    from .tune.options import check_batch, out_of_memory

    check_counts(args, "reps")
    check_batch(args.batch)
    if not 0.0 <= args.rate <= 1.0:
        raise ValueError(f"--rate must be in [0, 1], got {args.rate}")
    args.model = "laud_resnet50"  # what is built, and what the layout is checked against
    check_layout_options(args)
    check_cache_env(args.tune)
    import torch

    try:  # its seeded draws on a fork: a Python caller's generator is left as it was
        with torch.random.fork_rng(devices=[]):
            return _demo(args)
    except RuntimeError as e:  # the allocator's refusal, named by its option
        raise out_of_memory(e, f"--batch {args.batch}") from None
    except KeyboardInterrupt:  # or SIGTERM (``main``): a cache write is not cut short
        from .tune.keys import cache_enabled_from_env

        # what compile writes to the cache (unless $LAUDTRITON_CACHE disables it)
        timed = args.tune in ("quick", "full") and cache_enabled_from_env()
        print("laudtriton demo: interrupted" + (
            "; the blocks timed so far are in the autotune cache" if timed else ""),
            file=sys.stderr)
        return 130


def _demo(args: argparse.Namespace) -> int:
    """``cmd_demo``'s steps, its options checked; returns 0."""
    import torch

    from .baseline import dense_forms, time_against_dense
    from .bench import build_model, calibration_note
    from .compile import compile
    from .nn import calibrate_rates
    from .testing import assert_close, logits_agreement

    t0 = time.perf_counter()
    torch.manual_seed(0)
    print(f"1/4 building LAUD-ResNet-50 ({layout_words(args)}, random weights)")
    model = build_model(args.model, args.mode, args.granularity, args.channel_granularity)
    x = torch.randn(args.batch, 3, 224, 224)
    print(f"2/4 calibrating every masker to activation rate {args.rate}")
    note = calibration_note(model, calibrate_rates(model, x, args.rate), args.rate, args.batch)
    if note:  # (a layer gate at batch 1 is on or off: 0.5 lands on 0)
        print(f"    note: {note}")
    with torch.no_grad():
        ref = model(x)
    print(f"    FLOPs ratio {float(model.last_stats.flops_ratio):.3f} of the dense network")
    print(f"3/4 compiling for this machine (tune={args.tune})")
    cm = compile(model, x, backend="cpu", tune=args.tune)
    print(cm.plan)
    with torch.no_grad():
        out = cm(x)
    assert_close(out, ref, name="compiled logits")
    err, top1 = logits_agreement(out, ref)
    print(f"    compiled logits == reference logits (max rel. error {err:.2e}); "
          f"same top-1: {top1 == 1.0}")
    print(f"4/4 timing dense vs compiled ({args.reps} interleaved runs, batch {args.batch}, "
          f"{torch.get_num_threads()} threads)")
    with torch.no_grad():  # both dense forms timed; the faster is the baseline
        fmt, td, (tc, tr) = time_against_dense(
            {n: lambda m=m: m(x) for n, m in dense_forms(model).items()},
            [lambda: cm(x), lambda: model(x)], warmup=2, reps=args.reps)
    rows = [(f"dense ResNet-50 ({fmt}, folded BN)", td, ""),
            ("LAUD reference (masked dense)", tr, f"  ({tr / td:.2f}x dense)"),
            ("laudtriton compiled", tc, f"  ({tc / td:.2f}x dense)")]
    width = max(len(label) for label, _, _ in rows)
    for label, t, ratio in rows:  # aligned whichever dense form was faster
        print(f"    {label:<{width}} {t * 1e3:8.2f} ms{ratio}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


def layout_words(args: argparse.Namespace) -> str:
    """The demo's layout as its first step names it: the mode, then the granularity and
    the channel granularity where a stage of that mode reads them
    (``tune.layout_options.options_read``): "spatial, granularity 4-4-2-1", "channel,
    channel granularity 2", "layer"."""
    read = options_read(args.mode, args.granularity, args.channel_granularity)
    return ", ".join([args.mode, *(f"{flag[2:].replace('-', ' ')} {value}"
                                   for flag, value in read.items())])


def _unavailable(name: str, why: str, args) -> int:
    print(f"laudtriton {name}: error: this command cannot run here: {why}", file=sys.stderr)
    return 2


def _version() -> str:
    from . import __version__

    return __version__


class OneLineErrors(argparse.ArgumentParser):
    """argparse's parser with its errors in one line, not after a usage block of up to
    nine: the CLI's promise (the module docstring). Its subcommands' parsers too."""

    def error(self, message: str) -> NoReturn:
        """Exit with code 2 after one line on stderr: ``<prog>: error: <message>`` and a
        pointer to ``<prog> --help`` (argparse's own prints the usage block first). An
        option said to have no value gets a hint: argparse takes a value that starts with
        '-' and is not a plain negative number ('-inf', '-1e-3') for an option.

        Raises:
            SystemExit: always, with code 2.
        """
        lacking = re.fullmatch(r"argument (\S+): expected one argument", message)
        if lacking:
            opt = lacking[1].split("/")[-1]  # '-v/--verbose': the long form
            message += f"; a value that starts with '-' is given as {opt}=VALUE"
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` for usage)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``laudtriton`` parser: env and demo defined here, bench by ``bench_command``,
    the subcommands of ``EXTERNAL`` added by their modules (one whose module fails to
    import becomes a stub that exits 2 saying why), each with ``func`` set to the function
    that runs it; on every subcommand no abbreviated options, and -v accepted after the
    command name."""
    p = OneLineErrors(
        prog="laudtriton", allow_abbrev=False,
        description="Compile LAUDNet dynamic networks into sparse execution, and measure "
                    "it: demo, bench, sweep, plot, cache, predict, calibrate, design, env, "
                    "gpucheck. `laudtriton COMMAND --help` for each. A bad argument exits "
                    "with code 2 and a message, no traceback.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.add_argument("--version", action="version", version=f"laudtriton {_version()}")
    # required, but checked in ``main`` after the unknown options: "--vers" alone is
    # reported as unrecognized, not as a missing command
    sub = p.add_subparsers(dest="command", required=False)

    s = sub.add_parser("env", help="versions, C library, CPUs, threads, allocator, device, cache "
                                       "directory")
    s.set_defaults(func=cmd_env)

    s = sub.add_parser("demo", help="LAUD-ResNet-50 at rate 0.5: compile, check, time")
    add_layout_options(s)  # bench's --mode, --granularity, --channel-granularity
    s.add_argument("--rate", type=ascii_float, default=0.5,
                   help="activation rate the maskers are calibrated to (default 0.5)")
    s.add_argument("--tune", default="cached", choices=["cached", "quick", "full", "off"],
                   help="how compile picks each block's variant (default: cached)")
    s.add_argument("--reps", type=ascii_int, default=20,
                   help="timed runs of each model (default 20, at most 10000)")
    s.add_argument("--batch", type=ascii_int, default=1,
                   help="images per forward, calibration included (default 1; layer "
                        "skipping's target is at 8)")
    s.set_defaults(func=cmd_demo)

    add_bench_parser(sub)

    for name, (mod, add, run) in EXTERNAL.items():
        try:
            module = importlib.import_module(mod)
        except ImportError as e:  # say why when it is asked for, not "invalid choice"
            # no option prefix: every word after the name is taken, whatever it is
            s = sub.add_parser(name, help=f"(unavailable: {e})", add_help=False,
                               prefix_chars="\0")
            s.add_argument("rest", nargs="*")
            s.set_defaults(func=functools.partial(_unavailable, name, str(e)))
            continue
        getattr(module, add)(sub)
        sub.choices[name].set_defaults(func=getattr(module, run))
    _every_command(sub)
    return p


def _every_command(sub) -> None:
    """On every subcommand (and theirs): no abbreviated options (``design --granularity``
    was taken for ``--granularities``), and ``-v`` after the command name as before it."""
    for q in sub.choices.values():
        if q.prefix_chars != "-":  # an unavailable command's stub takes every word
            continue
        q.allow_abbrev = False
        if not any("-v" in a.option_strings for a in q._actions):
            q.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="log at INFO level (as laudtriton -v)")
        for a in q._actions:
            if isinstance(a, argparse._SubParsersAction):
                _every_command(a)


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace
               ) -> argparse.ArgumentParser:
    """The parser of the (sub)subcommand that ``args`` ran: ``laudtriton cache ls``'s for
    ``cache ls``, whose usage a malformed command line points to."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[name]


def main(argv: list[str] | None = None) -> int:
    """The ``laudtriton`` command on ``argv`` (None: sys.argv[1:]); returns the exit code:
    the subcommand's, 2 after one line on stderr for a ValueError or OSError (a bad
    option, a path that cannot be read or written), 141 when stdout was closed early
    (``| head``), 130 on Ctrl-C or SIGTERM (``sigterm_interrupts``: the command stops as
    on Ctrl-C, and says what it kept, or "laudtriton <command>: interrupted" is printed
    for it). A malformed command line, --help and --version exit
    inside argparse (SystemExit; code 2 for a malformed one), before any subcommand runs;
    no command at all is a malformed one, whose line lists the commands."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:  # the commands named: `laudtriton` alone listed none
        commands = ", ".join(next(a for a in parser._actions
                                  if isinstance(a, argparse._SubParsersAction)).choices)
        parser.error(f"unrecognized arguments: {' '.join(extra)}" if extra
                     else f"the following arguments are required: command, one of "
                          f"{commands}")
    if extra:  # said by the (sub)subcommand's parser: "laudtriton cache ls: error: ...",
        # unless one came before the subcommand ("laudtriton --bogus env")
        words = sys.argv[1:] if argv is None else list(argv)
        first = words.index(args.command) if args.command in words else 0
        before = any(w in extra for w in words[:first])
        (parser if before else _innermost(parser, args)).error(
            f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        with sigterm_interrupts():
            return int(args.func(args) or 0)
    except BrokenPipeError:  # stdout closed early (``| head``): not a user error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        return 141  # 128 + SIGPIPE, as a shell reports it
    except (ValueError, OSError) as e:  # OSError: a path that cannot be read or written
        from .tune.options import fail

        return fail(args.command, str(e))
    except KeyboardInterrupt:  # a command that says what it kept returns 130 itself
        print(f"laudtriton {args.command}: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside (in the main thread; elsewhere nothing
    changes), and the handler before it is back after. ``main`` runs every command in it,
    so a killed command stops as on Ctrl-C: ``sweep`` writes the CSV of what it timed,
    ``bench`` stops its child processes and removes their files, ``plot`` removes the
    --out folder it made; each says so. (``gpucheck`` sets its own handler inside.) A
    SIGTERM that the process was started to ignore stays ignored, as Python leaves an
    ignored SIGINT."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN):
        yield
        return

    def interrupt(signum: int, frame: object) -> NoReturn:
        """SIGTERM's handler: raise KeyboardInterrupt where the main thread is."""
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":
    sys.exit(main())
