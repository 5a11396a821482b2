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


@pytest.mark.parametrize("confstr", ["musl libc 1.2", "", AttributeError, ValueError])
def test_glibc_version_is_none_off_glibc(monkeypatch, confstr):
    """musl, a C library that names itself otherwise or nothing, or a platform without
    ``os.confstr`` / the name: not glibc."""
    def fake(name):
        if isinstance(confstr, type):
            raise confstr(name)
        return confstr
    monkeypatch.setattr(runtime.os, "confstr", fake, raising=False)
    assert runtime.glibc_version() is None


class _Mallopt:
    """A stand-in for the C library's mallopt: records its calls, answers ``answers``."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, param, value):
        self.calls.append((param, value))
        return self.answers.pop(0)


def _fake_libc(monkeypatch, mallopt):
    monkeypatch.setattr(runtime, "_retained", False)
    monkeypatch.setattr(runtime, "glibc_version", lambda: "2.36")
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda name: type("L", (), {"mallopt": mallopt}))


def test_retain_is_refused_off_glibc_without_calling_mallopt(monkeypatch):
    mallopt = _Mallopt([])
    _fake_libc(monkeypatch, mallopt)
    monkeypatch.setattr(runtime, "glibc_version", lambda: None)
    assert runtime.retain_freed_memory() is False
    assert mallopt.calls == [] and runtime.allocator_setting() == "default"


def test_retain_sets_the_mmap_threshold_first_then_the_trim_one_once(monkeypatch):
    mallopt = _Mallopt([1, 1])
    _fake_libc(monkeypatch, mallopt)
    assert runtime.retain_freed_memory() and runtime.retain_freed_memory()  # once
    assert mallopt.calls == [(runtime.M_MMAP_THRESHOLD, 32 << 20),
                             (runtime.M_TRIM_THRESHOLD, 2**31 - 1)]
    assert runtime.allocator_setting() == "retain"


@pytest.mark.parametrize("answers, name", [([0], "M_MMAP_THRESHOLD = 33554432"),
                                           ([1, 0], "M_TRIM_THRESHOLD = 2147483647")])
def test_a_refused_mallopt_raises_and_is_not_retained(monkeypatch, answers, name):
    _fake_libc(monkeypatch, _Mallopt(answers))
    with pytest.raises(RuntimeError, match=f"glibc mallopt refused {name}"):
        runtime.retain_freed_memory()
    assert runtime.allocator_setting() == "default"
