"""gpucheck without a GPU: the exit code 2 path, and its plumbing (checks, the kernel
checks on CPU under the interpreter); its outputs are tested in test_gpureport.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from laudtriton import gpureport, kernelchecks
from laudtriton.gpucheck import blocks, checks, command, record, warm, whole

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")


def _env():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _one_error_line(capsys) -> str:
    """The one line a refused gpucheck printed: on stderr, in the CLI's error form."""
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, (out, err)
    assert lines[0].startswith("laudtriton gpucheck: error: ")
    return lines[0]


def test_module_entry_point_is_the_command(tmp_path, capsys):
    """``python -m laudtriton.gpucheck`` refused -v (which ``laudtriton gpucheck --help``
    lists) and printed a usage block before a malformed command line's error."""
    with pytest.raises(SystemExit) as e:
        command.main(["--out", str(tmp_path / "o"), "--configz", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "unrecognized arguments: --configz 3" in err
    assert command.main(["--out", str(tmp_path / "o"), "-v", "--device", "cuda:0"]) == 2
    assert "--device 'cuda:0'" in _one_error_line(capsys)  # -v taken, the option checked


def test_run_rejects_other_devices(tmp_path, capsys):
    assert command.main(["--out", str(tmp_path / "o"), "--device", "cuda:0"]) == 2
    assert "--device 'cuda:0'" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option,value", [
    ("--budget", "-1"), ("--budget", "0"), ("--budget", "nan"), ("--budget", "inf"),
    ("--budget", "100000"),  # 1e20 overflowed the watchdog's timer: a traceback
    ("--configs", "0"), ("--compile-jobs", "0"),
    ("--compile-jobs", str((os.cpu_count() or 1) + 1)),  # a process each: 100 started 86
    ("--batches", "0"), ("--batches", "1,-64"),
    ("--batches", ""),
    ("--batches", "1,x"), ("--batches", "64,1,64"), ("--batches", "100000"),
    ("--batches", "\u0664"), ("--batches", "1_0"),  # int() reads both: 4 and 10
    ("--batches", "9" * 5000),  # int() refused it in words of its own, not naming --batches
    ("--input-size", "16"), ("--out", ""),
])
def test_bad_options_refused_before_any_work(option, value, tmp_path, capsys):
    """Every numeric option is checked first (the CPU plumbing mode would otherwise run
    for minutes); one line naming the option and the value, exit code 2."""
    argv = {"--out": str(tmp_path / "o"), "--device": "cpu", option: value}
    assert command.main([a for kv in argv.items() for a in kv]) == 2
    line = _one_error_line(capsys)
    assert f"{option} " in line and (value in line if value else "''" in line)
    assert not (tmp_path / "o").exists()


def test_compile_jobs_are_bounded_by_the_cpus_this_process_may_use(tmp_path, capsys,
                                                                     monkeypatch):
    """Checked against the machine's CPU count, so that under `taskset -c 0` two workers
    passed (bench --threads is checked against the affinity)."""
    monkeypatch.setattr(command, "usable_cpus", lambda: 1)
    argv = ["--out", str(tmp_path / "o"), "--device", "cpu", "--compile-jobs", "2"]
    assert command.main(argv) == 2
    assert "--compile-jobs 2 must be in [1, 1]" in _one_error_line(capsys)
    # the default too: from those CPUs, not the machine's (16 here, 2 usable)
    monkeypatch.setattr(command, "usable_cpus", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    from laudtriton.cli import build_parser

    args = build_parser().parse_args(["gpucheck", "--out", str(tmp_path / "o")])
    assert args.compile_jobs == 1


@pytest.mark.parametrize("sub", ["", "sub"])
def test_out_that_is_a_file_is_refused(tmp_path, capsys, sub):
    """A file, or a path inside one (before, a traceback from its mkdir under ``python
    -m laudtriton.gpucheck``, after the checks of every other option)."""
    (tmp_path / "f").write_text("x")
    out = str(tmp_path / "f" / sub) if sub else str(tmp_path / "f")
    assert command.main(["--out", out, "--device", "cpu"]) == 2
    line = _one_error_line(capsys)
    assert f"--out {out!r} is not a directory" in line and (tmp_path / "f").read_text() == "x"


@NO_CUDA
def test_run_without_cuda_returns_2(tmp_path, capsys):
    assert command.main(["--out", str(tmp_path / "o")]) == 2
    assert "no CUDA" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


@NO_CUDA
@pytest.mark.parametrize("how", ["main", "cli"])
def test_subprocess_exit_code_2(tmp_path, how):
    if how == "main":
        cmd = [sys.executable, "-c", "import sys; from laudtriton.gpucheck.command import main; "
               f"sys.exit(main(['--out', {str(tmp_path / 'x')!r}]))"]
    else:
        cmd = [sys.executable, "-m", "laudtriton", "gpucheck", "--out", str(tmp_path / "x")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout == ""
    assert res.stderr.splitlines() == ["laudtriton gpucheck: error: no CUDA device found; "
                                       "this command needs an NVIDIA GPU (nothing ran)"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_checks_pass_under_interpreter(dtype):
    """The very checks gpucheck runs on CUDA, on CPU tensors under the interpreter (the
    real kernels pass the channel check's stricter cases: distinct input and output lists,
    a sample with no input channel but every output one)."""
    kernelchecks.channel_kernel_checks("cpu", dtype)
    kernelchecks.masker_kernel_checks("cpu", dtype)
    kernelchecks.spatial_kernel_checks("cpu", dtype)


def test_poisoned_outputs_cover_empty_and_empty_like():
    """Only torch.empty was poisoned: the torch variants' outputs (``slice``,
    ``compact``: torch.empty_like) could hold stale values that pass for results."""
    from laudtriton.kernelchecks import poisoned

    x = torch.zeros(3, 4)
    real = torch.empty, torch.empty_like
    with poisoned():
        assert torch.empty(2, 2).isnan().all() and torch.empty_like(x).isnan().all()
        assert torch.empty_like(x, dtype=torch.int64).dtype == torch.int64  # left as is
    assert (torch.empty, torch.empty_like) == real


def test_check_records_failures(tmp_path):
    r = record.Run(tmp_path, 10, "cpu")
    seen = []
    assert r.check("ok", lambda: r.check("inner", lambda: seen.append(list(r.running))))
    assert not r.check("bad", lambda: 1 / 0)
    assert [c["ok"] for c in r.checks] == [True, True, False]
    assert "ZeroDivisionError" in r.checks[2]["error"]
    assert seen == [["ok", "inner"]] and r.running == []  # what runs, outermost first


@pytest.mark.parametrize("works", [True, False])
def test_a_check_that_breaks_cuda_stops_the_later_ones(tmp_path, monkeypatch, works):
    """A fault that breaks CUDA (an illegal address) made every later check, block and
    whole model FAIL with the same error, read as 20 independent defects, and the
    summary never said where CUDA broke. After a failed check on CUDA the device is
    probed: if it no longer works, later checks are recorded as not run, naming it; if
    it works, they run (a stand-in probe here)."""
    monkeypatch.setattr(record, "_cuda_works", lambda: works)
    r = record.Run(tmp_path, 100, "cuda")
    ran = []
    assert not r.check("faulty kernel", lambda: 1 / 0)
    assert r.check("next kernel", lambda: ran.append(1)) == works
    assert ran == ([1] if works else [])
    assert r.broken == (None if works else "faulty kernel")
    if not works:
        assert r.checks[-1] == {"check": "next kernel", "ok": False, "error":
                                "not run: CUDA stopped working after faulty kernel"}
    cpu = record.Run(tmp_path, 100, "cpu")  # not probed on CPU
    monkeypatch.setattr(record, "_cuda_works", lambda: 1 / 0)
    assert not cpu.check("bad", lambda: 1 / 0) and cpu.broken is None


def test_timings_and_summary_are_written_atomically(tmp_path, monkeypatch):
    """Both were opened with "w": a kill while one was written truncated the run's main
    output (a reviewer's 300,001-line CSV came back with 204,374 lines). A write that
    fails halfway now leaves the last whole file."""
    from laudtriton import gpureport

    r = record.Run(tmp_path, 100, "cpu")
    r.rows = [{"mode": "spatial", "seconds": 1.0}]
    r.info["gpu"] = "stand-in"
    record.save(r, tmp_path)
    csv_before = (tmp_path / "timings.csv").read_text()
    json_before = (tmp_path / "summary.json").read_text()
    assert "stand-in" in json_before and "spatial" in csv_before

    class Killed(BaseException):
        pass

    real = gpureport.csv.DictWriter

    def dies_midway(f, *args, **kwargs):
        f.write("mode,spec\nhalf a row")
        raise Killed

    monkeypatch.setattr(gpureport.csv, "DictWriter", dies_midway)
    r.rows.append({"mode": "channel", "seconds": 2.0})
    with pytest.raises(Killed):
        record.save(r, tmp_path)
    monkeypatch.setattr(gpureport.csv, "DictWriter", real)
    assert (tmp_path / "timings.csv").read_text() == csv_before
    from laudtriton.tune import cache_file

    monkeypatch.setattr(cache_file.json, "dump", lambda *a, **k: (_ for _ in ()).throw(Killed))
    with pytest.raises(Killed):
        record.write_json(tmp_path / "summary.json", {"info": "new"})
    assert (tmp_path / "summary.json").read_text() == json_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "timings.csv"]


def _tiny_part4(monkeypatch):
    """Part 4 on CPU: a tiny LAUD model (spatial, 2-2-1-1) stands in for ResNet-101.
    Returns compile in float64, which stands in for CUDA's half type; the caller puts it
    (or a wrapper of it) in laudtriton.compile's place."""
    import functools

    import laudtriton
    from laudtriton import bench
    from laudtriton.nn import LaudResNet
    from laudtriton.testing import randomize_bn

    def tiny(name, mode, granularity):
        torch.manual_seed(0)
        return randomize_bn(LaudResNet((1, 1, 1, 1), mode=mode, granularity="2-2-1-1",
                                       width_mult=0.25, input_size=None, num_classes=7))
    monkeypatch.setattr(bench, "build_model", tiny)
    monkeypatch.setattr(whole, "MODES", [("spatial", "2-2-1-1")])
    return functools.partial(laudtriton.compile, dtype=torch.float64)


def test_whole_models_time_the_compiled_model_on_an_input_of_its_dtype(tmp_path, monkeypatch):
    """Part 4 compiles for the device's dtype (float16 on CUDA) and must time the compiled
    model on an input of that dtype (a float32 input is refused). On CPU, a float64
    compile stands in for the CUDA case; a tiny model stands in for ResNet-101. The
    compile reads and fills the cache it is given (part 3's, under --out)."""
    import laudtriton

    monkeypatch.setattr(laudtriton, "compile", _tiny_part4(monkeypatch))
    r = record.Run(tmp_path, 600, "cpu")
    whole.whole_models(r, [2], 48, r.deadline, cache_dir=tmp_path / "cache")
    assert [c["ok"] for c in r.checks] == [True], r.checks
    assert {row["variant"] for row in r.rows} == {"compiled", "dense"}
    assert list((tmp_path / "cache").glob("*.json"))  # tune="quick" recorded its timings there
    # the compiled logits against the float32 reference's (float64 compile: exact here)
    (cmp,) = r.info["whole_vs_float32_reference"].values()
    assert cmp["dtype"] == "float64" and cmp["same_top1"] == 1.0
    assert 0 <= cmp["max_rel_error"] <= 1e-4
    # the bounded comparison: the same network's dense variants on the compiled masks
    (gap,) = r.info["whole_vs_dense_on_its_masks"].values()
    assert 0 <= gap <= 1e-10
    assert "vs the dense variants on its masks" in (tmp_path / record.LOG_NAME).read_text()
    monkeypatch.setattr(whole, "WHOLE_TOL", -1.0)  # nothing meets it: the item fails
    r = record.Run(tmp_path, 600, "cpu")
    whole.whole_models(r, [2], 48, r.deadline, cache_dir=tmp_path / "cache")
    assert not r.checks[0]["ok"] and "from the dense variants'" in r.checks[0]["error"]


def test_run_writes_its_results_after_each_part(tmp_path, monkeypatch):
    """A run stopped by its time limit (SIGTERM) still leaves timings.csv and
    summary.json with what it gathered."""
    import json
    import signal

    def machine(r):
        r.check("machine", lambda: None)

    def stopped(r, until=None):  # inside a check: a SIGTERM is not a failed check
        r.check("kernel", lambda: os.kill(os.getpid(), signal.SIGTERM))
    monkeypatch.setattr(command, "machine", machine)
    monkeypatch.setattr(command, "kernel_checks", stopped)
    monkeypatch.setattr(command, "_options", lambda args: [1])
    args = command.add_parser(__import__("argparse").ArgumentParser().add_subparsers()
                               ).parse_args(["--out", str(tmp_path), "--device", "cpu"])

    def not_gpucheck(signum, frame):  # without gpucheck's own handler: fail, don't die
        raise RuntimeError("gpucheck set no SIGTERM handler")
    previous = signal.signal(signal.SIGTERM, not_gpucheck)
    try:
        assert command.run(args) == 1
        assert signal.getsignal(signal.SIGTERM) is not_gpucheck  # put back after the run
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [c["check"] for c in summary["checks"]] == [
        "machine", "gpucheck run", "part 3/4 completed", "part 4/4 completed"]
    # what was running is named (a reviewer's stopped run named neither), and the parts
    # never reached are listed as not run (the table read "checks: 1/2 passed")
    assert summary["checks"][1]["error"].startswith("Terminated: signal")
    assert summary["checks"][1]["error"].endswith(", during part 2/4 completed > kernel")
    assert all(c["error"] == "not run: the run was stopped before it"
               for c in summary["checks"][2:])
    assert (tmp_path / "timings.csv").exists()
    log = (tmp_path / record.LOG_NAME).read_text()
    assert "] start kernel\n" in log  # logged as it started: a SIGKILL leaves that line
    assert "gpucheck done in " in log  # the closing table and lines, as printed


def test_a_run_stopped_in_part3_names_the_autotune_cache_it_wrote(tmp_path, monkeypatch,
                                                                   capsys):
    """The cache line was printed only when part 3 returned: a time limit's stop inside
    it left the file (the one a session commits) unnamed."""
    import signal

    from laudtriton.ops.spec import BlockSpec

    def part3(r, blocks_, batches, configs, end, cache):
        cache.record(BlockSpec(16, 4, 16, 1, False, (8, 8), "spatial", 2), 0.5,
                     {"dense": {"{}": 1e-3}})
        os.kill(os.getpid(), signal.SIGTERM)
        return []

    monkeypatch.setattr(command, "machine", lambda r: None)
    monkeypatch.setattr(command, "kernel_checks", lambda r, until=None: None)
    monkeypatch.setattr(command, "warm_compiles", lambda *a, **k: None)
    monkeypatch.setattr(command, "distinct_blocks", lambda models, size: {"x": None})
    monkeypatch.setattr(command, "time_blocks", part3)
    monkeypatch.setattr(command, "_options", lambda args: [1])
    assert command.run(_args(tmp_path)) == 1
    out = capsys.readouterr().out
    path = tmp_path / "autotune_cache"
    (cache_file,) = path.glob("*.v1.json")
    assert f"autotune cache: {cache_file}" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["info"]["autotune_cache"] == str(cache_file)


def _args(tmp_path):
    return command.add_parser(__import__("argparse").ArgumentParser().add_subparsers()
                               ).parse_args(["--out", str(tmp_path), "--device", "cpu"])


def test_a_part_that_raises_is_a_failed_check_and_the_next_part_runs(tmp_path, monkeypatch):
    """A failing part 2 leaves parts 3 and 4 to run. Part 4 compiles only the batches part
    3 timed in full (compile's tuning would time the others' blocks past the time box);
    the rest are recorded as not run."""
    import json

    seen = []
    monkeypatch.setattr(command, "_options", lambda args: [1, 64])
    monkeypatch.setattr(command, "machine", lambda r: None)
    monkeypatch.setattr(command, "kernel_checks", lambda r, until=None: 1 / 0)
    monkeypatch.setattr(command, "distinct_blocks", lambda models, size: {})
    monkeypatch.setattr(command, "time_blocks", lambda *a: [1])  # cut short in batch 64
    monkeypatch.setattr(command, "whole_models",
                        lambda r, batches, size, end, d: seen.append(list(batches)))
    assert command.run(_args(tmp_path)) == 1
    assert seen == [[1]]
    fails = [c for c in json.loads((tmp_path / "summary.json").read_text())["checks"]
             if not c["ok"]]
    assert [c["check"] for c in fails] == ["part 2/4 completed", "whole laud_resnet101 b64"]
    assert "ZeroDivisionError" in fails[0]["error"] and "1 / 0" in fails[0]["traceback"]
    assert fails[1]["error"] == "not run: part 3 did not time batch 64"
    monkeypatch.setattr(command, "time_blocks", lambda *a: [1, 64])
    monkeypatch.setattr(command, "kernel_checks", lambda r, until=None: None)
    seen.clear()
    assert command.run(_args(tmp_path)) == 0
    assert seen == [[1, 64]]


def test_time_blocks_goes_on_past_a_failing_block(monkeypatch, tmp_path):
    r = record.Run(tmp_path, 10, "cpu")

    class Spec:
        def __init__(self, name, batch=1):
            self.name, self.batch = name, batch

        def with_(self, batch):
            return Spec(self.name, batch)

        def short(self):
            return self.name
    timed = []

    def one(r, mode, block, spec, members, n, cache):
        if spec.name == "bad":
            raise RuntimeError("no kernel")
        timed.append((spec.name, spec.batch))
    monkeypatch.setattr(blocks, "_time_block", one)
    listed = {k: ("spatial", None, Spec(k), {}) for k in ("a", "bad", "c")}
    assert blocks.time_blocks(r, listed, [1, 4], 1, r.deadline, None) == [1, 4]
    assert timed == [("a", 1), ("c", 1), ("a", 4), ("c", 4)]
    assert [c["check"] for c in r.checks] == ["timing b1 spatial bad", "timing b4 spatial bad"]
    assert blocks.time_blocks(r, listed, [1], 1, r.t0 - 1, None) == []  # past its box


def test_failed_checks_are_described_in_one_line(tmp_path):
    assert record.describe(AssertionError()) == "AssertionError"
    assert record.describe(ValueError("at 70:12:\n    x = tl.dot(a, b)\nK must be >= 16")) == (
        "ValueError: at 70:12: ... K must be >= 16")
    r = record.Run(tmp_path, 10, "cpu")

    def bare():
        raise AssertionError
    assert not r.check("bare", bare)  # an empty message is a failure, not a crash
    assert not r.check("late", lambda: None, until=r.t0 - 1)
    assert [(c["check"], c["error"]) for c in r.checks] == [
        ("bare", "AssertionError"), ("late", "not run: time box")]
    assert r.check("quiet", lambda: None, quiet=True) and len(r.checks) == 2


def test_exact_fp32_turns_tf32_off_inside_only():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with kernelchecks.exact_fp32():
        assert not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_variant_check_compares_every_variant_it_is_given():
    """gpucheck's end-to-end check, on CPU in float32, float16 and bfloat16: every
    variant (``dense``, the fallback, too) in each of its modes meets a block it supports
    (``patch`` needs maps S divides) and compares; the Triton variants run under the
    interpreter, in float32 with every config they offer (their tile sizes change the
    bounds masking). The Triton variants run only float32 here: under the interpreter
    their half-precision runs cost 16 s (float16, channel_gemm's 3x3 kernel 11 s of it)
    and over 20 s (bfloat16, whose arithmetic is float32's there) on a 2-core machine.
    Their float16 and bfloat16 runs, against the same ``testing.TOLERANCE``, are
    tests/kernels/test_triton_fuzz.py's (every Triton variant, edge rows and random
    draws) and gpucheck's on the GPU. One that supports none of its blocks fails the
    check rather than passing empty."""
    import dataclasses

    from laudtriton.ops import all_variants

    for v in all_variants():
        dtypes = ((torch.float32,) if v.needs_triton
                  else (torch.float32, torch.float16, torch.bfloat16))
        for mode in v.modes:  # the half-precision bound is gpucheck's too
            for dt in dtypes:
                kernelchecks.variant_check(v, mode, "cpu", dt,
                                           all_configs=dt == torch.float32)
    gather = next(v for v in all_variants() if v.name == "gather")
    for broken in (dataclasses.replace(gather, supports=lambda spec: False),
                   dataclasses.replace(gather, configs=lambda spec: [])):
        with pytest.raises(AssertionError, match="nothing compared"):
            kernelchecks.variant_check(broken, "spatial", "cpu", torch.float32)


def test_part2_checks_have_distinct_names():
    """The compile workers find a check by its name (``_warm_worker``)."""
    for device in ("cpu", "cuda"):
        names = [n for n, _ in checks.part2_checks(device)]
        assert names and len(set(names)) == len(names)


def _small_blocks():
    """part 3's distinct blocks of LAUD-ResNet-50 (ResNet-101's are the same shapes) at a
    64x64 input, in float16 as part 3 lists them."""
    global _SMALL
    if _SMALL is None:
        _SMALL = blocks.distinct_blocks(["laud_resnet50"], 64)
    return _SMALL


_SMALL = None


def test_random_blocks_have_the_specs_of_part3s_blocks():
    """The compile workers build part 3's blocks from their specs alone, with random
    weights: the same specs (so the same kernels compile), at every batch."""
    from laudtriton.ops import BlockSpec

    blocks = _small_blocks()
    assert {mode for mode, *_ in blocks.values()} == {"spatial", "channel", "layer"}
    jobs = warm.part3_warmups(blocks, [1, 3])
    # layer blocks have no Triton variant: no job; the others at each batch
    timed = [spec for mode, _, spec, _ in blocks.values() if mode != "layer"]
    assert sorted(BlockSpec.from_dict(d).key() for _, d in jobs) == sorted(
        s.with_(batch=b).key() for b in (1, 3) for s in timed)
    assert len({n for n, _ in jobs}) == len(jobs)
    for _, _, spec, _ in blocks.values():
        for b in (1, 3):  # raises on another spec
            assert warm._random_block(spec.with_(batch=b)) is not None
    bad = BlockSpec.from_dict(jobs[0][1])
    with pytest.raises(ValueError, match="came out as"):
        warm._random_block(bad.with_(out_channels=bad.out_channels + 4))


def test_warm_block_runs_each_triton_config_at_each_rate(monkeypatch):
    """warm_block runs what part 3 times: the first n configs of every Triton variant, at
    every rate, in place where the variant runs in place (on a copy: x is kept); a
    failing config does not stop the others, and its error is raised at the end."""
    import laudtriton.ops as ops
    from laudtriton.gpureport import RATES

    spec = next(s for m, _, s, _ in _small_blocks().values() if m == "spatial")
    calls = []

    class Fake:
        def __init__(self, name, triton, inplace, fail=None, fault=None):
            self.name, self.needs_triton, self.fail, self.fault = name, triton, fail, fault
            self.run_inplace = self._inplace if inplace else None

        def configs(self, spec):
            return [{"c": i} for i in range(4)]

        def run(self, fb, x, masks, cfg):
            calls.append((self.name, "run", cfg["c"]))
            if cfg["c"] == self.fail:
                raise RuntimeError("no compile")
            if cfg["c"] == self.fault:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")

        def _inplace(self, fb, x, masks, cfg):
            assert x.is_contiguous(memory_format=torch.channels_last)
            x.zero_()
            calls.append((self.name, "inplace", cfg["c"]))

    fakes = [Fake("dense", False, False), Fake("a", True, False, fail=0),
             Fake("b", True, True)]
    monkeypatch.setattr(ops, "variants_for", lambda spec, backend: fakes)
    with pytest.raises(RuntimeError, match=r"^a \{'c': 0\}: RuntimeError: no compile"):
        warm.warm_block("cpu", spec, 2)
    # a's config 0 fails at the first rate: not run at the others (a failed compile is
    # not cached, and was compiled again at every rate)
    want = [("a", "run", 0)] + [(v, how, c) for v, how, cs in (
        ("a", "run", (1,)), ("b", "inplace", (0, 1))) for c in cs for _ in RATES]
    assert calls == want
    # a harmless failure first, then a fault that breaks CUDA: the fault is raised at
    # once, naming its variant (the first error's text was tested, and the fault missed)
    calls.clear()
    fakes[1] = Fake("a", True, False, fail=0, fault=1)
    with pytest.raises(warm.WarmError, match=r"^a \{'c': 1\}: .*illegal memory") as e:
        warm.warm_block("cpu", spec, 2)
    assert e.value.variant == "a" and calls[-1] == ("a", "run", 1)
    assert not any(v == "b" for v, _, _ in calls)


def test_warm_block_runs_the_real_triton_variants(monkeypatch):
    """Under the interpreter: warm_block runs every Triton variant of a spatial and a
    channel block, each in the form part 3 times (in place where offered), at each of
    part 3's rates, with the first config; and it runs no torch variant."""
    import dataclasses

    import laudtriton.ops as ops

    calls = []

    def recording(variants_for):
        def wrapped(spec, backend):
            out = []
            for v in variants_for(spec, backend):
                def rec(run, name, form):
                    def run_and_record(fb, x, masks, cfg):
                        calls.append((name, form, json.dumps(cfg, sort_keys=True)))
                        return run(fb, x, masks, cfg)
                    return run_and_record
                out.append(dataclasses.replace(
                    v, run=rec(v.run, v.name, "run"),
                    run_inplace=None if v.run_inplace is None
                    else rec(v.run_inplace, v.name, "inplace")))
            return out
        return wrapped

    monkeypatch.setattr(ops, "variants_for", recording(ops.variants_for))
    blocks = _small_blocks()
    for mode in ("spatial", "channel"):
        spec = next(s for m, _, s, _ in blocks.values() if m == mode and min(s.in_hw) <= 8)
        calls.clear()
        warm.warm_block("cpu", spec, 1)
        triton = [v for v in ops.variants_for(spec, "cuda") if v.needs_triton]
        assert triton, mode
        want = sorted((v.name, "run" if v.run_inplace is None else "inplace",
                       json.dumps(v.configs(spec)[0], sort_keys=True))
                      for v in triton for _ in gpureport.RATES)
        assert sorted(calls) == want, mode


def test_warm_compiles_runs_every_check_in_worker_processes(tmp_path, capsys):
    """Part 2's compile warm-up: spawned workers run every check by name and the run goes
    on (here each fails at once for want of CUDA; on a GPU they fill Triton's on-disk
    cache). Off CUDA, or with one job, nothing is started."""
    import time

    r = record.Run(tmp_path, 100, "cpu")
    assert warm.warm_compiles(r, time.perf_counter() + 100, 2) == 0
    r.device = "cuda"
    assert warm.warm_compiles(r, time.perf_counter() + 100, 1) == 0
    n = len(checks.part2_checks("cuda"))
    assert warm.warm_compiles(r, time.perf_counter() + 100, 2) == n
    out = capsys.readouterr().out
    assert f"{n} of part 2's {n} checks in" in out and f"{n} failed there (first: " in out
    # then part 3's blocks, each run by warm_block (here failing at once, on "cuda")
    part3 = warm.part3_warmups(_small_blocks(), [1, 3])
    assert warm.warm_compiles(r, time.perf_counter() + 100, 2, lambda: part3) == n + len(part3)
    out = capsys.readouterr().out
    assert (f"{n} of part 2's {n} checks and {len(part3)} of part 3's {len(part3)} blocks in"
            in out), out
    assert f"{n + len(part3)} failed there" in out


def test_warm_compiles_kills_its_workers_on_sigterm(tmp_path, monkeypatch):
    """A SIGTERM (``Terminated``) while the main process waits for the compile workers
    propagates, and no worker is left running (with a pool, one killed while holding
    the pool's lock hung the main process until SIGKILL)."""
    import multiprocessing
    import time
    from multiprocessing.context import SpawnProcess

    real_join, calls = SpawnProcess.join, []

    def join(self, timeout=None):
        calls.append(timeout)
        if len(calls) == 1:
            raise record.Terminated("signal 15")
        return real_join(self, timeout)

    monkeypatch.setattr(SpawnProcess, "join", join)
    r = record.Run(tmp_path, 100, "cpu")
    r.device = "cuda"
    with pytest.raises(record.Terminated):
        warm.warm_compiles(r, time.perf_counter() + 100, 2)
    assert multiprocessing.active_children() == []


def test_warm_compiles_share_the_usable_cpus_among_their_workers(tmp_path, monkeypatch):
    """Each compile worker gets its share of the CPUs this process may use (its affinity
    mask, as --compile-jobs is bounded by), not of the machine's: under taskset the
    workers would otherwise run more threads than there are CPUs to run them."""
    import time
    from multiprocessing.context import SpawnProcess

    threads = []

    def start(self):  # the worker's last argument is its thread count; none starts
        threads.append(self._args[-1])
        raise OSError("not started")

    monkeypatch.setattr(SpawnProcess, "start", start)
    monkeypatch.setattr(warm, "usable_cpus", lambda: 4)
    monkeypatch.setattr(warm.os, "cpu_count", lambda: 64)
    r = record.Run(tmp_path, 100, "cpu")
    r.device = "cuda"
    assert warm.warm_compiles(r, time.perf_counter() + 100, 2) == 0
    assert threads == [2]


def test_warm_compiles_that_cannot_start_leaves_part2_to_the_main_process(
        tmp_path, monkeypatch, capsys):
    """Workers that cannot start (no /dev/shm, say) are one printed line: the warm-up
    shared a step with the checks, so raising would have skipped every check."""
    import time
    from multiprocessing.context import SpawnProcess

    def start(self):
        raise OSError("no semaphores")

    monkeypatch.setattr(SpawnProcess, "start", start)
    r = record.Run(tmp_path, 100, "cpu")
    r.device = "cuda"
    assert warm.warm_compiles(r, time.perf_counter() + 100, 2) == 0
    assert "compile workers failed (OSError: no semaphores)" in capsys.readouterr().out


def test_an_out_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys,
                                                                   monkeypatch):
    """Found after part 1 had run, with an error that did not name --out."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    assert command.main(["--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    line = _one_error_line(capsys)
    assert "--out" in line and "cannot be made or written (Permission denied)" in line


def test_out_with_a_tilde_is_the_home_directory(tmp_path, monkeypatch):
    """'--out=~/x' reaches the program unexpanded; check_dir expanded it, the run wrote
    into a directory literally named '~'."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(command, "Run", lambda out, *a: (_ for _ in ()).throw(
        RuntimeError(f"Run at {out}")))
    with pytest.raises(RuntimeError, match=f"Run at {tmp_path / 'home' / 'x'}"):
        command.main(["--out=~/x", "--device", "cpu"])
    assert not (tmp_path / "~").exists()


def test_time_variants_checks_each_configs_first_output():
    """A config whose first output the check refuses scores inf and its error is
    returned; the others are timed. Part 3 checks every config it times this way."""
    from laudtriton.ops import fold_block, variants_for
    from laudtriton.ops.spec import BlockSpec
    from laudtriton.ops.synthetic import synthetic_masks
    from laudtriton.testing import make_block
    from laudtriton.tune.measure import time_variants

    block = make_block(16, 4, 1, "spatial", 2)
    spec = BlockSpec.from_block(block, (1, 16, 8, 8), torch.float32)
    x = torch.randn(1, 16, 8, 8).relu().contiguous(memory_format=torch.channels_last)
    masks = synthetic_masks(spec, 0.5, seed=1)
    cands = [v for v in variants_for(spec, "cpu") if v.name in ("gather", "dense")]
    seen, errors = [], {}

    def check(name, cfg, out):
        seen.append((name, out.shape))
        if name == "gather":
            raise AssertionError("wrong")
    t = time_variants(fold_block(block), spec, x, masks, cands, warmup=0, reps=1,
                      check=check, errors=errors)
    assert sorted(seen) == [("dense", (1, 16, 8, 8)), ("gather", (1, 16, 8, 8))]
    assert t["gather"] == {"{}": float("inf")} and 0 < t["dense"]["{}"] < float("inf")
    assert list(errors) == [("gather", "{}")] and "wrong" in str(errors["gather", "{}"])


def test_time_block_checks_configs_and_times_the_static_dense_block(tmp_path, monkeypatch):
    """Part 3 on CPU: the ratios divide by the static dense block (no masks), the cache's
    "dense" is the dense variant with masks (a sweep's), and a variant whose output is
    wrong is a failed check naming it (it was timed as if right, exit code 0)."""
    import dataclasses

    from laudtriton import ops
    from laudtriton.ops.spec import BlockSpec
    from laudtriton.testing import make_block
    from laudtriton.tune.cache import TuneCache

    block = make_block(16, 4, 1, "spatial", 2)
    spec = BlockSpec.from_block(block, (1, 16, 8, 8), torch.float16)
    real = ops.variants_for
    static = []
    monkeypatch.setattr(blocks, "_static_dense_time",
                        lambda fb, x, dev: static.append(x.dtype) or 1e-3)

    def with_a_wrong_one(s, backend):
        out = real(s, backend)
        gather = next(v for v in out if v.name == "gather")
        wrong = dataclasses.replace(gather, name="wrong", run_inplace=None,
                                    run=lambda fb, x, m, c: gather.run(fb, x, m, c) * 1.1)
        return out + [wrong]
    monkeypatch.setattr(ops, "variants_for", with_a_wrong_one)
    r = record.Run(tmp_path, 600, "cpu")
    cache = TuneCache(tmp_path / "cache")
    recorded = []
    real_record = cache.record
    monkeypatch.setattr(cache, "record", lambda s, rate, timings, meta: (
        recorded.append(timings), real_record(s, rate, timings, meta)))
    blocks._time_block(r, "spatial", block, spec, {"m": ["layer1.0"]}, 1, cache)
    assert static == [torch.float16, torch.bfloat16]
    fails = [c["check"] for c in r.checks if not c["ok"]]
    # one failed check, at the first rate: the config is not run at the later ones
    assert fails == [f"config b1 {spec.short()} rate {gpureport.RATES[0]} wrong {{}}"]
    assert {row["rate"] for row in r.rows if row["variant"] == "wrong"} == {
        gpureport.RATES[0]}
    assert f"not run on b1 {spec.short()} at rate {gpureport.RATES[1]}: wrong {{}} (failed" \
        in (tmp_path / record.LOG_NAME).read_text()
    dense_rows = [row for row in r.rows if row["variant"] == "dense"]
    assert {row["seconds"] for row in dense_rows} == {1e-3}
    entries = TuneCache(tmp_path / "cache").entries()
    assert {e.variant for e in entries} >= {"dense", "gather"}
    assert all(e.seconds != 1e-3 for e in entries if e.variant == "dense")
    assert r.info["part3_configs_checked"] >= len(gpureport.RATES) * 2
    # the failed config is in the cache as failed at every rate, not missing at the later
    # ones (compile uses a cached rate only where every candidate has a timing)
    # ("wrong", no registered variant, is left out of the file: what record was given)
    assert [t["wrong"] for t in recorded] == [{"{}": float("inf")}] * len(gpureport.RATES)


def test_a_check_that_broke_cuda_in_its_worker_is_not_run_again(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(checks, "part2_checks", lambda device: [
        ("a", lambda: ran.append("a")), ("b", lambda: ran.append("b"))])
    r = record.Run(tmp_path, 600, "cpu")
    r.sticky["b"] = "RuntimeError: CUDA error: an illegal memory access was encountered"
    checks.kernel_checks(r)
    assert ran == ["a"]
    assert [(c["check"], c["ok"]) for c in r.checks] == [("a", True), ("b", False)]
    assert "illegal memory access" in r.checks[1]["error"]
    assert "FAIL b" in (tmp_path / record.LOG_NAME).read_text()


def test_a_worker_stops_at_a_fault_that_breaks_cuda(tmp_path, monkeypatch):
    """A compile worker whose CUDA context a check broke went on claiming jobs, each
    failing at once with the same sticky error: every one was then taken for a fault of
    its own (recorded failed, never run). It stops after the fault; another worker runs
    the rest. A part 3 block whose variant broke CUDA is not timed with that variant."""
    import time

    from laudtriton.ops import BlockSpec

    sticky = "CUDA error: an illegal memory access was encountered"
    state = {"broken": False, "runs": []}

    def check(i):
        def run():
            state["runs"].append(i)
            if state["broken"] or i == 2:
                state["broken"] = True
                raise RuntimeError(sticky)
        return run

    checks = [(f"c{i}", check(i)) for i in range(8)]
    monkeypatch.setattr(warm, "part2_checks", lambda device: checks)
    spec = BlockSpec(32, 8, 32, 1, False, (8, 8), "spatial", 2)

    def warm_block(device, s, n):
        raise warm.WarmError("fused", f"fused {{'conv1': {{}}}}: RuntimeError: {sticky}")
    monkeypatch.setattr(warm, "warm_block", warm_block)

    class InProcess:  # each worker runs at start(), in a fresh (unbroken) context
        def __init__(self, target, daemon, args):
            self.target, self.args = target, args

        def start(self):
            state["broken"] = False
            self.target(*self.args)

        def join(self, timeout=None):
            pass

        def is_alive(self):
            return False

        def kill(self):
            pass

    class Ctx:
        Process = InProcess

    import multiprocessing

    monkeypatch.setattr(multiprocessing, "get_context", lambda kind: Ctx())
    r = record.Run(tmp_path, 100, "cpu")
    r.device = "cuda"
    part3 = [("warm b1 spatial #0", spec.to_dict())]
    assert warm.warm_compiles(r, time.perf_counter() + 100, 2, lambda: part3) == 9
    assert sorted(r.sticky) == ["c2"]  # the worker stopped there; the other ran the rest
    assert sorted(state["runs"]) == list(range(8))
    assert r.deny == {(spec.key(), "fused"):
                      f"WarmError: fused {{'conv1': {{}}}}: RuntimeError: {sticky}"}
    assert any(c["check"] == "warm b1 spatial #0 fused" and not c["ok"] for c in r.checks)


def test_the_table_lists_at_most_max_fails_failures(tmp_path):
    """After a fault, every later check may fail: the table (the console's last lines)
    lists MAX_FAILS of them and says how many more there are."""
    from laudtriton.gpureport import MAX_FAILS, table

    r = record.Run(tmp_path, 100, "cpu")
    r.checks = [{"check": f"c{i}", "ok": False, "error": "x" * 1000} for i in range(50)]
    text = table(r, [])
    assert text.count("FAIL") == MAX_FAILS and f"and {50 - MAX_FAILS} more failed" in text
    assert max(len(line) for line in text.splitlines()) < 300


def test_a_watchdog_stops_an_item_that_overruns_the_budget(tmp_path, monkeypatch):
    """The time box is kept between items: one item running long (a compile, a whole
    model) overran it without bound. Past budget + WATCHDOG_S the run stops as on a
    SIGTERM, keeps what it gathered, and leaves no alarm behind; nothing was written to
    the cache, so no lock file was made beside it."""
    import json
    import signal
    import time

    def slow(r, until=None):
        r.check("kernel", lambda: time.sleep(60))  # ends early only if stopped
    monkeypatch.setattr(command, "WATCHDOG_S", 0.2)
    monkeypatch.setattr(command, "machine", lambda r: r.check("machine", lambda: None))
    monkeypatch.setattr(command, "kernel_checks", slow)
    monkeypatch.setattr(command, "_options", lambda args: [1])
    args = _args(tmp_path)
    args.budget = 0.1
    t0 = time.perf_counter()
    assert command.run(args) == 1
    assert time.perf_counter() - t0 < 30  # far from 60 s, even on a loaded machine
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    checks = json.loads((tmp_path / "summary.json").read_text())["checks"]
    assert [c["check"] for c in checks][:2] == ["machine", "gpucheck run"]
    assert "Terminated: signal" in checks[1]["error"] and "> kernel" in checks[1]["error"]
    assert not list(tmp_path.rglob("*.lock"))


def test_device_cpu_without_the_interpreter_is_refused(tmp_path, capsys, monkeypatch):
    """Without TRITON_INTERPRET=1 the kernels were compiled for a GPU on CPU tensors and
    9 kernel checks reported FAIL: a plumbing run that only looked broken."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert command.main(["--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    line = _one_error_line(capsys)
    assert "--device cpu" in line and "TRITON_INTERPRET=1" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["1", "true", "ON", "y"])
def test_cuda_under_the_interpreter_is_refused(tmp_path, capsys, monkeypatch, value):
    """TRITON_INTERPRET left set (as for the CPU tests) on a GPU machine: every Triton
    kernel ran under the interpreter on the host, ~1000x slower, and part 3 timed that
    and put it in the autotune cache a session commits. Refused before any work (a GPU
    stands in here)."""
    monkeypatch.setenv("TRITON_INTERPRET", value)
    monkeypatch.setattr(command.torch.cuda, "is_available", lambda: True)
    assert command.main(["--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert f"TRITON_INTERPRET={value!r} is set" in line and "--device cuda" in line
    assert not (tmp_path / "o").exists()
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # off: the options pass
    args = _args(tmp_path)
    args.device = "cuda"
    assert command._options(args) == [1, 64]


def test_one_reading_of_triton_interpret_for_every_check(tmp_path, monkeypatch):
    """``kernels.aot.interpreting`` reads TRITON_INTERPRET as Triton does, and every
    check reads it: gpucheck's two, the kernels' bf16 upcast and the AOT refusal (each
    compared the value with "1" alone, so "true", which Triton interprets under, passed
    for compiled kernels)."""
    from laudtriton.kernels import aot, gather_conv

    args = _args(tmp_path)
    for value in ("1", "true", "YES", "On", "y"):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert aot.interpreting() and gather_conv.interpreter_upcast(torch.bfloat16)
        assert command._options(args) == [1, 64]  # --device cpu: the interpreter is on
        with pytest.raises(RuntimeError, match="AOT compilation needs it unset"):
            aot.discover()
    for value in ("0", "", "false", "off", "2"):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert not aot.interpreting() and not gather_conv.interpreter_upcast(torch.bfloat16)
        with pytest.raises(ValueError, match="set TRITON_INTERPRET=1"):
            command._options(args)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not aot.interpreting()


def test_options_take_the_bounds_they_name(tmp_path, monkeypatch):
    """--budget at its stated maximum (86400 s) and --compile-jobs equal to the CPUs this
    process may use are accepted, as the errors ("<= 86400", "[1, N]") say."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(command, "usable_cpus", lambda: 3)
    args = _args(tmp_path)
    args.budget, args.compile_jobs, args.batches = command.MAX_BUDGET_S, 3, "1,64"
    assert command._options(args) == [1, 64]


def test_a_run_leaves_no_output_of_an_earlier_run_in_out(tmp_path, monkeypatch, capsys):
    """A second run into the same --out appended to the first one's gpucheck.log (its
    FAIL lines read as this run's), and a plot this run did not write (nothing timed)
    was left there, unnamed, as if it were this run's. The earlier autotune cache is
    kept: this run adds to it."""
    monkeypatch.setattr(command, "machine", lambda r: None)
    monkeypatch.setattr(command, "kernel_checks", lambda r, until=None: None)
    monkeypatch.setattr(command, "warm_compiles", lambda *a, **k: None)
    monkeypatch.setattr(command, "distinct_blocks", lambda models, size: {})
    monkeypatch.setattr(command, "time_blocks", lambda *a: [1])
    monkeypatch.setattr(command, "whole_models", lambda *a: None)
    monkeypatch.setattr(command, "_options", lambda args: [1])
    stale = {record.LOG_NAME: "[ 12.0s] FAIL kernel maskers float16  AssertionError\n",
             "latency_vs_rate_laud_resnet50.png": "old plot",
             "latency_vs_rate_laud_resnet101.png": "old plot"}
    for name, text in stale.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "autotune_cache").mkdir()
    (tmp_path / "autotune_cache" / "kept.json").write_text("{}")
    assert command.run(_args(tmp_path)) == 0
    assert "plot:" not in capsys.readouterr().out  # nothing timed: no plot written
    assert not any((tmp_path / n).exists() for n in stale if n.endswith(".png"))
    log = (tmp_path / record.LOG_NAME).read_text()
    assert "FAIL" not in log and "gpucheck done in " in log
    assert (tmp_path / "autotune_cache" / "kept.json").read_text() == "{}"


def test_a_run_leaves_its_cache_file_and_its_lock_in_the_cache_folder(tmp_path, monkeypatch):
    """--out's cache folder holds the cache file part 3 wrote and its lock file, empty,
    which stays (unlinked, two writers could hold "the lock" at once:
    test_gpucheck_signals.py); the repository's .gitignore leaves it out of a commit."""
    from laudtriton.ops.spec import BlockSpec

    def part3(r, blocks_, batches, configs, end, cache):
        cache.record(BlockSpec(16, 4, 16, 1, False, (8, 8), "spatial", 2), 0.5,
                     {"dense": {"{}": 1e-3}})
        assert cache.lock_path.exists()  # taken while it wrote
        return batches

    monkeypatch.setattr(command, "machine", lambda r: None)
    monkeypatch.setattr(command, "kernel_checks", lambda r, until=None: None)
    monkeypatch.setattr(command, "warm_compiles", lambda *a, **k: None)
    monkeypatch.setattr(command, "distinct_blocks", lambda models, size: {"x": None})
    monkeypatch.setattr(command, "time_blocks", part3)
    monkeypatch.setattr(command, "whole_models", lambda *a: None)
    monkeypatch.setattr(command, "_options", lambda args: [1])
    assert command.run(_args(tmp_path)) == 0
    (cache_file,) = (tmp_path / "autotune_cache").glob("*.v1.json")
    assert sorted(p.name for p in (tmp_path / "autotune_cache").iterdir()) == [
        cache_file.name, cache_file.name + ".lock"]
    assert (tmp_path / "autotune_cache" / (cache_file.name + ".lock")).stat().st_size == 0
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "autotune_cache/*.lock" in ignored  # a fetched folder copied into the repo


def test_a_failed_checks_traceback_keeps_its_end(tmp_path):
    """summary.json keeps the last TRACEBACK_LINES lines of a failed check's traceback:
    its end, where the error is (a Triton compile error's cause is on its last line)."""
    r = record.Run(tmp_path, 10, "cpu")
    message = "\n".join(f"line {i}" for i in range(40))

    def fails():
        raise ValueError(message)
    assert not r.check("long", fails)
    tb = r.checks[0]["traceback"].splitlines()
    assert len(tb) == record.TRACEBACK_LINES and tb[-1] == "line 39"
    assert not tb[0].startswith("Traceback")


def test_a_table_run_names_the_first_item_that_broke_cuda(tmp_path, monkeypatch):
    """TableRun.broken names the item after which CUDA stopped working; a later failing
    item (failing because of it) does not take its place."""
    monkeypatch.setattr(record, "_cuda_works", lambda: False)
    r = record.TableRun(tmp_path, 10, "cuda", ("a",), "t")
    assert r.attempt("first", lambda: 1 / 0) is None
    assert r.attempt("second", lambda: 1 / 0) is None
    assert r.broken == "first" and [e["item"] for e in r.errors] == ["first", "second"]


def test_time_blocks_saves_after_each_block(monkeypatch, tmp_path):
    """A run killed outright in part 3 keeps every block timed so far: timings.csv (and
    summary.json) are written after each block, not only after the part."""
    import csv

    class Spec:
        batch = 1

        def __init__(self, name):
            self.name = name

        def with_(self, batch):
            return self

        def short(self):
            return self.name

    seen = []

    def one(r, mode, block, spec, members, n, cache):  # what is on disk as it starts
        path = tmp_path / "timings.csv"
        seen.append([row["spec"] for row in csv.DictReader(path.read_text().splitlines())]
                    if path.exists() else None)
        r.rows.append({"mode": mode, "spec": spec.name, "batch": 1, "variant": "dense",
                       "seconds": 1e-3})
    monkeypatch.setattr(blocks, "_time_block", one)
    r = record.Run(tmp_path, 10, "cpu")
    listed = {k: ("spatial", None, Spec(k), {}) for k in ("a", "b")}
    assert blocks.time_blocks(r, listed, [1], 1, r.deadline, None) == [1]
    assert seen == [None, ["a"]]
    assert [row["spec"] for row in csv.DictReader(
        (tmp_path / "timings.csv").read_text().splitlines())] == [
        "a", "b"]
    assert (tmp_path / "summary.json").exists()


def test_time_block_ratios_divide_by_the_faster_dense_dtype(tmp_path, monkeypatch):
    """Part 3's ratios are against the static dense block in its faster half type (here
    bfloat16): that dtype's dense row is 1.0, the other's above it."""
    from laudtriton.ops.spec import BlockSpec
    from laudtriton.testing import make_block
    from laudtriton.tune.cache import TuneCache

    block = make_block(16, 4, 1, "spatial", 2)
    spec = BlockSpec.from_block(block, (1, 16, 8, 8), torch.float16)
    dense = {torch.float16: 2e-3, torch.bfloat16: 1e-3}
    monkeypatch.setattr(blocks, "_static_dense_time", lambda fb, x, dev: dense[x.dtype])
    r = record.Run(tmp_path, 600, "cpu")
    blocks._time_block(r, "spatial", block, spec, {"m": ["layer1.0"]}, 1,
                       TuneCache(tmp_path / "cache"))
    assert {(row["dtype"], row["ratio"]) for row in r.rows if row["variant"] == "dense"} == {
        ("float16", 2.0), ("bfloat16", 1.0)}
    assert all(row["ratio"] == pytest.approx(row["seconds"] / 1e-3) for row in r.rows)


def test_machine_reports_copy_bandwidth_and_gemm_rates_in_their_units(tmp_path, monkeypatch):
    """Part 1: the copy's GB/s count the bytes read and written (2 x 8 MiB of float16 on
    CPU), the GEMMs' TFLOP/s 2 m^3 flops (m = 256 on CPU), per the timed seconds."""
    import importlib

    machine = importlib.import_module("laudtriton.gpucheck.machine")
    times = iter([1e-3, 1e-6, 2e-6])  # the copy, the float16 GEMM, the bfloat16 GEMM
    monkeypatch.setattr(machine, "_bench", lambda fn, device: next(times))
    r = record.Run(tmp_path, 10, "cpu")
    machine.machine(r)
    assert r.info["copy_GBps"] == round(2 * 2 * 2**22 / 1e-3 / 1e9, 1) == 16.8
    assert (r.info["gemm_float16_TFLOPs"], r.info["gemm_bfloat16_TFLOPs"]) == (33.6, 16.8)


def test_whole_models_fail_an_item_whose_gap_is_nan(tmp_path, monkeypatch):
    """Part 4's bound is read so that NaN fails it: compiled logits compared with dense
    ones that came out NaN are a failed item, not a pass (NaN compares false with
    anything). A tiny float64 model stands in for ResNet-101 on CPU."""
    import math

    import laudtriton

    real = _tiny_part4(monkeypatch)

    def nan_dense(model, x, **kw):  # the dense-variant network's logits come out NaN
        cm = real(model, x, **kw)
        if kw.get("tune") != "off":
            return cm
        return lambda *a, **k: torch.full_like(cm(*a, **k), math.nan)
    monkeypatch.setattr(laudtriton, "compile", nan_dense)
    r = record.Run(tmp_path, 600, "cpu")
    whole.whole_models(r, [2], 48, r.deadline, cache_dir=tmp_path / "cache")
    (gap,) = r.info["whole_vs_dense_on_its_masks"].values()
    assert math.isnan(gap)
    assert [c["ok"] for c in r.checks] == [False]
    assert "from the dense variants'" in r.checks[0]["error"]


def _off(make, when=lambda kw: True, sample=None):
    """A stand-in for a kernel launcher: its torch reference's result (float64), 1% too
    large (in ``sample`` only, if given) on the calls where ``when(kwargs)`` holds."""
    def launcher(*args, **kwargs):
        out = make(*args, **kwargs)
        if when(kwargs):
            out = out.clone()
            out[slice(None) if sample is None else sample] *= 1.01
        return out
    return launcher


def test_channel_kernel_checks_catch_a_one_percent_error_in_the_last_samples_conv1(
        monkeypatch):
    """The launchers replaced by their references (no interpreter), conv1's output off by
    1% in sample 2 alone (every group on): the check compares every sample (sample 0, with
    every group off, has no column to compare) against the reference, at the float32
    bound, and raises naming it; exact stand-ins pass."""
    from laudtriton.kernels import channel_conv3x3 as cc
    from laudtriton.kernels import channel_gemm as cg

    monkeypatch.setattr(cc, "channel_conv3x3", cc.channel_conv3x3_torch)
    monkeypatch.setattr(cg, "channel_gemm", cg.channel_gemm_torch)
    kernelchecks.channel_kernel_checks("cpu", torch.float32)
    monkeypatch.setattr(cg, "channel_gemm", _off(
        cg.channel_gemm_torch, lambda kw: kw.get("out_idx") is not None, sample=2))
    with pytest.raises(AssertionError, match=r"conv1\[2\]"):
        kernelchecks.channel_kernel_checks("cpu", torch.float32)


def test_channel_kernel_checks_check_the_stride_2_conv3x3(monkeypatch):
    from laudtriton.kernels import channel_conv3x3 as cc
    from laudtriton.kernels import channel_gemm as cg

    monkeypatch.setattr(cg, "channel_gemm", cg.channel_gemm_torch)
    monkeypatch.setattr(cc, "channel_conv3x3", _off(
        cc.channel_conv3x3_torch, lambda kw: kw["stride"] == 2))
    with pytest.raises(AssertionError, match="conv3x3 s2"):
        kernelchecks.channel_kernel_checks("cpu", torch.float32)


def test_masker_kernel_checks_catch_logits_one_percent_off(monkeypatch):
    """Logits 1% too large keep every decision (the masks are their logits' decisions),
    yet are off the 1e-4 bound: the check raises on the spatial masker's first grid."""
    from laudtriton.kernels import maskers as mk

    monkeypatch.setattr(mk, "channel_masker_mlp", mk.channel_masker_mlp_torch)
    monkeypatch.setattr(mk, "spatial_masker", mk.spatial_masker_torch)
    kernelchecks.masker_kernel_checks("cpu", torch.float32)

    def scaled(x, w, b, grid):
        mask, logits = mk.spatial_masker_torch(x, w, b, grid)
        return mask, logits * 1.01
    monkeypatch.setattr(mk, "spatial_masker", scaled)
    with pytest.raises(AssertionError, match=r"grid \(1, 1\)"):
        kernelchecks.masker_kernel_checks("cpu", torch.float32)


def test_masks_must_be_the_decisions_of_their_logits_ties_kept():
    """keep where logit 0 >= logit 1: a tie is kept; a mask with a decision flipped, or
    of another shape, fails."""
    logits = torch.tensor([[[0.5, 1.0, -2.0], [0.5, 0.0, 3.0]]])  # [B=1, 2, 3]
    kernelchecks._check_decisions(torch.tensor([[1.0, 1.0, 0.0]]), logits, "tie")
    for bad in (torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]]),
                torch.tensor([1.0, 1.0, 0.0])):
        with pytest.raises(AssertionError, match="bad: masks .* are not the decisions"):
            kernelchecks._check_decisions(bad, logits, "bad")


@pytest.mark.parametrize("kernel,says", [("gather", "gather"), ("residual", "residual s1")])
def test_spatial_kernel_checks_catch_a_one_percent_error_in_each_stage(monkeypatch, kernel,
                                                                      says):
    """The spatial family's launchers replaced by their references, one of them 1% off:
    the check compares that stage against its reference at the float32 bound."""
    from laudtriton.kernels import conv1x1_residual as cr
    from laudtriton.kernels import conv3x3 as c3
    from laudtriton.kernels import gather_conv as gc

    monkeypatch.setattr(gc, "gather_conv1x1", gc.gather_conv1x1_torch)
    monkeypatch.setattr(c3, "conv3x3", c3.conv3x3_torch)
    monkeypatch.setattr(cr, "conv1x1_residual", cr.conv1x1_residual_torch)
    kernelchecks.spatial_kernel_checks("cpu", torch.float32)
    if kernel == "gather":
        monkeypatch.setattr(gc, "gather_conv1x1", _off(gc.gather_conv1x1_torch))
    else:
        monkeypatch.setattr(cr, "conv1x1_residual", _off(cr.conv1x1_residual_torch))
    with pytest.raises(AssertionError, match=says):
        kernelchecks.spatial_kernel_checks("cpu", torch.float32)


def test_exact_fp32_turns_tf32_off_inside_and_back_on_after():
    """Both switches on before (as on a GPU that allows TF32): off inside, on again after."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = True
        with kernelchecks.exact_fp32():
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


def _dense_variant(run):
    """The dense variant with ``run(dense_run, fb, x, masks, cfg)`` in place of its run."""
    import dataclasses

    from laudtriton.ops import get_variant

    dense = get_variant("dense")
    return dataclasses.replace(dense, run=lambda fb, x, masks, cfg: run(dense.run, fb, x,
                                                                        masks, cfg))


def test_variant_check_compares_at_partial_rates_not_only_rate_0():
    """A variant right where no cell is on and 1% off wherever one is fails at rate 0.5."""
    def run(dense, fb, x, masks, cfg):
        out = dense(fb, x, masks, cfg)
        return out * 1.01 if bool(masks.grid.any()) else out
    with pytest.raises(AssertionError, match="s1 rate 0.5"):
        kernelchecks.variant_check(_dense_variant(run), "spatial", "cpu", torch.float32)


def test_variant_check_with_all_configs_compares_every_config():
    """A variant whose second config is 1% off passes on its first config alone, and
    fails with all_configs, naming that config."""
    import dataclasses

    def run(dense, fb, x, masks, cfg):
        return dense(fb, x, masks, {}) * (1.01 if cfg else 1.0)
    two = dataclasses.replace(_dense_variant(run), configs=lambda spec: [{}, {"off": 1}])
    kernelchecks.variant_check(two, "spatial", "cpu", torch.float32)
    with pytest.raises(AssertionError, match="'off': 1"):
        kernelchecks.variant_check(two, "spatial", "cpu", torch.float32, all_configs=True)


def test_variant_check_runs_the_variant_on_poisoned_allocations():
    """While the variant runs, torch.empty and torch.empty_like give NaN (an output it
    leaves unwritten fails the comparison)."""
    seen = []

    def run(dense, fb, x, masks, cfg):
        seen.append(bool(torch.empty(4).isnan().all()) and bool(torch.empty_like(x).isnan().all()))
        return dense(fb, x, masks, cfg)
    kernelchecks.variant_check(_dense_variant(run), "spatial", "cpu", torch.float32)
    assert len(seen) == 6 and all(seen)  # 2 strides x 3 rates


def test_the_whole_model_row_names_the_dtype_it_was_timed_in(tmp_path, monkeypatch):
    """Part 4's compiled row: its seconds are the compiled model's in its dtype (float16
    on CUDA), and its dtype column said nothing ("") beside the dense rows' float16 and
    bfloat16. float64 stands in for CUDA's float16 here."""
    import laudtriton

    monkeypatch.setattr(laudtriton, "compile", _tiny_part4(monkeypatch))
    r = record.Run(tmp_path, 600, "cpu")
    whole.whole_models(r, [2], 48, r.deadline, cache_dir=tmp_path / "cache")
    assert [c["ok"] for c in r.checks] == [True], r.checks
    (row,) = [row for row in r.rows if row["variant"] == "compiled"]
    assert row["dtype"] == "float64"
