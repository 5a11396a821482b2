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
from laudtriton.tune.cache import TuneCache


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
    """``atomic._TEMP_TAIL`` takes 1 to 8 characters (mkstemp always gives 8), so a
    user's '<cache file>.bak.tmp' (or '.old.tmp', '.backup.tmp') over 10 min old is
    deleted by ``cache clear`` and by every cache-file write, merges' --out included."""
    path = _path_of(tmp_path, torch.get_num_threads())
    users = [path.with_name(f"{path.name}.{tag}.tmp") for tag in ("bak", "old", "backup")]
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
