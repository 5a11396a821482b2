"""The scripts under benchmarks/ and examples/: their options refused before any work,
what they print, and a cheap CPU smoke run of those no other test runs
(masker_share.py, memory_batches.py, layer_cost_per_sample.py). gpu_overhead.py and
gpu_blocks.py: tests/test_gpu_overhead.py; cluttered_digits.py: test_example_digits.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import laudtriton

ROOT = Path(__file__).resolve().parents[1]


def _load(rel: str):
    """The script at ``rel`` as a module (registered in sys.modules only while it runs:
    the example's dataclass looks its module up)."""
    name = "_scripts_audit_" + Path(rel).stem
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(name, None)
    return mod


def _run(rel: str, args: list[str], cache: Path) -> str:
    """Run the script in a subprocess (it patches classes for its profile), with an empty
    autotune cache directory; returns its stdout."""
    env = dict(os.environ, LAUDTRITON_CACHE_DIR=str(cache))
    done = subprocess.run([sys.executable, str(ROOT / rel), *args], capture_output=True,
                          text=True, env=env, cwd=cache, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _no_work(monkeypatch, mod) -> None:
    """Compiling or calibrating in ``mod`` fails the test: an option must be refused first."""
    def work(*args, **kwargs):
        raise AssertionError("worked before refusing the option")
    monkeypatch.setattr(laudtriton, "compile", work)
    if hasattr(mod, "calibrate_rates"):
        monkeypatch.setattr(mod, "calibrate_rates", work)


# -- masker_share.py ---------------------------------------------------------------------

@pytest.mark.parametrize("option,says", [
    (["--reps", "0"], "--reps 0: accepted an int >= 1"),  # was an IndexError after compile
    (["--reps", "-2"], "--reps -2: accepted an int >= 1"),
    (["--batch", "0"], "--batch 0: accepted an int >= 1"),
    (["--rate", "1.5"], "--rate 1.5: accepted a number in [0, 1]"),
    (["--rate", "nan"], "--rate nan: accepted a number in [0, 1]"),
    (["--model", "resnet9"], "model 'resnet9' unknown"),
    (["--mode", "foo"], "mode 'foo' unknown"),
    (["--granularity", "9-9"], "granularity '9-9' has 2 stages"),
])
def test_masker_share_refuses_bad_options_before_compiling(option, says, monkeypatch,
                                                           capsys):
    """These were tracebacks; --reps 0 only after compiling and warming up (IndexError)."""
    mod = _load("benchmarks/masker_share.py")
    _no_work(monkeypatch, mod)
    with pytest.raises(SystemExit) as e:
        mod.main(option)
    assert e.value.code == 2
    assert says in capsys.readouterr().err


def test_masker_share_prints_the_rate_the_masks_realise(tmp_path):
    """A layer gate at batch 1 is on or off: calibrated to 0.5, every block is skipped,
    and the line said "rate 0.5" beside a compiled time of a fraction of dense."""
    out = _run("benchmarks/masker_share.py", ["--model", "laud_resnet50", "--mode", "layer",
                                              "--batch", "1", "--reps", "1"], tmp_path)
    head = out.splitlines()[-4:]
    line = next(x for x in head if x.startswith("laud_resnet50 layer batch 1"))
    assert "rate 0.5 (achieved 0.000)" in line and " of dense)" in line
    assert any(x.strip().startswith("variants") and "ms a forward" in x for x in head)


def test_masker_share_op_profile_sorts_operators_into_their_groups():
    """--ops: a GEMM's time lands under GEMMs, a row gather's under gathers; the groups,
    "other operators" and "outside operators" add up to the calls' wall time."""
    mod = _load("benchmarks/masker_share.py")
    a, idx = torch.randn(256, 256), torch.arange(0, 256, 2)
    calls = {"gemm": lambda: a @ a, "gather": lambda: a.index_select(0, idx)}
    for what, fn in calls.items():
        t = mod.time.perf_counter()
        ms = mod.op_ms(fn, 20)
        wall = (mod.time.perf_counter() - t) * 1e3 / 20
        assert set(ms) == {g for g, _ in mod.OP_GROUPS} | {"other operators",
                                                            "outside operators"}
        key = "GEMMs and convolutions" if what == "gemm" else "row gathers and scatters"
        other = "row gathers and scatters" if what == "gemm" else "GEMMs and convolutions"
        assert ms[key] > 0 and ms[other] == 0 and ms["pooling"] == 0
        assert 0 < sum(ms.values()) <= wall  # (the profiler's start and stop outside it)
    lines = mod.op_lines({"pooling": 2.0, "other operators": 0.0},
                         {"pooling": 1.0, "other operators": 0.5}, 0.5)
    assert lines[0].startswith("by operator (torch.profiler), FLOPs ratio 0.500:")
    assert lines[1].split() == ["pooling", "2.00", "1.00", "0.500"]
    assert lines[2].split() == ["other", "operators", "0.00", "0.50", "-"]


# -- memory_batches.py -------------------------------------------------------------------

@pytest.mark.parametrize("calls", ["0", "-3"])
def test_memory_batches_refuses_calls_below_one(calls, monkeypatch, capsys):
    """--calls 0 compiled, printed the memory after compiling and ran no forward."""
    mod = _load("benchmarks/memory_batches.py")
    _no_work(monkeypatch, mod)
    with pytest.raises(SystemExit) as e:
        mod.main(["--calls", calls])
    assert e.value.code == 2
    assert f"--calls {calls}: accepted an int >= 1" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS (Linux)")
def test_memory_batches_smoke(tmp_path):
    out = _run("benchmarks/memory_batches.py", ["--calls", "11"], tmp_path)
    lines = [x for x in out.splitlines() if x.startswith(("after compile", "call "))]
    assert [x.split(":")[0] for x in lines] == ["after compile", "call 10", "call 11"]
    assert all(float(x.split(": ")[1].split()[0]) > 0 for x in lines)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS (Linux)")
def test_memory_batches_labels_its_figures_mib(monkeypatch, capsys):
    """The figures are VmRSS kB / 1024, MiB; the lines said "MB". A stand-in model keeps
    it fast (the smoke test above compiles the real one)."""
    mod = _load("benchmarks/memory_batches.py")
    monkeypatch.setattr(mod, "build_model", lambda *a: nn.Identity())
    monkeypatch.setattr(mod, "calibrate_rates", lambda *a: None)
    monkeypatch.setattr(laudtriton, "compile", lambda model, *a, **k: model)
    with torch.random.fork_rng(devices=[]):
        mod.main(["--calls", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert [x.split(":")[0] for x in lines] == ["after compile", "call 2"]
    assert all(x.split(": ")[1].split()[1] == "MiB" for x in lines)
    with open("/proc/self/status") as f:
        kb = next(int(x.split()[1]) for x in f if x.startswith("VmRSS"))
    assert abs(mod.rss_mib() - kb / 1024) < 64  # (the process may grow in between)


# -- layer_cost_per_sample.py ------------------------------------------------------------

def test_layer_cost_per_sample_takes_no_options(monkeypatch, capsys):
    mod = _load("benchmarks/layer_cost_per_sample.py")
    _no_work(monkeypatch, mod)
    monkeypatch.setattr(sys, "argv", ["layer_cost_per_sample.py", "--batch", "2"])
    with pytest.raises(SystemExit) as e:
        mod.main()
    assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_layer_cost_per_sample_times_a_block_at_each_count():
    """``time_block`` on a folded layer block at a 16x16 map (the script's main compiles
    LAUD-ResNet-101 at batch 8, 224x224: about 30 s)."""
    from laudtriton.bench import build_model
    from laudtriton.ops import fold_block

    mod = _load("benchmarks/layer_cost_per_sample.py")
    block = dict(build_model("laud_resnet50", "layer", "4-4-2-1").blocks())["layer1.1"]
    fb = fold_block(block, torch.float32, "cpu")
    x = torch.relu(torch.randn(3, 256, 16, 16)).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    ms = [mod.time_block(fb, x, n) for n in range(4)]
    assert all(t > 0 for t in ms)
    assert torch.equal(x, before)  # each call runs in place on a copy


# -- cluttered_digits.py -----------------------------------------------------------------

def test_example_save_replaces_the_old_file_whole(tmp_path, monkeypatch):
    """--save wrote straight into the path: a save that failed half way (a full disk)
    left half a file there, the old model lost. Now a temp file is moved over it."""
    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn")
    cd = _load("examples/cluttered_digits.py")
    path = tmp_path / "m.pt"
    path.write_bytes(b"old model")

    def full_disk(obj, f, *args, **kwargs):  # f: a path, or a buffer written out after
        if hasattr(f, "write"):
            f.write(b"half")
        else:
            Path(f).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cd, "train", lambda *a, **k: [])
    monkeypatch.setattr(torch, "save", full_disk)
    with torch.random.fork_rng(devices=[]), pytest.raises(OSError, match="No space"):
        cd.main(["--quick", "--out", str(tmp_path / "o"), "--save", str(path)])
    assert path.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "o"]  # no temp file


def test_example_save_writes_a_state_dict_the_model_loads(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn")
    cd = _load("examples/cluttered_digits.py")
    path = tmp_path / "m.pt"
    path.write_bytes(b"old model")

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(cd, "train", lambda *a, **k: [])
    monkeypatch.setattr(cd, "evaluate", stop)  # after the save: no compiling or timing
    with torch.random.fork_rng(devices=[]):
        with pytest.raises(Stop):
            cd.main(["--quick", "--out", str(tmp_path / "o"), "--save", str(path)])
        model = cd.build_model(cd.Config())
    model.load_state_dict(torch.load(path))  # strict
    assert f"model saved to {path}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "o"]


@pytest.mark.parametrize("option", [["--epochs", "0"], ["--target-rate", "2"],
                                    ["--digit-size", "4"], ["--out", ""]])
def test_example_refused_command_leaves_the_thread_count(option, capsys, tmp_path):
    """--threads set torch's thread count before the options after it were checked: a
    refused command run in-process (``main(argv)``) still changed it. Every option is
    checked first now; an accepted one still sets it."""
    cd = _load("examples/cluttered_digits.py")
    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as e:
            cd.main(["--threads", str(before + 1), *option])
        assert e.value.code == 2 and "error:" in capsys.readouterr().err
        assert torch.get_num_threads() == before
        cd.parse_args(["--threads", str(before + 1), "--out", str(tmp_path / "o")])
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)


# -- every script's number options: ASCII numbers only, as the CLI's (tune.numbers) ------

@pytest.mark.parametrize("rel,option,value", [
    ("benchmarks/masker_share.py", "--reps", "1_0"),  # int() read it as 10
    ("benchmarks/masker_share.py", "--batch", "\u0662"),  # Arabic-Indic 2
    ("benchmarks/masker_share.py", "--rate", "\uff10.\uff15"),  # full-width 0.5
    ("benchmarks/memory_batches.py", "--calls", "1_0"),
    ("benchmarks/gpu_overhead.py", "--input-size", "6_4"),
    ("benchmarks/gpu_overhead.py", "--budget", "3_0"),
    ("benchmarks/gpu_overhead.py", "--batches", "1,6_4"),
    ("examples/cluttered_digits.py", "--epochs", "\u0662"),
    ("examples/cluttered_digits.py", "--target-rate", "\uff10.\uff15"),
])
def test_scripts_refuse_numbers_the_cli_refuses(rel, option, value, monkeypatch, capsys,
                                                tmp_path):
    """The scripts read their numbers with int() and float(), which take '1_0' as 10,
    '\u0662' as 2 and full-width digits: the CLI's options refuse those (tune.numbers).
    Each is now an argparse error naming the option, before any work."""
    mod = _load(rel)
    _no_work(monkeypatch, mod)
    argv = [option, value] + (["--out", str(tmp_path / "o")] if "gpu_" in rel else [])
    with pytest.raises(SystemExit) as e:
        mod.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: invalid" in err or f"{option} {value!r}" in err, err
    assert not (tmp_path / "o").exists()
