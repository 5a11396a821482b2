"""laudtriton.runtime: the allocator setting ``laudtriton bench`` uses for both sides."""

import platform
import subprocess
import sys
import textwrap

import pytest

from laudtriton import runtime
from laudtriton.bench import bench

glibc_only = pytest.mark.skipif(runtime.glibc_version() is None, reason="needs glibc")


def test_glibc_version_matches_the_platform_module():
    """An independent reading: the standard library's platform.libc_ver()."""
    lib, ver = platform.libc_ver()
    assert runtime.glibc_version() == (ver if lib == "glibc" and ver else None)


@glibc_only
def test_retained_blocks_are_reused_without_page_faults():
    """In a fresh process (the setting is process-wide and permanent): three 24 MiB tensors
    allocated, touched and freed ten times. Retained, the heap settles within a few rounds
    and the last four fault (almost) nothing. (glibc 2.36's default faults all 18,400
    pages in every round in some runs and settles in others: not asserted.)"""
    script = textwrap.dedent("""
        import resource, torch
        import laudtriton
        runtime = laudtriton.runtime  # as the README calls it, after a plain import
        assert runtime.allocator_setting() == "default"
        assert runtime.retain_freed_memory() and runtime.retain_freed_memory()
        assert runtime.allocator_setting() == "retain"
        def faults():
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        rounds = []
        for _ in range(10):
            f0 = faults()
            a, b, c = (torch.ones(6 << 20) for _ in range(3))
            del a, b, c
            rounds.append(faults() - f0)
        print(*rounds)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    rounds = [int(v) for v in out.split()]
    assert rounds[0] > 0  # the first touch of 3 x 24 MiB is counted (18,432 4 KiB pages)
    assert all(r < 100 for r in rounds[6:]), rounds


def test_bench_allocator_choice_is_checked(monkeypatch):
    with pytest.raises(ValueError, match="allocator must be 'retain' or 'default', got 'x'"):
        bench("laud_resnet50", "channel", "4-4-2-1", [0.5], allocator="x")
    monkeypatch.setattr(runtime, "_retained", True)
    with pytest.raises(ValueError, match="already retains freed memory"):
        bench("laud_resnet50", "channel", "4-4-2-1", [0.5], allocator="default")


def test_usable_cpus_follow_the_affinity_mask(monkeypatch):
    """A process limited to some CPUs (taskset, a container's CPU set) counts those, not
    the machine's."""
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 8)
    assert runtime.usable_cpus() == 1
    monkeypatch.delattr(runtime.os, "sched_getaffinity", raising=False)
    assert runtime.usable_cpus() == 8
