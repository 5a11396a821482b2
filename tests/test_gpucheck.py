"""gpucheck without a GPU: the exit code 2 path, and its plumbing (checks, the kernel
checks on CPU under the interpreter); its outputs are tested in test_gpureport.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from laudtriton import gpucheck, kernelchecks

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")


def _env():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_run_rejects_other_devices(tmp_path, capsys):
    assert gpucheck.main(["--out", str(tmp_path / "o"), "--device", "cuda:0"]) == 2
    assert "--device 'cuda:0'" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()


@NO_CUDA
def test_run_without_cuda_returns_2(tmp_path, capsys):
    assert gpucheck.main(["--out", str(tmp_path / "o")]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no CUDA" in out[0]
    assert not (tmp_path / "o").exists()


@NO_CUDA
@pytest.mark.parametrize("how", ["main", "cli"])
def test_subprocess_exit_code_2(tmp_path, how):
    if how == "main":
        cmd = [sys.executable, "-c", "import sys; from laudtriton.gpucheck import main; "
               f"sys.exit(main(['--out', {str(tmp_path / 'x')!r}]))"]
    else:
        if not (ROOT / "laudtriton" / "__main__.py").exists():
            pytest.skip("laudtriton/__main__.py not written yet")
        cmd = [sys.executable, "-m", "laudtriton", "gpucheck", "--out", str(tmp_path / "x")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(res.stdout.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_checks_pass_under_interpreter(dtype):
    """The very checks gpucheck runs on CUDA, on CPU tensors under the interpreter."""
    kernelchecks.channel_kernel_checks("cpu", dtype)
    kernelchecks.masker_kernel_checks("cpu", dtype)
    kernelchecks.spatial_kernel_checks("cpu", dtype)


def test_check_records_failures():
    r = gpucheck.Run(Path("."), 10, "cpu")
    assert r.check("ok", lambda: None)
    assert not r.check("bad", lambda: 1 / 0)
    assert [c["ok"] for c in r.checks] == [True, False]
    assert "ZeroDivisionError" in r.checks[1]["error"]
