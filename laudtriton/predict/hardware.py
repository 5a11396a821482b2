"""Hardware specs for the latency predictor (DESIGN.md section 6).

A ``HardwareSpec`` holds what the roofline model of ``predict.model`` needs: compute units,
peak multiply-adds per second per dtype, memory bandwidth and the cost of one kernel launch
(or torch op dispatch). GPU and edge presets use public datasheet numbers (converted from
FLOP/s to multiply-add/s by halving); launch overheads are typical values, not datasheet
numbers. The "cpu" preset describes the machine at hand: it is read from the calibration
file that ``laudtriton calibrate`` writes, else it is a conservative default (with a
warning).
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("laudtriton")

KINDS = ("gpu", "cpu", "edge")
DTYPES = ("float32", "float16", "bfloat16")


# The bounds of a machine's numbers, one check for a calibration file read back
# (``calibration.Calibration``) and a HardwareSpec built directly.
# The least peak (multiply-adds/s) and bandwidth (B/s): any device measures orders of
# magnitude more; a file holding 1e-300 made every predicted time infinite and the
# factors' fit fail.
FLOOR = 1e6
# The most each may hold (100 P multiply-adds/s, 100 TB/s: past any device), and the
# longest dispatch (1 s): a file holding an overhead of 1e300 s passed, and predict
# printed "launch 1e+306 us" and times to match.
CEILING, MAX_OVERHEAD = 1e17, 1.0
# The most SMs a GPU (or edge GPU) may have (the largest have about 300): they set the
# tile waves of ``model.quantisation``, and 1e9 of them predicted a dense block at
# 3915 s for 0.5 ms, silently. A CPU's units (threads) are not bounded: the model does
# not use them.
MAX_SMS = 1024
RATE_RANGE = f"({FLOOR:g}, {CEILING:g}]"
OVERHEAD_RANGE = f"[0, {MAX_OVERHEAD:g}]"


def in_range(x: object, least: float, most: float, zero_ok: bool = False) -> bool:
    """Whether x is a real number, not a bool, with least < x <= most (or x == 0 where
    ``zero_ok``): finite, as most is. The bounds are compared first: an int past
    float's range (JSON reads 10**400 as one) made math.isfinite raise OverflowError
    where the ValueError naming the field was due."""
    if not isinstance(x, numbers.Real) or isinstance(x, bool):
        return False
    return (x > least or (zero_ok and x == 0)) and x <= most and math.isfinite(x)


def rate_ok(x: object) -> bool:
    """A peak (multiply-adds/s) or bandwidth (B/s) in ``RATE_RANGE``."""
    return in_range(x, FLOOR, CEILING)


def overhead_ok(x: object) -> bool:
    """A launch / dispatch overhead (s) in ``OVERHEAD_RANGE``."""
    return in_range(x, 0.0, MAX_OVERHEAD, zero_ok=True)


def units_ok(x: object, kind: str) -> bool:
    """An int >= 1 (numpy ints count, bools do not), at most ``MAX_SMS`` unless ``kind``
    is "cpu"."""
    return (isinstance(x, numbers.Integral) and not isinstance(x, bool)
            and 1 <= x <= (math.inf if kind == "cpu" else MAX_SMS))


@dataclass(frozen=True)
class HardwareSpec:
    """One machine for the latency model.

    name: preset name ("v100", "cpu", ...). kind: "gpu" | "cpu" | "edge".
    compute_units: SMs (GPU) or cores/threads (CPU). peak: ((dtype, multiply-adds/s), ...)
    with dense math (tensor cores where the dtype uses them, fp32 accumulation).
    bandwidth: DRAM bytes/s. launch_overhead: seconds per kernel launch / op dispatch.
    notes: where the numbers come from.

    Raises:
        ValueError: naming the field, for an unknown kind or a number outside the bounds
            a calibration file is held to (``rate_ok``, ``overhead_ok``, ``units_ok``).
    """

    name: str
    kind: str
    compute_units: int
    peak: tuple[tuple[str, float], ...]
    bandwidth: float
    launch_overhead: float
    notes: str = ""

    def __post_init__(self):
        """Raise a ValueError naming the first field out of the bounds a calibration
        file is held to (``in_range`` and the constants above it): launch_overhead=1e300
        passed here, where the same number in a calibration file is corrupt."""
        if self.kind not in KINDS:
            raise ValueError(f"HardwareSpec kind {self.kind!r} unknown; accepted: {KINDS}")
        pairs = self.peak if isinstance(self.peak, (tuple, list)) else None
        most = "" if self.kind == "cpu" else f" and <= {MAX_SMS} (SMs)"
        checks = (
            ("compute_units", units_ok(self.compute_units, self.kind), f"an int >= 1{most}"),
            ("peak", bool(pairs) and all(
                isinstance(e, (tuple, list)) and len(e) == 2 and e[0] in DTYPES
                and rate_ok(e[1]) for e in pairs)
             and len({e[0] for e in pairs}) == len(pairs),  # (a twice given one: which?)
             f"((dtype, multiply-adds/s in {RATE_RANGE}), ...) of distinct dtypes among "
             f"{', '.join(DTYPES)}"),
            ("bandwidth", rate_ok(self.bandwidth), f"a number of B/s in {RATE_RANGE}"),
            ("launch_overhead", overhead_ok(self.launch_overhead),
             f"a number of s in {OVERHEAD_RANGE}"))
        for name, ok, accepted in checks:
            if not ok:
                raise ValueError(f"HardwareSpec {self.name!r}: {name} "
                                 f"{getattr(self, name)!r} is not {accepted} (numbers, "
                                 "not bools)")
        # a tuple of tuples whatever was given: the spec is a key of the model's caches
        object.__setattr__(self, "peak", tuple((d, r) for d, r in pairs))

    @property
    def default_dtype(self) -> str:
        """The dtype predict and design assume when none is given: float32 on a CPU,
        float16 on a GPU."""
        return "float32" if self.kind == "cpu" else "float16"

    @property
    def backend(self) -> str:
        """The variant backend that runs on this machine: "cpu" or "cuda"."""
        return "cpu" if self.kind == "cpu" else "cuda"

    def peak_macs(self, dtype: str) -> float:
        """Peak multiply-adds/s for ``dtype``; a dtype without its own entry uses float32's
        rate (e.g. bfloat16 on a V100, which has no bf16 units).

        Raises:
            ValueError: if ``dtype`` is not float32, float16 or bfloat16.
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} unknown; accepted: {', '.join(DTYPES)}")
        table = dict(self.peak)
        return table.get(dtype, table.get("float32", max(table.values())))

    def describe(self) -> str:
        """One line for the ``predict`` and ``design`` headers: name, kind, compute units,
        peak multiply-adds per dtype (TMAC/s), bandwidth (GB/s) and launch overhead (us)."""
        peaks = ", ".join(f"{d} {p / 1e12:.3g} TMAC/s" for d, p in self.peak)
        return (f"{self.name} ({self.kind}, {self.compute_units} units): {peaks}; "
                f"{self.bandwidth / 1e9:.4g} GB/s; launch {self.launch_overhead * 1e6:.3g} us")


def check_hardware(hw: object) -> HardwareSpec:
    """``hw`` if it is a HardwareSpec.

    Raises:
        ValueError: naming what ``hw`` is instead (a name such as "a100" raised
            AttributeError deep in the model).
    """
    if not isinstance(hw, HardwareSpec):
        raise ValueError(f"hw must be a HardwareSpec (predict.get_hardware(name)), got "
                         f"{type(hw).__name__}")
    return hw


def _gpu(name, kind, units, fp32_tflops, fp16_tflops, bf16_tflops, gbs, launch_us, notes):
    peak = [("float32", fp32_tflops * 1e12 / 2), ("float16", fp16_tflops * 1e12 / 2)]
    if bf16_tflops:
        peak.append(("bfloat16", bf16_tflops * 1e12 / 2))
    return HardwareSpec(name, kind, units, tuple(peak), gbs * 1e9, launch_us * 1e-6, notes)


# Datasheet numbers (dense, no structured sparsity; fp16 on tensor cores with fp32
# accumulation, the mode Triton uses). Launch overheads: typical CUDA launch cost measured
# through PyTorch on servers (~5 us) and Jetson boards (~15-25 us): assumptions.
PRESETS: dict[str, HardwareSpec] = {h.name: h for h in (
    _gpu("v100", "gpu", 80, 15.7, 125.0, 0.0, 900, 5.0,
         "NVIDIA V100 SXM2 datasheet: 15.7 TFLOPS fp32, 125 TFLOPS fp16 tensor, 900 GB/s "
         "HBM2; no bf16 units (bf16 at the fp32 rate)"),
    _gpu("a100", "gpu", 108, 19.5, 312.0, 312.0, 1555, 5.0,
         "NVIDIA A100 SXM4 40GB datasheet: 19.5 TFLOPS fp32, 312 TFLOPS fp16/bf16 tensor "
         "(dense), 1555 GB/s HBM2"),
    _gpu("h100", "gpu", 132, 67.0, 989.5, 989.5, 3350, 4.0,
         "NVIDIA H100 SXM5 datasheet: 67 TFLOPS fp32, 989.5 TFLOPS fp16/bf16 tensor "
         "(dense; 1979 with sparsity), 3.35 TB/s HBM3"),
    _gpu("h200", "gpu", 132, 67.0, 989.5, 989.5, 4800, 4.0,
         "NVIDIA H200 SXM datasheet: 67 TFLOPS fp32, 989.5 TFLOPS fp16/bf16 tensor (dense), "
         "4.8 TB/s HBM3e"),
    _gpu("rtx3090", "gpu", 82, 35.6, 71.0, 71.0, 936, 5.0,
         "NVIDIA GeForce RTX 3090 datasheet (GA102 whitepaper): 35.6 TFLOPS fp32, 71 TFLOPS fp16 "
         "tensor with fp32 accumulation (142 with fp16 accumulation), 936 GB/s GDDR6X"),
    _gpu("rtx3060", "gpu", 28, 12.7, 25.6, 25.6, 360, 5.0,
         "NVIDIA GeForce RTX 3060 12GB datasheet: 12.7 TFLOPS fp32, ~25.6 TFLOPS fp16 tensor with "
         "fp32 accumulation (GA106, half the fp16-accumulate rate), 360 GB/s GDDR6"),
    _gpu("jetson_tx2", "edge", 2, 0.665, 1.33, 0.0, 59.7, 25.0,
         "NVIDIA Jetson TX2 datasheet: 256-core Pascal GPU, ~0.67 TFLOPS fp32, 1.33 TFLOPS "
         "fp16 (no tensor cores), 59.7 GB/s LPDDR4"),
    _gpu("jetson_orin", "edge", 16, 5.3, 42.5, 42.5, 204.8, 15.0,
         "NVIDIA Jetson AGX Orin 64GB datasheet: 2048-core Ampere GPU, 5.3 TFLOPS fp32; "
         "fp16 tensor ~42.5 TFLOPS dense (a quarter of the GPU's 170 sparse INT8 TOPS), "
         "204.8 GB/s LPDDR5"),
)}

# "cpu" without calibration: a deliberately low guess for a small x86 machine.
CPU_DEFAULT = HardwareSpec(
    "cpu", "cpu", 2, (("float32", 2.0e10), ("bfloat16", 1.0e10), ("float16", 5.0e9)),
    5.0e9, 1.0e-5, "uncalibrated default (run `laudtriton calibrate`)")

ALIASES = {"tx2": "jetson_tx2", "orin": "jetson_orin", "3090": "rtx3090", "3060": "rtx3060"}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def known_hardware() -> list[str]:
    """Every accepted hardware name (presets, "cpu", and "cuda": a calibrated local GPU)."""
    return sorted([*PRESETS, "cpu", "cuda"])


def cpu_hardware(cache_dir: str | Path | None = None, warn: bool = True) -> HardwareSpec:
    """The local machine: from the calibration file of this device in ``cache_dir`` (see
    ``predict.calibration``), else ``CPU_DEFAULT`` with a one-line warning (when ``warn``)
    saying whether the file is missing or corrupt (and which)."""
    from .calibration import calibration_path, read_calibration

    path = calibration_path(cache_dir)  # a bad $LAUDTRITON_CACHE_DIR raises here
    try:
        cal = read_calibration(path, "cpu", "cpu")
        why = "no calibration of this machine found"
    except ValueError as e:  # corrupt: ignored, as a corrupt autotune cache is
        cal, why = None, f"{e}; ignoring it"
    if cal is not None:
        return cal.to_hardware()
    if warn:
        log.warning("%s; using the conservative CPU default (%s). Run `laudtriton calibrate` "
                    "first for real numbers.", why, CPU_DEFAULT.describe())
    return CPU_DEFAULT


def get_hardware(name: str | HardwareSpec, cache_dir: str | Path | None = None
                 ) -> HardwareSpec:
    """The HardwareSpec called ``name`` (case-insensitive; "-" and " " read as "_").

    Raises:
        ValueError: if ``name`` is unknown (the message lists the known names).
    """
    if isinstance(name, HardwareSpec):
        return name
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    if key == "cpu":
        return cpu_hardware(cache_dir)
    if key == "cuda":
        from .calibration import calibration_path, read_calibration

        if not _has_cuda():  # before the path: its name is the GPU's
            raise ValueError("--hardware 'cuda' is the calibrated local GPU, and no CUDA GPU "
                             "is available here; name a preset (a100, h100, ...) or 'cpu'")
        path = calibration_path(cache_dir, "cuda")  # a bad $LAUDTRITON_CACHE_DIR raises
        try:
            cal = read_calibration(path, "gpu", "cuda")
        except ValueError as e:
            raise ValueError(f"--hardware 'cuda': {e}; run `laudtriton calibrate --device "
                             "cuda` again") from None
        if cal is None:
            raise ValueError("--hardware 'cuda' is the calibrated local GPU; run `laudtriton "
                             "calibrate --device cuda` on a machine with one first")
        return cal.to_hardware()
    if key in PRESETS:
        return PRESETS[key]
    raise ValueError(f"--hardware {name!r} unknown; known: {', '.join(known_hardware())}")
