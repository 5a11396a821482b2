"""Ahead-of-time compilation of every Triton kernel x config for sm_80 and sm_90 (GPU.md 2).

Runs ``python -m laudtriton.kernels.aot`` in a subprocess with TRITON_INTERPRET removed:
under the interpreter ``@triton.jit`` returns interpreter functions that cannot compile.
Set LAUDTRITON_AOT_ONLY=<substring> to compile a subset while iterating.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def aot():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    cmd = [sys.executable, "-m", "laudtriton.kernels.aot", "--arch", "80,90", "--json"]
    if os.environ.get("LAUDTRITON_AOT_ONLY"):
        cmd += ["--only", os.environ["LAUDTRITON_AOT_ONLY"]]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500)
    assert res.stdout.strip(), f"aot printed nothing; stderr:\n{res.stderr[-3000:]}"
    report = json.loads(res.stdout.strip().splitlines()[-1])
    report["rc"] = res.returncode
    return report


def test_every_kernel_compiles_for_sm80_and_sm90(aot):
    rows = aot["rows"]
    assert rows, "no AOT specs were discovered"
    errors = [f"{r['name']} sm_{r['arch']}: {r['error']}" for r in rows if not r["ok"]]
    assert not errors, "\n".join(errors)
    names = {r["name"] for r in rows}
    for n in names:
        assert {r["arch"] for r in rows if r["name"] == n} == {80, 90}, n


def test_default_configs_do_not_spill(aot):
    """No default config has local memory (cuobjdump's LOCAL) or a stack frame (STACK:
    where ptxas puts spilled registers), GPU.md section 2. Until session 52 the AOT
    command read LOCAL only, and the fp32 64x64 defaults of conv3x3 and channel_conv3x3
    spilled 48 and 72 B on sm_80; float32 has its own defaults since."""
    spills = [f"{r['name']} sm_{r['arch']}: {r['spill']} B local, {r['stack']} B stack"
              for r in aot["rows"] if r["ok"] and r["default"] and (r["spill"] or r["stack"])]
    assert not spills, "\n".join(spills)
    assert aot["rc"] == 0, aot["problems"]


def test_resource_usage_reported(aot):
    for r in aot["rows"]:
        assert r["regs"] is not None and 0 < r["regs"] <= 255, r
        assert r["shared"] is not None and r["shared"] >= 0, r
        assert r["static_shared"] is not None and r["static_shared"] >= 0, r


def test_every_config_fits_the_per_block_shared_memory_of_its_target(aot):
    """Every compiled config (default or not) fits the opt-in shared memory of one thread
    block on its SM version, dynamic (Triton's metadata) plus static (cuobjdump)."""
    from laudtriton.kernels.aot import SMEM_PER_BLOCK

    over = [f"{r['name']} sm_{r['arch']}: {r['shared']} + {r['static_shared']} B"
            for r in aot["rows"] if r["ok"]
            and r["shared"] + r["static_shared"] > SMEM_PER_BLOCK[r["arch"]]]
    assert not over, "\n".join(over)
    assert not [p for p in aot["problems"] if "shared memory" in p]


def test_channel_gemm_half_dots_use_wgmma_on_sm90(aot):
    """Default fp16/bf16 configs of the channel kernels become warp-group MMAs on sm_90."""
    rows = [r for r in aot["rows"] if r["arch"] == 90 and r["default"] and r["dot"]
            and r["name"].startswith("channel_") and ("fp16" in r["name"] or "bf16" in r["name"])]
    if not rows and os.environ.get("LAUDTRITON_AOT_ONLY"):
        pytest.skip("channel kernels filtered out by LAUDTRITON_AOT_ONLY")
    assert rows, "no default fp16/bf16 channel kernel compiled for sm_90"
    assert all(r["wgmma"] for r in rows), [r["name"] for r in rows if not r["wgmma"]]


def test_default_gemm_configs_are_pipelined(aot):
    """Default configs of the GEMM kernels whose tiles have a contiguous dim load through
    shared memory asynchronously (``async_copy`` in the ttgir), with the specialisations
    the JIT makes on production shapes (channel counts divisible by 16). Without those
    (before session 23) none was, and channel conv3, whose W3 was k-major, loaded its
    weight tiles element by element. channel_conv3x3 gathers both dims of its weight
    tiles, so it is left out."""
    rows = [r for r in aot["rows"] if r["default"] and r["dot"]
            and not r["name"].startswith("channel_conv3x3")]
    if not os.environ.get("LAUDTRITON_AOT_ONLY"):  # 6 channel + 3x3 spatial, 2 archs
        assert len(rows) == 2 * 15, [r["name"] for r in rows]
    elif not rows:
        pytest.skip("GEMM kernels filtered out by LAUDTRITON_AOT_ONLY")
    assert all(r["pipelined"] for r in rows), [
        f"{r['name']} sm_{r['arch']}" for r in rows if not r["pipelined"]]


@pytest.mark.parametrize("argv,says", [
    (["--only", "no_such_kernel", "--jobs", "1"], "--only 'no_such_kernel' matches no kernel"),
    (["--arch", "x"], "--arch 'x': expected comma-separated SM versions"),
    (["--jobs", "0"], "--jobs 0 must be >= 1"),
    # an SM version under 1 (with --only, so that a missed check ends at once)
    (["--arch", "80,0", "--only", "no_such_kernel"], "--arch '80,0': expected comma-separated")])
def test_bad_options_exit_2_with_one_line_on_stderr(argv, says, capsys, monkeypatch):
    """--arch's error went to stdout, --only matching nothing printed an empty table and
    exited 0 (a pass), --jobs 0 ran serially."""
    from laudtriton.kernels import aot as aot_module

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # main drops it: put back after the test
    assert aot_module.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"python -m laudtriton.kernels.aot: error: {says}")


def _fake_row(name="k", arch=80, default=True, ok=True, spill=0, stack=0, shared=0,
              static_shared=0):
    return {"name": name, "arch": arch, "default": default, "ok": ok,
            "error": None if ok else "CompilationError: boom", "regs": 32, "spill": spill,
            "stack": stack, "shared": shared, "static_shared": static_shared, "dot": False,
            "wgmma": False, "pipelined": False, "seconds": 0.0}


def test_main_compiles_for_sm80_and_sm90_by_default_and_exits_1_on_a_compile_error(
        capsys, monkeypatch):
    """Without --arch both targets are compiled; a row with a compile error is a failure
    (exit 1, a FAIL line), not a table that reads as a pass; a repeated SM once."""
    from laudtriton.kernels import aot as aot_module

    calls = []

    def fake_compile_all(archs, jobs, only):
        calls.append(archs)
        return [_fake_row("good_kernel"), _fake_row("bad_kernel", ok=False)]

    monkeypatch.setattr(aot_module, "compile_all", fake_compile_all)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # main drops it: put back after the test
    assert aot_module.main(["--jobs", "1"]) == 1
    assert calls == [(80, 90)]
    out, _ = capsys.readouterr()
    assert "FAIL bad_kernel sm_80: CompilationError: boom" in out
    monkeypatch.setattr(aot_module, "compile_all", lambda archs, jobs, only: [_fake_row()])
    assert aot_module.main(["--jobs", "1"]) == 0
    calls.clear()  # a repeated SM is compiled once, in the order given
    monkeypatch.setattr(aot_module, "compile_all", fake_compile_all)
    aot_module.main(["--arch", "90,80,90", "--jobs", "1"])
    assert calls == [(90, 80)]


def test_problems_are_compile_errors_and_spills_in_default_configs_only():
    from laudtriton.kernels import aot as aot_module

    rows = [_fake_row("clean"), _fake_row("tuned_spill", default=False, spill=8, stack=8),
            _fake_row("default_spill", arch=90, spill=16),
            _fake_row("default_frame", stack=48), _fake_row("broken", ok=False)]
    assert aot_module.problems(rows) == [
        "broken sm_80: CompilationError: boom",
        "default_spill sm_90: default config spills (16 B/thread local, 0 B stack frame)",
        "default_frame sm_80: default config spills (0 B/thread local, 48 B stack frame)"]


def test_problems_flag_shared_memory_over_the_per_block_limit_of_the_target():
    """Any config (not only a default) whose dynamic plus static shared memory exceeds the
    per-block opt-in limit of its SM version (163 KB on sm_80, 227 KB on sm_90) is a
    problem, as it cannot launch there; at the limit or on an SM without a known limit it
    is not. ``problems`` once did not look at shared memory."""
    from laudtriton.kernels import aot as aot_module

    assert aot_module.SMEM_PER_BLOCK == {80: 163 * 1024, 90: 227 * 1024}
    rows = [_fake_row("fits80", shared=163 * 1024),
            _fake_row("fits90", arch=90, shared=226 * 1024, static_shared=1024),
            _fake_row("small", arch=90, shared=49152, static_shared=1024),
            _fake_row("unknown_sm", arch=86, shared=400 * 1024),
            _fake_row("broken", ok=False, shared=None, static_shared=None),
            _fake_row("big80", default=False, shared=163 * 1024 + 16),
            _fake_row("big90", arch=90, shared=227 * 1024, static_shared=1024)]
    assert aot_module.problems(rows) == [
        "broken sm_80: CompilationError: boom",
        "big80 sm_80: shared memory 166928 B (166928 B dynamic + 0 B static) over the "
        "166912 B per-block limit of sm_80",
        "big90 sm_90: shared memory 233472 B (232448 B dynamic + 1024 B static) over the "
        "232448 B per-block limit of sm_90"]


def test_main_exits_1_on_a_config_over_the_shared_memory_limit(capsys, monkeypatch):
    from laudtriton.kernels import aot as aot_module

    monkeypatch.setattr(aot_module, "compile_all", lambda archs, jobs, only: [
        _fake_row("k_sm80", shared=200 * 1024), _fake_row("k_sm90", arch=90, shared=200 * 1024)])
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # main drops it: put back after the test
    assert aot_module.main(["--jobs", "1"]) == 1
    out, _ = capsys.readouterr()
    assert "FAIL k_sm80 sm_80: shared memory 204800 B" in out
    assert "k_sm90 sm_90" not in out


def test_only_selects_the_specs_whose_name_contains_it(monkeypatch):
    """--only (and LAUDTRITON_AOT_ONLY) is a substring of the spec names, for every arch."""
    from laudtriton.kernels import aot as aot_module

    specs = [("m", aot_module.AOTSpec(name, None, {})) for name in
             ("conv3x3_fp16_m32", "conv3x3_fp32_m64", "gather_conv1x1_fp16_m32")]
    monkeypatch.setattr(aot_module, "discover", lambda: specs)
    monkeypatch.setattr(aot_module, "_SPECS", [])
    monkeypatch.setattr(aot_module, "_work", lambda job: job)
    assert aot_module.compile_all((80, 90), 1, "conv3x3") == [(0, 80), (0, 90), (1, 80), (1, 90)]
    assert aot_module.compile_all((90,), 1, "fp16_m32") == [(0, 90), (2, 90)]
    assert aot_module.compile_all((80,), 1, None) == [(0, 80), (1, 80), (2, 80)]
