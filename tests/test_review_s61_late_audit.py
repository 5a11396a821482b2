"""Review of 28a8224, 93a124e, 6f81fc3 and 0744e6a (session 61, late): each test fails
on those commits and names the defect it shows (one is older: said in its docstring)."""

from __future__ import annotations

import os
import time

import pytest
import torch

from laudtriton.baseline import DenseModel
from laudtriton.bench_command import torch_threads
from laudtriton.cli import main
from laudtriton.nn import LaudResNet, calibrate_rates
from laudtriton.testing import randomize_bn
from laudtriton.tune import keys
from laudtriton.tune.cache import TuneCache

LONG_CPU = ("Example Corporation Hyper-Scale Virtual Processor Family Model 9000 Extreme "
            "Edition v2")  # a CPU model name whose fingerprint's slug is past 80 characters


@pytest.fixture(autouse=True)
def _own_cache_folder(tmp_path_factory, monkeypatch):
    """No test reads or writes the checkout's autotune_cache/ (nor a shell's folder)."""
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path_factory.mktemp("default")))
    monkeypatch.delenv("LAUDTRITON_CACHE", raising=False)


def _path_of(folder, threads: int):
    """The cpu cache file's path in ``folder`` for ``threads`` torch threads."""
    with torch_threads(threads):  # (puts torch's count back)
        return TuneCache(folder, device="cpu").path


def test_cache_ls_names_other_thread_counts_files_of_a_long_cpu_name(tmp_path, monkeypatch,
                                                                     capsys):
    """6f81fc3: past 80 characters ``file_slug`` keeps the head and a hash, and the
    "<n>t" tail goes: each thread count now has a file of its own, but its name no longer
    ends in <N>t (as ``cache --threads``' help says), and ``cache ls`` (``_other_files``,
    which reads "_<n>t.v1.json") no longer names the other counts' files here."""
    monkeypatch.setattr(keys, "cpu_model", lambda: LONG_CPU)
    mine = torch.get_num_threads()
    others = [n for n in (1, 2, 3) if n != mine][:2]
    paths = {n: _path_of(tmp_path, n) for n in others}
    for p in paths.values():
        p.write_text('{"schema": 1, "device": "x", "entries": {}}')
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "other thread counts' files here: " + ", ".join(f"{n}t" for n in others) in out
    assert [p.name for n, p in paths.items() if not p.name.endswith(f"_{n}t.v1.json")] == []


def test_cache_clear_keeps_a_users_eight_letter_tmp_file(tmp_path):
    """93a124e: ``atomic._TEMP_TAIL`` now takes exactly 8 of [a-z0-9_], mkstemp's length,
    so '<file>.bak.tmp' stays; but a user's '<file>.original.tmp' or '.snapshot.tmp'
    (8 letters) over 10 min old is still deleted by ``cache clear`` and by every write of
    the file, as a killed write's temp file."""
    path = _path_of(tmp_path, torch.get_num_threads())
    users = [path.with_name(f"{path.name}.{tag}.tmp") for tag in ("original", "snapshot")]
    past = time.time() - 3600
    for p in users:
        p.write_text("the user's copy")
        os.utime(p, (past, past))
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert [p.name for p in users if not p.exists()] == []


def _tiny() -> LaudResNet:
    torch.manual_seed(0)
    model = randomize_bn(LaudResNet((1, 2, 1, 1), mode="both", granularity="2-2-1-1",
                                    width_mult=0.25, input_size=None, num_classes=7)).eval()
    calibrate_rates(model, torch.randn(2, 3, 32, 32), 1.0)
    return model


def test_channels_last_dense_model_made_under_inference_mode_runs():
    """Older than these commits (not 93a124e's): a channels_last DenseModel made under
    ``torch.inference_mode()`` fails at its first forward ("Inference tensors do not
    track version counter": ``set_stem`` folds outside ``fold_block``'s
    ``inference_mode(False)``, and the stem's PackedConv cache reads the buffers'
    versions). The NCHW form and ``laudtriton.compile`` under inference_mode run."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    model = _tiny()
    ref = DenseModel(model, torch.channels_last)(x)
    with torch.inference_mode():
        dm = DenseModel(model, torch.channels_last)
        out = dm(x)
        moved = dm.double()(x.double())  # (its move under inference_mode too: the fix)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(moved.float(), ref, rtol=1e-5, atol=1e-6)
