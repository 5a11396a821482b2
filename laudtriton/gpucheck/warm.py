"""gpucheck's compiles first, in worker processes: part 2's checks and part 3's Triton
variants (``warm_block``, on random blocks of part 3's specs) run in spawned processes
until a deadline, for their Triton compiles alone, which land in Triton's on-disk cache
where the main process finds them; a check or variant that leaves CUDA broken in a
worker is recorded (``Run.sticky``, ``Run.deny``) and not run again in the main
process."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from ..gpureport import RATES
from ..runtime import exit_text, usable_cpus
from ..tune.measure import is_sticky
from .checks import part2_checks
from .record import Run, describe

if TYPE_CHECKING:
    from ..ops.spec import BlockSpec
    from .blocks import Blocks


# warm_block names each Triton variant here (DEBUG, ``variant`` in the record) before
# running it: a compile worker writes the name into its job's claim file, so that a
# variant that kills the worker outright (a segfault or abort in a compile) is known
_progress = logging.getLogger("laudtriton.gpucheck.warm")


class WarmError(RuntimeError):
    """A Triton variant's config failing in ``warm_block``; ``variant`` names it."""

    def __init__(self, variant: str, text: str) -> None:
        super().__init__(text)
        self.variant = variant


def _random_block(spec):
    """A LAUD block of ``spec``'s shape and configuration with random weights: what the
    Triton kernels compile for depends on shapes, dtypes and configs, not on values."""
    from ..ops import BlockSpec
    from ..testing import make_block

    g = spec.width // spec.channel_groups if spec.channel_groups else 1
    block = make_block(spec.in_channels, spec.width, spec.stride, spec.mode, spec.granularity,
                       channel_granularity=g, downsample=spec.downsample)
    made = BlockSpec.from_block(block, (spec.batch, spec.in_channels, *spec.in_hw), spec.dtype)
    if made != spec:
        raise ValueError(f"a random block of {spec.short()} came out as {made.short()}")
    return block


def warm_block(device: str, spec: BlockSpec, n_configs: int) -> None:
    """Run once, at each of part 3's rates, every config part 3 times (the first
    ``n_configs``) of each Triton variant of ``spec`` (float16, as part 3), for their
    compiles alone; a config that fails is not run at the later rates (as in part 3).
    Raises the first error (a WarmError naming its variant) after trying every config,
    or at once an error that leaves CUDA unusable (``is_sticky``)."""
    from ..ops import fold_block, variants_for
    from ..ops.synthetic import synthetic_masks

    fb = fold_block(_random_block(spec), torch.float16, device)
    x = torch.randn(spec.batch, spec.in_channels, *spec.in_hw).relu().to(device, torch.float16)
    x = x.contiguous(memory_format=torch.channels_last)
    at_rate = [synthetic_masks(spec, rate, seed=1, device=device) for rate in RATES]
    first = None
    for v in variants_for(spec, "cuda"):
        if not v.needs_triton:
            continue
        _progress.debug("warming %s", v.name, extra={"variant": v.name})
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
                    break  # a failed compile is not cached: the next rate would redo it
    if first is not None:
        raise first


def part3_warmups(blocks: Blocks, batches: list[int]) -> list[tuple[str, dict]]:
    """(name, spec as a dict) of part 3's blocks that have a Triton variant (layer
    blocks have none: nothing to compile), batch by batch as part 3 times them, for
    ``warm_block`` in the compile workers."""
    from ..ops import variants_for

    return [(f"warm b{b} {mode} {spec1.short()} #{i}", spec1.with_(batch=b).to_dict())
            for b in batches for i, (mode, _, spec1, _) in enumerate(blocks.values())
            if any(v.needs_triton for v in variants_for(spec1, "cuda"))]


class _ClaimNotes(logging.Handler):
    """A compile worker's note, in the claim file of the job it runs (``path``), of each
    variant ``warm_block`` is about to run: the last one is the one running when the
    worker died."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.path: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Append the record's ``variant`` to the claim file; a note that cannot be
        written (its folder gone) is dropped: the job itself must not fail for it."""
        variant = getattr(record, "variant", None)
        if variant and self.path is not None:
            with contextlib.suppress(OSError), open(self.path, "a") as fh:
                fh.write(f"{variant}\n")


def _claim(path: str) -> bool:
    """Claim a job: make ``path`` (O_EXCL: no two workers claim the same job) holding
    this process's id, for the main process to tell which worker ran it. False if
    another worker claimed it first."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return True


def _died_on(folder: str, n: int, procs: list, killed: set[int]
             ) -> dict[int, tuple[str, str]]:
    """{job: (the variant last named in its claim file, or "", the error)} of the jobs
    claimed and not done by a worker that ended on its own with a non-zero exit code (a
    segfault, an abort in a compile): run again in the main process, such a job would
    end the whole run. Workers in ``killed`` (ids of those killed at the deadline) are
    not counted: their jobs were cut short, not at fault."""
    died = {p.pid: p for p in procs if id(p) not in killed
            and getattr(p, "exitcode", None) not in (None, 0) and getattr(p, "pid", None)}
    out = {}
    for i in range(n):
        claim = os.path.join(folder, f"{i}.claim")
        if os.path.exists(os.path.join(folder, f"{i}.done")) or not os.path.exists(claim):
            continue
        with open(claim) as fh:
            lines = fh.read().split()
        proc = died.get(int(lines[0])) if lines and lines[0].isdigit() else None
        if proc is not None:
            out[i] = (lines[-1] if len(lines) > 1 else "",
                      f"the compile worker died running it ({exit_text(proc.exitcode)})")
    return out


def _warm_worker(device: str, names: list[str], folder: str, deadline: float,
                 part3: Sequence[tuple[str, dict]] = (), n_configs: int = 2,
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
    torch.set_num_threads(threads)
    notes = _ClaimNotes()  # this process's: the variants warm_block runs, per claim file
    kept = _progress.level, _progress.propagate
    _progress.addHandler(notes)
    _progress.setLevel(logging.DEBUG)
    _progress.propagate = False
    try:  # (removed after: a worker run in the caller's process left it writing there)
        _run_jobs(device, names, folder, deadline, part3, n_configs, notes)
    finally:
        _progress.removeHandler(notes)
        _progress.setLevel(kept[0])
        _progress.propagate = kept[1]


def _run_jobs(device: str, names: list[str], folder: str, deadline: float,
              part3: Sequence[tuple[str, dict]], n_configs: int, notes: _ClaimNotes) -> None:
    """``_warm_worker``'s loop over its jobs, each claim file named to ``notes`` first."""
    from ..kernelchecks import exact_fp32
    from ..ops import BlockSpec

    checks = dict(part2_checks(device))
    jobs = [checks.get(name, name) for name in names]
    jobs += [(BlockSpec.from_dict(d),) for _, d in part3]
    for i, job in enumerate(jobs):
        if time.time() > deadline:
            return
        notes.path = os.path.join(folder, f"{i}.claim")
        if not _claim(notes.path):
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


def warm_compiles(r: Run, until: float, jobs: int,
                  part3: Callable[[], Iterable[tuple[str, dict]]] | None = None,
                  n_configs: int = 2) -> int:
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
    threads = max(1, usable_cpus() // k)  # (--compile-jobs is bounded by it too)
    procs, killed = [], set()
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
                        killed.add(id(p))
                for p in procs:
                    p.join(timeout=10)
            errors, variants = {}, {}
            for i in range(n):
                path = os.path.join(folder, f"{i}.done")
                if os.path.exists(path):
                    with open(path) as fh:
                        variants[i], _, errors[i] = fh.read().partition("\n")
            # a job that killed its worker outright: not run again here (treated as a
            # fault that breaks CUDA: the check failed, the variant denied on the block)
            died = _died_on(folder, n, procs, killed)
            for i, (variant, error) in died.items():
                variants[i], errors[i] = variant, error
    except Exception as e:  # no worker could start (no /dev/shm, no spawn...)
        r.say(f"the compile workers failed ({describe(e)}); compiling in this process")
        return 0
    failed = [e for e in errors.values() if e]
    done2 = sum(1 for i in errors if i < len(names))
    fatal = {i for i, e in errors.items() if is_sticky(e) or i in died}
    r.sticky.update({names[i]: errors[i] for i in fatal if i < len(names)})
    for i, e in errors.items():  # part 3: a variant that broke CUDA is denied there;
        if i >= len(names) and i in fatal:  # a fault outside any variant (the block's
            from ..ops import BlockSpec  # fold, its input) names none: a failure alone

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
