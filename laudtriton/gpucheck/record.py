"""The record of one gpucheck run: ``Run`` (its checks, timing rows, machine info and
progress lines, its time box), ``describe`` (an exception in one line), ``save``
(timings.csv and summary.json so far) and ``Terminated`` (a SIGTERM or the watchdog's
alarm: the run stops and keeps what it gathered), ``console`` (a line printed, surviving
a console that went away); ``TableRun``, a Run of table rows and
recorded errors, for ``benchmarks/gpu_overhead.py``."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from ..gpureport import write_csv
from ..tune.atomic import write_json_atomic


class Run:
    """Collects checks, timing rows and printed lines of one gpucheck."""

    def __init__(self, out: Path, budget: float, device: str) -> None:
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
        # the check after whose failure CUDA stopped working (``_cuda_works``): every
        # later check is recorded as not run (it would fail alike, and read as a defect)
        self.broken: str | None = None
        # the checks running now, outermost first (a part, then its item): a run stopped
        # by a signal names them; each is also logged as it starts, for a SIGKILL
        self.running: list[str] = []
        self.log = out / LOG_NAME

    def left(self) -> float:
        """Seconds left until the run's deadline (its start + the budget); negative past
        it."""
        return self.deadline - time.perf_counter()

    def say(self, text: str) -> None:
        """Print a progress line, and append it to ``gpucheck.log`` in the output folder
        (the run's whole story, where a console keeps only its end); printed by
        ``console``: a console that went away does not stop the run."""
        line = f"[{time.perf_counter() - self.t0:6.1f}s] {text}"
        console(line)
        self.note(line, stamp=False)

    def note(self, text: str, stamp: bool = True) -> None:
        """Append a line to ``gpucheck.log`` only (not printed): stamp it with the
        seconds since the start unless ``stamp`` is False."""
        line = f"[{time.perf_counter() - self.t0:6.1f}s] {text}" if stamp else text
        with contextlib.suppress(OSError), open(self.log, "a") as fh:
            fh.write(line + "\n")

    def check(self, name: str, fn: Callable[[], object], until: float | None = None,
              quiet: bool = False) -> bool:
        """Run ``fn`` and record a pass or a failure (with its error and the end of its
        traceback, for summary.json). until: a perf_counter time after which the check is
        not run but recorded as not run (a time box). Its start is logged (``note``) and
        it is in ``running`` while it runs. quiet: record and print failures
        only. A SIGTERM (``Terminated``) is not a failed check: it stops the run. On
        CUDA a failure is followed by a probe of the device (``_cuda_works``): if it
        fails, ``broken`` names this check and later ones are recorded as not run."""
        if self.broken is not None:
            self.not_run(name, f"CUDA stopped working after {self.broken}")
            return False
        if until is not None and time.perf_counter() > until:
            self.not_run(name, "time box")
            return False
        self.running.append(name)  # left there by a signal (``Terminated``) only
        self.note(f"start {name}")
        try:
            fn()
            ok, err, tb = True, "", ""
        except Exception as e:  # a failed check is a result, not a crash
            ok, err = False, describe(e)
            tb = "\n".join(traceback.format_exc().strip().splitlines()[-TRACEBACK_LINES:])
        self.running.pop()
        if ok and quiet:
            return True
        self.checks.append({"check": name, "ok": ok, "error": err}
                           | ({"traceback": tb} if tb else {}))
        self.say(f"{'PASS' if ok else 'FAIL'} {name}{'' if ok else '  ' + err}")
        if not ok and self.device.startswith("cuda") and not _cuda_works():
            self.broken = name
            self.say(f"CUDA no longer works after {name}: the checks after it are "
                     "recorded as not run")
        return ok

    def not_run(self, name: str, why: str) -> None:
        """Record ``name`` as a check not run (not a pass), and why."""
        self.checks.append({"check": name, "ok": False, "error": f"not run: {why}"})
        self.say(f"SKIP {name}  ({why})")


TRACEBACK_LINES = 30  # of a failed check's traceback, kept in summary.json
LOG_NAME = "gpucheck.log"  # progress lines and the library's warnings, in --out
SAVED_NAMES = ("timings.csv", "summary.json")  # what ``save`` writes there


def console(line: str) -> None:
    """Print ``line`` to stdout, flushed, never raising an OSError (a BrokenPipeError
    lost a stopped run's report): where stdout has gone away (EPIPE: its reader, a
    ``| tee``, killed with the run by a time limit; EIO: a terminal hung up), stdout is
    pointed at os.devnull, so the run goes on and writes its files and gpucheck.log
    (every line is there), and its exit code stays its own (not 120 for a stdout
    unflushed at exit); on another error (EAGAIN) the line is left out."""
    try:
        print(line, flush=True)
    except OSError as e:
        if e.errno not in (errno.EPIPE, errno.EIO):
            return
        with contextlib.suppress(OSError, ValueError):  # ValueError: no file descriptor
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, sys.stdout.fileno())  # what is still buffered goes there
            finally:
                os.close(null)


def describe(e: BaseException) -> str:
    """One line for an exception: its type, its message's first line and, for a message
    of several lines, its last one too (a Triton CompilationError starts with the source
    position and ends with the cause); its type alone when it has no message."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return f"{type(e).__name__}: {text[:300]}"


class Terminated(BaseException):
    """SIGTERM during a run (a time limit): the run stops and writes what it gathered. A
    BaseException, so that no handler of a failed check or timing (``except Exception``)
    takes it for one and carries on."""


def save(r: Run, out: Path) -> None:
    """Write timings.csv and summary.json of what ``r`` gathered so far: after each part,
    so that a run stopped by its time limit still leaves its results."""
    csv_name, summary_name = SAVED_NAMES
    write_csv(r.rows, out / csv_name)
    summary = {"info": r.info, "checks": r.checks, "seconds": time.perf_counter() - r.t0}
    write_json(out / summary_name, summary)


def write_json(path: Path, data: object) -> None:
    """``data`` as JSON at ``path``, in its own key order (what JSON cannot hold as its
    str; a NaN or infinite float as "nan", "inf" or "-inf": JSON has no such numbers,
    and a bare NaN token failed strict readers, jq's and JavaScript's among them),
    atomically (``tune.atomic.write_json_atomic``): a run killed while it writes leaves
    the last whole file."""
    write_json_atomic(path, _finite(data), sort_keys=False, default=str)


def _finite(data: object) -> object:
    """``data`` with every float that is not finite, in its dicts, lists and tuples,
    as its str ("nan", "inf", "-inf"); the rest as it was."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


class TableRun(Run):
    """A ``Run`` whose rows are a table of given ``fields``, written to ``<name>.csv`` and
    ``<name>.json`` (info, errors, skips) in ``out`` by ``write``; ``attempt`` runs an
    item and records its error instead of stopping; ``broken`` names the item after which
    CUDA stopped working (the callers then stop: every later item would fail alike).
    ``benchmarks/gpu_overhead.py`` keeps its rows this way."""

    def __init__(self, out: Path, budget: float, device: str, fields: tuple[str, ...],
                 name: str) -> None:
        super().__init__(out, budget, device)
        self.fields, self.name = fields, name
        self.log = out / f"{name}.log"
        self.errors: list[dict] = []
        self.skipped: list[str] = []

    def attempt(self, item: str, fn: Callable[[], object]) -> object:
        """fn(), or None with its error (``describe``, and the end of its traceback)
        recorded and printed; on CUDA, a failure is followed by a probe of the device,
        and ``broken`` is set to ``item`` if the probe fails."""
        try:
            return fn()
        except Exception as e:  # a failed item is a result, not a crash
            self.errors.append({"item": item, "error": describe(e), "traceback": "\n".join(
                traceback.format_exc().strip().splitlines()[-TRACEBACK_LINES:])})
            self.say(f"ERROR {item}: {describe(e)}")
            if self.device.startswith("cuda") and self.broken is None and not _cuda_works():
                self.broken = item
                self.say(f"CUDA no longer works after {item}: the run stops here")
            return None

    def skip(self, item: str, why: str) -> None:
        """Record ``item`` as not run, and why."""
        self.skipped.append(f"{item}: {why}")
        self.say(f"SKIP {item} ({why})")

    def write(self) -> None:
        """``<name>.csv`` (the rows, one column per field) and ``<name>.json`` (info,
        errors, skips, seconds so far) in ``out``."""
        self.out.mkdir(parents=True, exist_ok=True)
        write_csv(self.rows, self.out / f"{self.name}.csv", self.fields)
        write_json(self.out / f"{self.name}.json",
                   {"info": self.info, "errors": self.errors, "skipped": self.skipped,
                    "seconds": time.perf_counter() - self.t0})


def _cuda_works() -> bool:
    """Whether a tiny CUDA op still runs and syncs (after a kernel's fault it does not)."""
    import torch

    try:
        torch.ones(1, device="cuda").add_(1)
        torch.cuda.synchronize()
        return True
    except Exception:  # noqa: BLE001 - any failure means no
        return False
