"""Process-wide settings for CPU inference: how the C allocator treats freed memory, and
the CPUs this process may run on (``usable_cpus``); a child process's exit in words
(``exit_text``).

PyTorch's CPU tensors come from the C library's malloc. glibc serves large blocks with
mmap and hands them back to the OS when they are freed. Its threshold starts at 128 KiB
and adapts as blocks are freed; it also trims freed memory at the top of the heap. A
forward pass at batch 8 on 224x224 inputs allocates and frees activations of 3-26 MiB,
so a pass can meet fresh pages again, one page fault per 4 KiB touched.

Measured on the 2-core x86 VM of BENCHMARKS.md (LAUD-ResNet-50, layer mode, batch 8, a
loop of forwards): 5,600-15,000 minor faults per dense forward and 9,200-12,800 per
compiled one with glibc's default (the count depends on the heap's history), none for
either after ``retain_freed_memory()``, and each forward 4-6% faster. Batch 1
activations do not fault either way.

``retain_freed_memory`` keeps blocks up to 32 MiB inside the process for reuse. The cost
is memory: the process keeps its peak heap instead of returning it to the OS. Setting
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment
before Python starts has the same effect; jemalloc or tcmalloc preloaded are other ways.
"""

from __future__ import annotations

import ctypes
import os
import signal

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound for M_MMAP_THRESHOLD (64-bit)
TRIM_THRESHOLD = 2**31 - 1  # the largest int mallopt takes: never trim

SETTINGS = ("retain", "default")  # what allocator_setting() returns; bench --allocator

_retained = False


def glibc_version() -> str | None:
    """The running glibc's version, e.g. ``"2.36"``; None when the C library is not glibc."""
    try:
        ver = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    if not ver or not ver.startswith("glibc "):
        return None
    return ver.split(" ", 1)[1]


def retain_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MiB in the process, for reuse without page
    faults (see the module docstring for the trade-off). Process-wide and permanent:
    glibc's adaptive threshold does not come back. Idempotent.

    Returns whether the setting is in effect: False, with nothing changed, when the C
    library is not glibc (macOS, Windows, musl).

    Raises:
        RuntimeError: if glibc refuses one of the two settings (the first one may then be
            in effect alone).
    """
    global _retained
    if _retained:
        return True
    if glibc_version() is None:
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # the mmap threshold first: the trim threshold alone would also stop the threshold
    # from adapting, and every block above 128 KiB would then fault
    for name, param, value in (("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX),
                               ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if mallopt(param, value) != 1:
            raise RuntimeError(f"glibc mallopt refused {name} = {value}")
    _retained = True
    return True


def allocator_setting() -> str:
    """``"retain"`` after a successful ``retain_freed_memory()`` in this process, else
    ``"default"`` (the environment variables of the module docstring are not detected)."""
    return "retain" if _retained else "default"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def exit_text(code: int) -> str:
    """A child process's exit code in words: 'signal 11 (SIGSEGV)' for one killed by a
    signal (a negative code, as ``subprocess`` and ``multiprocessing`` report it), else
    'exit code 1'."""
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
