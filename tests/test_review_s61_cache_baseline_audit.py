"""Review of 5fc90cb (``cache ls|clear --threads``, temp files of killed writes) and
f82a71c (``nn.calibrate.in_eval``, ``baseline.DenseModel``'s input check): each test
fails on those commits and names the defect it shows."""

from __future__ import annotations

import os
import time

import pytest
import torch
from torch import nn

from laudtriton.baseline import DenseModel
from laudtriton.bench_command import torch_threads
from laudtriton.cli import main
from laudtriton.nn import LaudResNet, calibrate_rates
from laudtriton.testing import randomize_bn
from laudtriton.tune import keys
from laudtriton.tune.cache import TuneCache

# (the last three tests: the review of 28a8224, 93a124e, 6f81fc3 and 0744e6a)
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


def test_ls_hint_threads_count_is_accepted_on_a_one_cpu_machine(tmp_path, capsys):
    """On a machine with 1 CPU (or any with fewer CPUs than a file's count: the shipped
    caches are 2t), ``cache ls`` says "other thread counts' files here: 2t (`--threads N`
    lists one)", and ``--threads 2`` is then refused ("must be in [0, 1]"): listing or
    clearing a file times nothing, yet takes bench's CPU bound. Now the bound is
    ``MAX_THREADS``: a count past this machine's CPUs is listed."""
    n = (os.cpu_count() or 1) + 1
    path = _path_of(tmp_path, n)
    path.write_text('{"schema": 1, "device": "x", "entries": {}}')
    before = torch.get_num_threads()
    code = main(["cache", "ls", "--cache-dir", str(tmp_path), "--threads", str(n)])
    assert torch.get_num_threads() == before
    assert code == 0, capsys.readouterr().err


def test_clear_keeps_a_users_short_named_tmp_file(tmp_path):
    """``atomic._TEMP_TAIL`` took 1 to 8 characters (mkstemp always gives 8), so a
    user's '<cache file>.bak.tmp' (or '.old.tmp', '.backup.tmp') over 10 min old was
    deleted by ``cache clear`` and by every cache-file write, merges' --out included;
    with exactly 8 (93a124e) a user's '.original.tmp' or '.snapshot.tmp' still was (the
    late review). Temp files are now '<file>.laudtriton-<8>.tmp' (320df31)."""
    path = _path_of(tmp_path, torch.get_num_threads())
    users = [path.with_name(f"{path.name}.{tag}.tmp")
             for tag in ("bak", "old", "backup", "original", "snapshot")]
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


@pytest.mark.parametrize("move", ["double", "half", "bfloat16"])
def test_dense_model_moved_with_module_to_runs_or_says_so(move):
    """``DenseModel.double()`` (``.half()``, ``.to(...)``; on a GPU ``.cuda()``) moves the
    stem buffers and the head, not ``self.folded`` (a list of FoldedBlocks): the new input
    check follows the stem and passes, then torch fails inside ("Input type (double) and
    bias type (float) should be the same"), the error the check was added to replace.
    The docstring says a caller may move its tensors and the check follows them. Now
    ``DenseModel._apply`` moves the folded blocks too: the moved model computes the same
    logits (within the dtype's rounding), in both memory formats."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    for mf in (torch.contiguous_format, torch.channels_last):
        dm = DenseModel(_tiny(), mf)
        ref = dm(x)
        getattr(dm, move)()  # in place, as nn.Module's are
        assert all(fb.w1.dtype == dm.stem_w.dtype for fb in dm.folded)
        out = dm(x.to(dm.stem_w.dtype))
        assert out.dtype == dm.stem_w.dtype
        tol = 1e-6 if move == "double" else 0.05
        assert (out.float() - ref).abs().max() <= tol * ref.abs().max()


class _BatchStatsBN(LaudResNet):
    """A network whose BatchNorms keep normalising with the batch's statistics in eval
    mode (test-time adaptation), through a ``train`` override."""

    def train(self, mode: bool = True) -> _BatchStatsBN:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
        return self


def test_calibrate_rates_reads_eval_semantics_and_leaves_a_train_override_its_own():
    """The review found that a ``train`` override keeping BatchNorms training in eval
    mode realises other rates after calibrate_rates than it reports (block 2: 0.292
    reported, 0.0 realised), where before f82a71c the per-block ``train(False)`` had
    silently undone the override. Kept as documented: calibration reads every module in
    eval (``in_eval``: overrides not run), and ``model.eval()`` after it runs the caller's
    override. Pinned: what it reports is what the model realises in eval semantics, and
    the override's flags are the caller's afterwards."""
    from laudtriton.nn.calibrate import in_eval

    torch.manual_seed(0)
    model = _BatchStatsBN((1, 2, 1, 1), mode="spatial", granularity="2-2-1-1",
                          input_size=64, width_mult=0.25, num_classes=10)
    x = torch.randn(3, 3, 64, 64)
    got = calibrate_rates(model, x, 0.3)
    assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad(), in_eval(model):
        model(x)
    assert [float(s.rate3) for s in model.last_stats.blocks] == got


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
