"""Part 1 of gpucheck: the versions, the GPU's name and properties, the measured copy
bandwidth and fp16/bf16 GEMM peak, into the run's ``info``."""

from __future__ import annotations

import platform

import torch

from .record import Run


# -- 1. machine ---------------------------------------------------------------------------
def _bench(fn, device: str) -> float:
    from ..tune.timing import median_time

    return median_time(fn, device, warmup=2, reps=5)


def machine(r: Run) -> None:
    """Part 1: the Python, torch, Triton and laudtriton versions, on "cuda" the GPU's name,
    compute capability, SM count, memory (GiB) and CUDA and cuDNN versions, the measured
    copy bandwidth (GB/s, read + write, of a 512 MiB fp16 buffer on a GPU, 8 MiB on CPU)
    and fp16 and bf16 GEMM throughput (TFLOP/s, m x m by m x m with m = 8192 on a GPU, 256
    on CPU), each from a median (``tune.timing.median_time``: do_bench's over about 100 ms
    of runs on a GPU, of 5 runs on CPU), into ``r.info``, each printed with ``r.say``.

    Raises:
        ImportError: without Triton (its version is listed).
    """
    import triton

    from .._version import __version__

    dev = r.device
    info = r.info  # filled as it goes: a part that fails later keeps what it read
    info |= {"python": platform.python_version(), "torch": torch.__version__,
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
    for k, v in info.items():
        r.say(f"{k:<16} {v}")
