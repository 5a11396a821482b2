"""Calibration of the machine at hand: GEMM peak, copy bandwidth, per-op dispatch cost.

``calibrate(device)`` measures, in well under 30 s:
  - GEMM peak: the best multiply-adds/s of square products over a few sizes, through the
    engine's GEMM (``ops.rows.PackedRows``, the spatial variants' oneDNN GEMM with its
    weight pre-packed, for CPU fp32; ``torch.mm`` on CUDA in fp32, fp16 and bf16);
  - copy bandwidth: bytes read + written per second by ``dst.copy_(src)`` on 64 MiB
    (256 MiB on CUDA);
  - dispatch overhead: seconds per tiny torch op (a loop of in-place adds on 1 element;
    on CUDA that is the kernel launch cost).
The result is a JSON file beside the autotune cache (``TuneCache(...).dir``), named by the
device fingerprint, and the "cpu" hardware preset reads it back.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

# CEILING, FLOOR, MAX_OVERHEAD: the bounds, defined here before, re-exported
from .hardware import CEILING as CEILING
from .hardware import (
    DTYPES,
    MAX_SMS,
    OVERHEAD_RANGE,
    RATE_RANGE,
    HardwareSpec,
    get_hardware,
    overhead_ok,
    rate_ok,
    units_ok,
)
from .hardware import FLOOR as FLOOR
from .hardware import MAX_OVERHEAD as MAX_OVERHEAD

if TYPE_CHECKING:
    from ..tune.cache import TuneCache
    from .model import Factors

log = logging.getLogger("laudtriton")

CAL_VERSION = 1


@dataclass(frozen=True)
class Calibration:
    """Measured numbers of one device. peak: {dtype: multiply-adds/s}; bandwidth: B/s;
    overhead: s per op dispatch / kernel launch; threads: torch CPU threads;
    units: SMs (CUDA, at most ``MAX_SMS``) or threads (CPU)."""

    fingerprint: str
    kind: str
    peak: dict
    bandwidth: float
    overhead: float
    threads: int
    units: int
    created: str = ""

    def __post_init__(self):
        """Raises ValueError naming the first field of a wrong type or value: a file can
        hold anything, and a NaN peak would turn every prediction into nan."""
        # the bounds are a HardwareSpec's (``hardware.in_range``), on the types JSON
        # holds (asdict writes the file back: a numpy number would not serialise)
        def json_real(x) -> bool:
            return isinstance(x, (int, float))

        checks = (
            ("fingerprint", isinstance(self.fingerprint, str), "a string"),
            ("kind", self.kind in ("cpu", "gpu"), "'cpu' or 'gpu'"),
            ("peak", isinstance(self.peak, dict) and bool(self.peak) and all(
                d in DTYPES and json_real(p) and rate_ok(p) for d, p in self.peak.items()),
             f"a non-empty {{dtype: multiply-adds/s in {RATE_RANGE}}} (dtypes: "
             f"{', '.join(DTYPES)})"),
            ("bandwidth", json_real(self.bandwidth) and rate_ok(self.bandwidth),
             f"a number of B/s in {RATE_RANGE}"),
            ("overhead", json_real(self.overhead) and overhead_ok(self.overhead),
             f"a number of s in {OVERHEAD_RANGE}"),
            ("threads", isinstance(self.threads, int) and units_ok(self.threads, "cpu"),
             "an int >= 1"),
            ("units", isinstance(self.units, int) and units_ok(self.units, self.kind),
             f"an int >= 1 (<= {MAX_SMS} SMs on a GPU)"),
            ("created", isinstance(self.created, str), "a string"))
        for name, ok, accepted in checks:
            if not ok:
                raise ValueError(f"{name} {getattr(self, name)!r} is not {accepted}")

    def to_hardware(self) -> HardwareSpec:
        """The HardwareSpec of this calibration (named "cpu" or "cuda")."""
        name = "cpu" if self.kind == "cpu" else "cuda"
        return HardwareSpec(name, self.kind, self.units, tuple(sorted(self.peak.items())),
                            self.bandwidth, self.overhead,
                            f"calibrated {self.created} on {self.fingerprint}")


def calibration_path(cache_dir: str | Path | None = None, device: str | torch.device = "cpu"
                     ) -> Path:
    """``<cache dir>/calibration_<device fingerprint>.json``."""
    from ..tune.cache import TuneCache, file_slug

    cache = TuneCache(cache_dir, device=device)
    return cache.dir / f"calibration_{file_slug(cache.device)}.v{CAL_VERSION}.json"


def read_calibration(path: Path, kind: str | None = None,
                     device: str | torch.device | None = None) -> Calibration | None:
    """The calibration stored in ``path``; None if there is no such file. kind: "cpu" or
    "gpu", the kind of the device whose file ``path`` is (its name says which device);
    device: that device, whose fingerprint the file must hold.

    Raises:
        ValueError: naming ``path``, if it cannot be read or is not a calibration (not
            JSON, nested past the parser's depth, a field missing, or of a wrong type or
            value, a kind other than ``kind``), or was measured on another device than
            ``device`` (a file copied under this one's name: its numbers are another
            machine's); the fields with a default (``created``) may be missing.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:  # not UTF-8, not JSON, too deep
        raise ValueError(f"calibration file {path} is unreadable ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"calibration file {path} is corrupt (a JSON "
                         f"{type(data).__name__}, not an object)")
    missing = [f.name for f in fields(Calibration)
               if f.default is MISSING and f.name not in data]
    if missing:
        raise ValueError(f"calibration file {path} is corrupt (no {', '.join(missing)})")
    try:
        cal = Calibration(**{f.name: data[f.name] for f in fields(Calibration)
                             if f.name in data})
    except ValueError as e:
        raise ValueError(f"calibration file {path} is corrupt ({e})") from None
    if kind is not None and cal.kind != kind:  # "gpu" made a "cpu" hardware "cuda"
        raise ValueError(f"calibration file {path} is corrupt (kind {cal.kind!r} is not "
                         f"this device's ({kind!r}))")
    from ..tune.keys import device_fingerprint

    if device is not None and cal.fingerprint != (here := device_fingerprint(device)):
        raise ValueError(f"calibration file {path} was measured on {cal.fingerprint!r}, "
                         f"not on this device ({here!r})")
    return cal


def load_calibration(cache_dir: str | Path | None = None, device: str | torch.device = "cpu"
                     ) -> Calibration | None:
    """The stored calibration of ``device`` in ``cache_dir``: None if absent, and None
    after a one-line warning naming the file if it is corrupt (as a corrupt autotune
    cache is): the caller then proceeds as on an uncalibrated machine."""
    path = calibration_path(cache_dir, device)  # a bad $LAUDTRITON_CACHE_DIR raises here
    try:
        return read_calibration(path, "cpu" if torch.device(device).type == "cpu" else "gpu",
                                device)
    except ValueError as e:
        log.warning("%s; ignoring it (`laudtriton calibrate` rewrites it)", e)
        return None


def timings_cache(hw: HardwareSpec, cache_dir: str | Path | None = None) -> TuneCache | None:
    """The autotune cache (``tune.cache.TuneCache``) holding timings of ``hw`` ("cpu":
    this machine, "cuda": its calibrated GPU); None for the presets (no timings of them
    here)."""
    from ..tune.cache import TuneCache

    return TuneCache(cache_dir, device=hw.name) if measured_here(hw) else None


def measured_here(hw: HardwareSpec) -> bool:
    """Whether ``hw`` is this machine's ("cpu") or its GPU's ("cuda"), read from a
    calibration and timed into the cache; the presets (v100, ...) are neither."""
    return hw.name in ("cpu", "cuda")


def _no_fit_why(cache: TuneCache, n: int) -> str:
    """Why no factors were fitted on ``cache``, which holds ``n`` current timings: too
    few of them, none, or only stale ones (counted, so the cache does not read as empty)."""
    if n:
        return f"{n} cache entr{'y' if n == 1 else 'ies'}, too few usable timings to fit on"
    stale = len(cache.entries(include_stale=True))
    if not stale:
        return "no cached timings to fit on"
    return (f"no current cached timings to fit on, {stale} stale timing"
            f"{'' if stale == 1 else 's'} of other versions or kernel sources: "
            "`laudtriton cache ls --all` lists them")


def predictor_for(hardware: str | HardwareSpec, cache_dir: str | Path | None = None,
                  fit: bool = True) -> tuple[HardwareSpec, dict | None, str]:
    """(hw, factors, note): the latency predictor ``predict``, ``design`` and ``sweep
    --prune-top`` use. hw: ``get_hardware(hardware, cache_dir)`` ("cpu" / "cuda": the
    calibration in ``cache_dir``); factors: the efficiency factors fitted on the cached
    timings of hw in ``cache_dir`` (None: the kind's defaults, for a preset, with
    ``fit`` False, or when nothing is cached); note: one line saying which.

    Raises:
        ValueError: unknown hardware, or "cuda" without a calibrated local GPU.
    """
    from .fit import fit as fit_factors
    from .model import DEFAULT_FACTORS

    hw = get_hardware(hardware, cache_dir)
    default = DEFAULT_FACTORS[hw.kind]
    note = f"default factors (eff_c {default.eff_c}, eff_m {default.eff_m})"
    cache = timings_cache(hw, cache_dir) if fit else None
    if cache is None:
        return hw, None, note
    if not cache.enabled:
        from ..tune.keys import disabled_by

        return hw, None, note + f" (the cache is disabled by {disabled_by()}: no timings read)"
    entries = cache.entries()
    factors = fit_factors(entries, hw) if entries else {}
    if not factors:  # (with some timings it said "no cached timings" until session 66)
        return hw, None, note + f" ({_no_fit_why(cache, len(entries))})"
    return hw, factors, (f"factors fitted on {factors['*'].n} cached timings (the fastest "
                         "config of each block, rate and variant)")


def fitted_predictor(cache: TuneCache, device: str | torch.device = "cpu"
                     ) -> tuple[HardwareSpec, dict[str, Factors]] | None:
    """(HardwareSpec, efficiency factors) of ``device`` for the latency predictor: its
    stored calibration, with factors fitted on the current timings of ``cache`` (a
    ``tune.cache.TuneCache``, whose directory holds the calibration). None when the
    device is not calibrated (or its calibration file is corrupt: reported once) or the
    cache holds no timings; the factors are ``{}`` (the kind's defaults, which the
    predictor then uses) when it holds too few to fit on (``fit``'s min_samples)."""
    from .fit import fit

    cal = load_calibration(cache.dir, device)
    entries = cache.entries() if cal is not None else []
    if not entries:
        return None
    hw = cal.to_hardware()
    return hw, fit(entries, hw)


def save_calibration(cal: Calibration, cache_dir: str | Path | None = None,
                     device: str = "cpu") -> Path:
    """Write ``cal`` atomically (temp file + os.replace); returns the path."""
    path = calibration_path(cache_dir, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..tune.atomic import write_json_atomic

    write_json_atomic(path, asdict(cal))
    return path


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _best(fn, dev: torch.device, budget_s: float, inner: int = 1, max_reps: int = 400,
          min_reps: int = 3) -> float:
    """Fastest round of ``inner`` calls of fn, per call, over rounds repeated for
    ``budget_s`` seconds (1 warm-up): the minimum, not the median, because a peak is what
    the machine reaches when nothing competes (on a shared 2-core box one 512^3 GEMM took
    from 1.3 ms to 50 ms; its median was far from the machine's rate)."""
    fn()
    _sync(dev)
    best, reps, t_end = math.inf, 0, time.perf_counter() + budget_s
    while reps < min_reps or (reps < max_reps and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(dev)
        best = min(best, (time.perf_counter() - t0) / inner)
        reps += 1
    return best


def gemm_peak(dev: torch.device, dtype: torch.dtype, sizes: Sequence[int] = (256, 512, 1024),
              budget_s: float = 6.0) -> float:
    """Best multiply-adds/s of n x n x n products over ``sizes`` (random operands), run
    the way the engine runs its GEMMs: on CPU fp32 with oneDNN's fused ops, as the
    spatial variants run theirs (``ops.rows.PackedRows``, the weight pre-packed for n
    rows; the unpacked ``rows_linear`` ran 15-28% slower at these sizes on the 2-core
    EPYC, session 16; ``torch.mm`` takes MKL's AVX2 path on AMD CPUs, at about half the
    rate in session 3); elsewhere ``ops.rows.rows_linear`` (``torch.mm`` on CUDA)."""
    from ..ops.rows import PackedRows, packs_rows, rows_linear

    packed = packs_rows(torch.empty(0, device=dev, dtype=dtype))
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        if packed:
            gemm = functools.partial(PackedRows(b, None, n), a, False)
        else:
            gemm = functools.partial(rows_linear, a, b, None)
        t = _best(gemm, dev, budget_s / len(sizes))
        best = max(best, n ** 3 / t)
    return best


def copy_bandwidth(dev: torch.device, mib: int = 64, budget_s: float = 3.0) -> float:
    """Bytes read + written per second by ``dst.copy_(src)`` on ``mib`` MiB (fp32)."""
    n = mib * 2**20 // 4
    src = torch.rand(n, device=dev)
    dst = torch.empty_like(src)
    return 2 * 4 * n / _best(lambda: dst.copy_(src), dev, budget_s)


def dispatch_overhead(dev: torch.device, ops: int = 200, budget_s: float = 2.0) -> float:
    """Seconds per tiny op (in-place add on one element): the dispatch / launch cost."""
    x = torch.zeros(1, device=dev)
    return _best(lambda: x.add_(1.0), dev, budget_s, inner=ops)


def calibrate(device: str = "cpu", quick: bool = False,
              progress: Callable[[str], object] | None = None) -> Calibration:
    """Measure ``device`` ("cpu" or "cuda[:i]"); < 30 s (``quick``: < 5 s, noisier).
    progress: called with a line before each measurement (``laudtriton calibrate`` prints
    them to stderr).

    Raises:
        ValueError: if the device is not a CPU or an available CUDA device.
    """
    from ..tune.keys import device_fingerprint

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):  # torch's "Expected one of cpu, cuda, ..." ("foo")
        raise ValueError(f"device {device!r} unknown; accepted: 'cpu', 'cuda[:i]'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is available here; use 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} unknown; accepted: 'cpu', 'cuda[:i]'")
    scale = 0.2 if quick else 1.0  # seconds: GEMM 9, copy 2.5, dispatch 1.5 (quick: a fifth)
    gpu = dev.type == "cuda"
    say = progress or (lambda line: None)
    with torch.no_grad():
        say(f"measuring the GEMM peak (up to {(12.0 if gpu else 9.0) * scale:.0f} s)")
        if gpu:
            peak = {str(d).replace("torch.", ""): gemm_peak(dev, d, (1024, 2048, 4096),
                                                            4.0 * scale)
                    for d in (torch.float32, torch.float16, torch.bfloat16)}
            units = torch.cuda.get_device_properties(dev).multi_processor_count
        else:
            peak = {"float32": gemm_peak(dev, torch.float32, (256, 512, 1024), 9.0 * scale)}
            units = torch.get_num_threads()
        say(f"measuring the copy bandwidth (up to {(3.0 if gpu else 2.5) * scale:.1f} s)")
        bw = copy_bandwidth(dev, 256 if gpu else 64, (3.0 if gpu else 2.5) * scale)
        say(f"measuring the dispatch overhead (up to {1.5 * scale:.1f} s)")
        overhead = dispatch_overhead(dev, 200, 1.5 * scale)
    return Calibration(
        fingerprint=device_fingerprint(dev), kind="cpu" if dev.type == "cpu" else "gpu",
        peak=peak, bandwidth=bw, overhead=overhead, threads=torch.get_num_threads(),
        units=units, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
