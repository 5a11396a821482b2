"""Ahead-of-time compilation specs of the Triton kernels (GPU.md section 2).

Every kernel family module exposes ``aot_specs() -> list[AOTSpec]``: one entry per kernel
x config of its space (``default=True`` for the configs the launchers use by default), so
that one test can compile all of them for sm_80 and sm_90 without a GPU:
``python -m laudtriton.kernels.aot --arch 80,90`` (registers, shared memory and spills from
the cuobjdump shipped in the triton wheel; warp_group_dot use on sm_90 from the ttgir).
``problems`` fails compile errors, spills in default configs and any config whose shared
memory exceeds its target's per-block limit (``SMEM_PER_BLOCK``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class AOTSpec:
    """name: readable id; fn: the @triton.jit function; signature: {arg: type str, e.g.
    "*fp16", "i32"} for the non-constexpr args; constexprs: {arg: value}; num_warps,
    num_stages: launch options; default: whether launchers use this config by default;
    divisible: the int args whose production values are multiples of 16 (channel
    counts), which the JIT marks so and which decide whether loads vectorise and
    pipeline."""

    name: str
    fn: object
    signature: dict
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2
    default: bool = False
    divisible: tuple = ()


def interpreting() -> bool:
    """Whether TRITON_INTERPRET asks Triton for its interpreter, read as Triton reads it
    (1, y, yes, on or true, in any case): the kernels then run on the host."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "y", "yes", "on", "true")


# The most shared memory (bytes) one thread block may use, with the opt-in
# (cudaFuncSetAttribute; Triton's launcher opts in), per SM version. Source: NVIDIA's CUDA C++
# Programming Guide, the compute-capability table's "maximum amount of shared memory per
# thread block": 163 KB for 8.0 and 227 KB for 9.0 (the SM's 164 KB and 228 KB less the
# 1 KB reserved for system use); the values cudaDevAttrMaxSharedMemoryPerBlockOptin gives on
# an A100 and an H100. Other SM versions are not checked.
SMEM_PER_BLOCK = {80: 163 * 1024, 90: 227 * 1024}

# -- compilation (run with TRITON_INTERPRET unset: see ``main``) --------------------------
_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def discover() -> list[tuple[str, AOTSpec]]:
    """(module, spec) for every ``aot_specs()`` of every module in laudtriton/kernels/.

    Raises:
        RuntimeError: if TRITON_INTERPRET is on (``interpreting``: kernels would be
            interpreter functions).
    """
    if interpreting():
        raise RuntimeError("TRITON_INTERPRET is set; AOT compilation needs it unset "
                           "(run `python -m laudtriton.kernels.aot`)")
    pkg = importlib.import_module("laudtriton.kernels")
    out = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name == "aot":
            continue
        mod = importlib.import_module(f"laudtriton.kernels.{info.name}")
        if hasattr(mod, "aot_specs"):
            out.extend((info.name, s) for s in mod.aot_specs())
    return out


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def _divisibility(spec: AOTSpec, sig: dict) -> dict:
    """What the runtime JIT infers from production tensors: 16-byte aligned pointers,
    strides and the spec's ``divisible`` ints divisible by 16 (ResNet channel counts are
    multiples of 16). Ints equal to 1 (unit strides) are specialised by listing them in
    the spec's ``constexprs``, as the JIT does."""
    names = list(spec.fn.arg_names)
    return {(names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items()
            if t.startswith("*") or (t != "constexpr" and (n.startswith("stride_")
                                                           or n in spec.divisible))}


def compile_spec(spec: AOTSpec, arch: int) -> dict:
    """Compile one spec for sm_``arch``; never raises. Returns a row: name, arch, default,
    ok, error, regs, spill (LOCAL bytes per thread), stack, shared (bytes of dynamic shared
    memory, Triton's ``metadata.shared``), static_shared (cuobjdump's SHARED, bytes: the
    launch fits shared + static_shared in the block's limit), dot (uses tl.dot), wgmma
    (``warp_group_dot`` in the ttgir), pipelined (``async_copy`` in the ttgir: loads
    software-pipelined through shared memory), seconds."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    row = {"name": spec.name, "arch": arch, "default": spec.default, "ok": False,
           "error": None, "regs": None, "spill": None, "stack": None, "shared": None,
           "static_shared": None, "dot": None, "wgmma": None, "pipelined": None, "seconds": None}
    t0 = time.perf_counter()
    try:
        sig = dict(spec.signature) | {k: "constexpr" for k in spec.constexprs}
        target = GPUTarget("cuda", arch, 32)
        opts = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
        try:
            src = ASTSource(fn=spec.fn, signature=sig, constexprs=dict(spec.constexprs),
                            attrs=_divisibility(spec, sig))
            k = triton.compile(src, target=target, options=opts)
        except (TypeError, KeyError, AttributeError):  # attrs format of another Triton
            src = ASTSource(fn=spec.fn, signature=sig, constexprs=dict(spec.constexprs))
            k = triton.compile(src, target=target, options=opts)
        row["shared"] = int(k.metadata.shared)
        row["dot"] = "tt.dot" in k.asm["ttir"]
        row["wgmma"] = "warp_group_dot" in k.asm["ttgir"]
        row["pipelined"] = "async_copy" in k.asm["ttgir"]
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "k.cubin"
            path.write_bytes(k.asm["cubin"])
            res = subprocess.run([_cuobjdump(), "--dump-resource-usage", str(path)],
                                 capture_output=True, text=True, timeout=60)
        m = _USAGE.search(res.stdout)
        if m is None:
            raise RuntimeError(f"cuobjdump gave no resource usage: {res.stdout[-300:]}")
        row["regs"], row["stack"], row["static_shared"], row["spill"] = (
            int(g) for g in m.groups())
        row["ok"] = True
    except Exception as e:  # a compile error is a result to report, not a crash
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


_SPECS: list[tuple[str, AOTSpec]] = []


def _work(job: tuple[int, int]) -> dict:
    if not _SPECS:
        _SPECS.extend(discover())
    i, arch = job
    module, spec = _SPECS[i]
    return {"module": module} | compile_spec(spec, arch)


def compile_all(archs=(80, 90), jobs: int = 1, only: str | None = None) -> list[dict]:
    """Compile every discovered spec (name containing ``only``) for every arch, in ``jobs``
    worker processes. Returns one row per (spec, arch) (see ``compile_spec``)."""
    specs = discover()
    todo = [(i, a) for i, (_, s) in enumerate(specs) if only is None or only in s.name
            for a in archs]
    if jobs <= 1:
        _SPECS[:] = specs
        return [_work(j) for j in todo]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(jobs) as pool:
        return pool.map(_work, todo, chunksize=max(1, len(todo) // (4 * jobs)))


def problems(rows: list[dict]) -> list[str]:
    """Failures: compile errors anywhere; in default configs, local memory (LOCAL > 0)
    or a stack frame (where ptxas puts spilled registers), GPU.md section 2; in any config,
    shared memory (``shared`` + ``static_shared``) over the per-block limit of its SM
    version (``SMEM_PER_BLOCK``; such a kernel cannot launch there)."""
    out = [f"{r['name']} sm_{r['arch']}: {r['error']}" for r in rows if not r["ok"]]
    out += [f"{r['name']} sm_{r['arch']}: default config spills ({r['spill']} B/thread "
            f"local, {r['stack']} B stack frame)"
            for r in rows if r["ok"] and r["default"] and (r["spill"] or r["stack"])]
    for r in (r for r in rows if r["ok"] and r["arch"] in SMEM_PER_BLOCK):
        dynamic, static = r["shared"] or 0, r.get("static_shared") or 0
        limit = SMEM_PER_BLOCK[r["arch"]]
        if dynamic + static > limit:
            out.append(f"{r['name']} sm_{r['arch']}: shared memory {dynamic + static} B "
                       f"({dynamic} B dynamic + {static} B static) over the {limit} B "
                       f"per-block limit of sm_{r['arch']}")
    return out


def half_dots_without_wgmma(rows: list[dict]) -> list[str]:
    """sm_90 fp16/bf16 kernels whose tl.dot did not become a warp-group MMA (a report)."""
    return [r["name"] for r in rows if r["ok"] and r["arch"] == 90 and r["dot"]
            and not r["wgmma"] and ("fp16" in r["name"] or "bf16" in r["name"])]


def _table(rows: list[dict]) -> str:
    lines = [f"{'kernel':<58} {'sm':>3} {'def':>3} {'regs':>4} {'spill':>5} {'smem':>6} "
             f"{'wgmma':>5} {'pipe':>4} {'s':>5}"]
    for r in rows:
        if not r["ok"]:
            lines.append(f"{r['name']:<58} {r['arch']:>3} ERROR {r['error']}")
            continue
        wg = "-" if not r["dot"] else ("yes" if r["wgmma"] else "no")
        lines.append(f"{r['name']:<58} {r['arch']:>3} {'*' if r['default'] else '':>3} "
                     f"{r['regs']:>4} {r['spill']:>5} {r['shared']:>6} {wg:>5} "
                     f"{'yes' if r['pipelined'] else 'no':>4} {r['seconds']:>5.1f}")
    return "\n".join(lines)


def _refuse(message: str) -> int:
    print(f"python -m laudtriton.kernels.aot: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """``python -m laudtriton.kernels.aot [--arch 80,90] [--jobs N] [--only S] [--json]``.
    Exit code 1 on a compile error, a default config with local memory (LOCAL, the
    table's ``spill`` column) or a stack frame, or a config over its target's per-block
    shared memory (``problems``), 2 on a bad option (or an --only that matches no spec),
    else 0."""
    ap = argparse.ArgumentParser(prog="python -m laudtriton.kernels.aot",
                                 description="Compile every Triton kernel x config ahead of "
                                             "time for NVIDIA targets (no GPU needed).")
    ap.add_argument("--arch", default="80,90", help="comma-separated SM versions (80,90)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--only", default=None, help="only specs whose name contains this")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    try:
        archs = tuple(dict.fromkeys(int(a) for a in args.arch.split(",")))  # 80,80 = 80
    except ValueError:
        archs = ()
    if not archs or min(archs) < 1:
        return _refuse(f"--arch {args.arch!r}: expected comma-separated SM versions like 80,90")
    if args.jobs < 1:
        return _refuse(f"--jobs {args.jobs} must be >= 1")
    os.environ.pop("TRITON_INTERPRET", None)  # before any kernel module is imported
    rows = compile_all(archs, args.jobs, args.only)
    if not rows:  # a table of nothing would read as a pass
        return _refuse(f"--only {args.only!r} matches no kernel spec")
    bad = problems(rows)
    if args.json:
        print(json.dumps({"rows": rows, "problems": bad,
                          "half_dots_without_wgmma": half_dots_without_wgmma(rows)}))
    else:
        print(_table(rows))
        for p in bad:
            print("FAIL", p)
        for n in half_dots_without_wgmma(rows):
            print("note: no warp_group_dot on sm_90:", n)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
