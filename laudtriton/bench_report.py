"""What ``laudtriton bench`` reports: :class:`BenchRow`, the table (:func:`format_rows`),
the CSV (:func:`write_csv`, :func:`read_csv`), and the runs of several processes
(:func:`run_processes`, :func:`process_summary`). The timing itself is
:mod:`laudtriton.bench`'s."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .runtime import exit_text
from .tune.atomic import atomic_text

# set in the environment of the children of ``run_processes``: their --csv is a temporary
# file handed to the parent, which reports the rows itself
HANDOFF_ENV = "LAUDTRITON_BENCH_HANDOFF"


@dataclass
class BenchRow:
    """One row of the bench table (times in ms)."""

    model: str
    mode: str
    granularity: str
    batch: int
    rate: float
    block: str
    spec: str
    variant: str
    dense_ms: float
    sparse_ms: float
    ratio: float
    flops_ratio: float
    efficiency: float
    runs: tuple[float, ...] = ()  # whole-model rows: the ratio of every repeat, in order
    allocator: str = "default"  # runtime.allocator_setting() during the run
    process: int = 1  # which process of ``run_processes`` measured it
    # the run's other settings; "" and 0 in rows read from CSVs written before session 20
    channel_granularity: str = ""  # as given ("2", "2-2-4-4")
    threads: int = 0  # torch.get_num_threads() during the run
    tune: str = ""  # compile's tune mode
    reps: int = 0  # timed runs per median (0 in rows read from CSVs before session 26)
    # the rate the masks realised (a block row: the block's, on its calibration input; a
    # whole-model row: the mean over the blocks, for a new input every call also over the
    # timed inputs), where ``rate`` is the one asked; NaN in CSVs before session 39
    realised_rate: float = math.nan
    # the dense form dense_ms timed, the faster in that row's run: "nchw" or
    # "channels_last" (``baseline.dense_forms``); "" in CSVs before session 67
    dense_form: str = ""


def rate_text(rate: float) -> str:
    """A rate as the tables print it: two decimals (0.50), more where two would round it
    (0.125, not 0.12)."""
    two = f"{rate:.2f}"
    return two if float(two) == rate else f"{rate:g}"


def _rate_width(rows: list[BenchRow]) -> int:
    """The width of a table's rate column: its widest ``rate_text``, at least 5 (0.123457
    is 8 wide: a column of 5 pushed the rest of its line to the right)."""
    return max([5, *(len(rate_text(r.rate)) for r in rows)])


def format_rows(rows: list[BenchRow]) -> str:
    """The bench table of ``rows``: a header, a rule, then one line per row (times in ms,
    the rate as ``rate_text`` prints it, the rate column as wide as the widest rate and
    at least 5, the spec column as wide as the longest spec and at least 34); a row of
    more than one run ends with the ratio of every run."""
    w = max([34, *(len(r.spec) for r in rows)])  # the whole spec, as the CSV has it
    rw = _rate_width(rows)
    head = (f"{'rate':>{rw}} {'block':<10} {'spec':<{w}} {'variant':<10} {'dense ms':>9} "
            f"{'sparse ms':>9} {'ratio':>6} {'FLOPs':>6} {'eff':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{rate_text(r.rate):>{rw}} {r.block:<10} {r.spec:<{w}} {r.variant:<10} "
                     f"{r.dense_ms:>9.3f} {r.sparse_ms:>9.3f} {r.ratio:>6.3f} "
                     f"{r.flops_ratio:>6.3f} {r.efficiency:>5.2f}"
                     + (f"  runs {', '.join(f'{v:.3f}' for v in r.runs)}"
                        if len(r.runs) > 1 else ""))
    return "\n".join(lines)


def write_csv(rows: list[BenchRow], path: str | Path) -> None:
    """Write ``rows`` to the CSV file ``path`` (replaced if it exists): a column per
    BenchRow field, ``runs`` joined by ';' (``read_csv`` reads it back); no rows, the
    header alone. Written beside it and moved over it (``tune.atomic.atomic_text``): a
    write cut short (a full disk, Ctrl-C) leaves the file as it was, not truncated."""
    with atomic_text(path) as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(BenchRow)])
        w.writeheader()
        for r in rows:
            w.writerow({**asdict(r), "runs": ";".join(repr(v) for v in r.runs)})


def read_csv(path: str | Path) -> list[BenchRow]:
    """The rows ``write_csv`` wrote to ``path`` (a column a CSV lacks, from before it
    existed, reads as its default: ``process`` 1, ``channel_granularity`` "", ``threads``
    0, ``tune`` "", ``reps`` 0, ``realised_rate`` NaN, ``dense_form`` "")."""
    out = []
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            kw = {}
            for fd in fields(BenchRow):  # fd.type is the annotation's text
                v = rec.get(fd.name)
                if v is None:
                    continue
                if fd.name == "runs":
                    kw["runs"] = tuple(float(t) for t in v.split(";") if t)
                else:
                    kw[fd.name] = {"int": int, "float": float, "str": str}[fd.type](v)
            out.append(BenchRow(**kw))
    return out


# -- several processes ---------------------------------------------------------------
# On the shared 2-core VM of BENCHMARKS.md one process's whole-model ratios can sit
# apart from the next one's (spatial ResNet-101 at rate 0.5: 1.01 in some processes,
# 1.09 in others, each within 0.02), so a figure worth quoting comes from several.

class ProcessFailed(RuntimeError):
    """A child ``laudtriton bench`` process of ``run_processes`` exited with an error."""


def run_processes(argv: list[str], processes: int, log: Callable[[str], object] = print,
                  python: str = sys.executable, verbose: bool = False) -> list[BenchRow]:
    """``laudtriton bench <argv>`` in ``processes`` fresh Python processes, one after
    another (their output goes to this process's stdout); per-block rows come from the
    first one only (the others run ``--model-only``). Returns every process's rows, each
    with ``process`` set (1-based).

    argv: bench's options without ``--csv`` and ``--processes``. verbose: the children
    log at INFO level (``laudtriton -v``).

    Raises:
        ValueError: processes < 1, or argv holds --csv or --processes.
        ProcessFailed: a child exits with a non-zero status.
        KeyboardInterrupt: Ctrl-C (or SIGTERM, which the ``laudtriton`` command turns
            into it): the running child is killed first (``subprocess.run``) and the
            temporary folder of the children's CSVs removed.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    bad = [a for a in argv if a.split("=")[0] in ("--csv", "--processes")]
    if bad:
        raise ValueError(f"argv must not hold {bad[0].split('=')[0]}: run_processes sets it")
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="laudtriton-bench-") as tmp:
        for i in range(1, processes + 1):
            path = Path(tmp) / f"process{i}.csv"
            cmd = [python, "-m", "laudtriton", *(["-v"] if verbose else []), "bench", *argv,
                   "--csv", str(path)]
            if i > 1 and "--model-only" not in argv:
                cmd.append("--model-only")
            log(f"== process {i} of {processes}")
            sys.stdout.flush()
            rc = subprocess.run(cmd, env={**os.environ, HANDOFF_ENV: "1"}).returncode
            if rc != 0:  # 130: a child stopped by Ctrl-C or SIGTERM that the parent
                # did not get (else subprocess.run raised KeyboardInterrupt here)
                how = (f"was killed by {exit_text(rc)}" if rc < 0 else
                       "was interrupted (Ctrl-C or SIGTERM: status 130)" if rc == 130
                       else f"exited with status {rc}")
                raise ProcessFailed(f"process {i} of {processes} {how} (its output is "
                                    "above)")
            rows += [replace(r, process=i) for r in read_csv(path)]
    return rows


def process_summary(rows: list[BenchRow]) -> str:
    """The whole-model rows of several processes: per (rate, row), the median of every
    run's ratio over all processes (for an even count the upper of the two middle runs,
    as ``_median_run``: a measured run, the one less favourable to the compiled model),
    their range and count, and each process's reported (median-run) ratio in process
    order (the rate column as wide as the widest rate, as in ``format_rows``)."""
    groups: dict[tuple[float, str], list[BenchRow]] = {}
    for r in rows:
        if r.block == "model":  # "dense=<format>": the format may differ by process
            groups.setdefault((r.rate, r.spec.split("=")[0]), []).append(r)
    procs = sorted({r.process for r in rows})
    rw = _rate_width([r for r in rows if r.block == "model"])
    lines = [f"whole model over {len(procs)} processes: the median of every run's ratio "
             "(range, runs), then each process's median run",
             f"{'rate':>{rw}} {'row':<34} {'median (range, runs)':<26} per process"]
    for (rate, prefix), rs in groups.items():
        rs = sorted(rs, key=lambda r: r.process)
        every = [v for r in rs for v in (r.runs or (r.ratio,))]
        mid = (f"{sorted(every)[len(every) // 2]:.3f} ({min(every):.3f}-{max(every):.3f}, "
               f"{len(every)})")
        labels = list(dict.fromkeys(r.spec for r in rs))  # the dense forms the processes
        label = labels[0] if len(labels) == 1 else (  # timed against, each named
            prefix + "=" + "/".join(lb.split("=", 1)[1] for lb in labels))
        lines.append(f"{rate_text(rate):>{rw}} {label:<34} {mid:<26} "
                     + " ".join(f"{r.ratio:.3f}" for r in rs))
    return "\n".join(lines)
