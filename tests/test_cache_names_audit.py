"""Cache and calibration file names of a device: a long CPU model name cut at 80
characters gave every thread count one file."""

from __future__ import annotations

import pytest

from laudtriton.tune import cache as cache_mod
from laudtriton.tune.cache import SLUG_MAX, TuneCache, file_slug


def test_short_names_are_as_before():
    """The shipped files' names do not move."""
    assert file_slug("AMD EPYC avx512 2t") == "AMD_EPYC_avx512_2t"
    assert file_slug("Intel(R) Xeon(R) Processor avx512 2t") == \
        "Intel_R_Xeon_R_Processor_avx512_2t"
    assert file_slug("NVIDIA H200 sm90") == "NVIDIA_H200_sm90"
    assert file_slug("  ") == "device"


def test_long_names_keep_their_thread_counts_apart():
    model = "Some Vendor(R) Very Long Server Processor Family Name Revision 1234567 v9"
    one, two = (file_slug(f"{model} avx512 {n}t") for n in (1, 2))
    assert one != two
    assert len(one) <= SLUG_MAX and len(two) <= SLUG_MAX and one.startswith("Some_Vendor_R")
    # one stem for the CPU, its thread count last (``cache ls`` lists the other counts)
    assert one.endswith("_1t") and two.endswith("_2t") and one[:-3] == two[:-3]
    assert file_slug(f"{model} avx512 1t") == one  # the same name every time


def test_two_thread_counts_of_a_long_cpu_name_are_two_files(tmp_path, monkeypatch):
    long_model = "Some Vendor(R) Very Long Server Processor Family Name Revision 1234567 v9"
    monkeypatch.setattr(cache_mod, "device_fingerprint",
                        lambda dev="cpu": f"{long_model} avx512 {threads[0]}t")
    threads = [1]
    a = TuneCache(tmp_path, device="cpu").path
    threads[0] = 2
    b = TuneCache(tmp_path, device="cpu").path
    assert a != b and a.parent == b.parent == tmp_path


@pytest.mark.parametrize("name", ["x" * 200, "a b " * 60])
def test_every_slug_fits(name):
    assert 0 < len(file_slug(name)) <= SLUG_MAX
