"""What an autotune timing is valid for: the device fingerprint, the library versions,
the hash of the variant's source, the rate bucket; where the cache lives, and whether
the environment turns it off (``$LAUDTRITON_CACHE``)."""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.metadata
import inspect
import io
import math
import numbers
import os
import platform
import sys
import tokenize
from pathlib import Path

import torch

from .._version import __version__
from ..ops.registry import get_variant

_PKG_DIR = Path(__file__).resolve().parent.parent  # laudtriton/


class SourceChanged(ValueError):
    """A variant's source on disk is not the code this process read (``source_hash``)."""


def _read_sources() -> dict[Path, str]:
    """The text of every ``laudtriton/ops`` and ``laudtriton/kernels`` file now."""
    texts = {}
    for folder in ("ops", "kernels"):
        for path in (_PKG_DIR / folder).glob("*.py"):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                texts[path.resolve()] = path.read_text()
    return texts


# Those files as this process first read them, when this module was imported (after
# ``laudtriton.ops``, which imports the variants): ``source_hash`` refuses a file whose
# code has changed since, as the code this process runs may then not be the code on disk
_FIRST_READ = _read_sources()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown-cpu"


def cpu_isa() -> str:
    """The instruction set torch's CPU kernels dispatch to ("avx512", "avx2", "default",
    ...: ``torch.backends.cpu.get_cpu_capability``), lower case; "unknown" where torch
    does not say."""
    try:
        return str(torch.backends.cpu.get_cpu_capability()).lower()
    except (AttributeError, RuntimeError):
        return "unknown"


def device_fingerprint(device: str | torch.device = "cpu") -> str:
    """Name of the machine kind timings are valid for: "<GPU name> sm<major><minor>" for
    CUDA, "<CPU model> <ISA> <n>t" (``cpu_isa``, torch threads) for CPU. The ISA is there
    because a virtual machine's model name is often a generic brand ("Intel(R) Xeon(R)
    Processor") shared by CPUs with and without AVX-512, whose timings differ.

    Raises:
        ValueError: if ``device`` is not a CPU or CUDA device, or a CUDA device this
            machine does not have.
    """
    dev = cpu_or_cuda(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if dev.index is not None and dev.index >= count or count == 0:
            raise ValueError(f"device {str(device)!r}: this machine has {count} CUDA "
                             "device(s)")
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        return f"{torch.cuda.get_device_name(idx)} sm{major}{minor}"
    return f"{cpu_model()} {cpu_isa()} {torch.get_num_threads()}t"


def cpu_or_cuda(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, a CPU or CUDA one (the devices timings are taken
    and kept for; its index is not checked here).

    Raises:
        ValueError: if ``device`` is no device torch knows, or another kind ('mps',
            'meta').
    """
    accepted = "accepted: 'cpu', 'cuda[:i]'"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):  # torch's "Expected one of cpu, cuda, ..." and others
        raise ValueError(f"device {device!r} is not supported; {accepted}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is not supported; {accepted}")
    return dev


def rate_bucket(rate: float, step: float = 0.1) -> float:
    """Centre of the rate bucket nearest to ``rate`` (e.g. 0.47 -> 0.5 for step 0.1;
    ties the lower one, as ``DispatchTable.choose``: 0.25 -> 0.2, 0.75 -> 0.7, the
    quotient compared at 9 decimals so that float error does not break a tie). The
    buckets are the multiples of ``step`` in [0, 1]: with a step that does not divide 1
    (0.15), a rate near 1 goes to the last of them (0.976 -> 0.9), not to 1.0.

    Raises:
        ValueError: if ``rate`` is not a number in [0, 1] or ``step`` not one in (0, 1]
            (bools are neither).
    """
    if isinstance(step, bool) or not (isinstance(step, numbers.Real) and 0.0 < step <= 1.0):
        raise ValueError(f"step {step!r} must be a number in (0, 1]")
    if isinstance(rate, bool) or not (isinstance(rate, numbers.Real) and 0.0 <= rate <= 1.0):
        raise ValueError(f"rate {rate!r} must be a number in [0, 1]")
    last = math.floor(round(1.0 / step, 9))  # the last bucket: 1.0 clipped a 1.05 to it
    return round(min(last, max(0, math.ceil(round(rate / step, 9) - 0.5))) * float(step), 6)


def current_versions() -> dict[str, str]:
    """{"laudtriton", "torch", "triton"} versions ("none" when Triton is absent)."""
    try:
        tv = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        tv = "none"
    return {"laudtriton": __version__, "torch": torch.__version__.split("+")[0], "triton": tv}


def _source_files(variant) -> list[Path]:
    """The variant's module and the ``laudtriton.ops``/``laudtriton.kernels`` modules it
    uses, directly or through each other (the modules of their globals, transitively:
    ``dense`` runs ``ops.packed`` through ``ops.channel``), and for Triton variants every
    ``laudtriton/kernels/*.py``. The few mask helpers the engine takes from
    ``laudtriton.nn`` are not followed: editing the training code keeps the timings."""
    files: set[Path] = set()
    src = inspect.getsourcefile(variant.run)
    if src is not None:
        files.add(Path(src).resolve())
    todo = [sys.modules.get(getattr(variant.run, "__module__", "") or "")]
    seen: set[str] = set()
    while todo:
        mod = todo.pop()
        if mod is None or mod.__name__ in seen:
            continue
        seen.add(mod.__name__)
        for obj in vars(mod).values():
            dep = obj if inspect.ismodule(obj) else sys.modules.get(
                getattr(obj, "__module__", None) or "")
            name = getattr(dep, "__name__", "")
            if name.startswith(("laudtriton.ops.", "laudtriton.kernels.")) and getattr(
                    dep, "__file__", None):
                files.add(Path(dep.__file__).resolve())
                todo.append(dep)
    if variant.needs_triton:
        files.update(p.resolve() for p in (_PKG_DIR / "kernels").glob("*.py"))
    return sorted(files)


def source_hash(variant_name: str) -> str:
    """sha256 (16 hex) of the source that executes the variant: its module, the
    ``laudtriton.ops``/``laudtriton.kernels`` modules that module uses, and, for Triton
    variants, ``laudtriton/kernels/*.py`` (their :func:`code_text`). Editing the code of
    any of them hides the old timings; editing comments and docstrings does not.

    Raises:
        SourceChanged: (a ValueError) if the code of one of those files differs from the
            code it had when this process first read it (``_FIRST_READ``): a process that
            imported the variant before an edit runs the old code, and its timings filed
            under the new code's hash would pass for the new code's.
        ValueError: if the variant is not registered.
    """
    h = hashlib.sha256()
    for f in _source_files(get_variant(variant_name)):
        with contextlib.suppress(OSError):
            text = f.read_text()
            now, first = code_of(text), _FIRST_READ.get(f)
            if first is not None and first != text and code_of(first) != now:
                raise SourceChanged(
                    f"{variant_name}: the code of {f.name} changed after this process read "
                    "it; start a new process to time or look up this variant")
            h.update(f.name.encode())
            h.update(now)
    return h.hexdigest()[:16]


def code_text(path: Path) -> bytes:
    """The code of a Python file without its comments, docstrings, blank lines and
    trailing spaces, so that editing those keeps the timings measured with it (the raw
    bytes when the file does not parse): ``code_of`` its text."""
    return code_of(path.read_text())


@functools.lru_cache(maxsize=128)  # (tokenizing a module takes ~18 ms; a compile asks
def code_of(src: str) -> bytes:  # for the same dozen modules' code ~40 times)
    """``code_text`` of the Python source ``src`` (remembered by its text)."""
    try:
        tree = ast.parse(src)
        comments = {t.start[0]: t.start[1] for t in tokenize.generate_tokens(
            io.StringIO(src).readline) if t.type == tokenize.COMMENT}
    except (SyntaxError, tokenize.TokenError):
        return src.encode()
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    lines = (line[:comments.get(i, len(line))].rstrip()
             for i, line in enumerate(src.splitlines(), 1) if i not in docstrings)
    return "\n".join(line for line in lines if line).encode()


def check_dir(path: str | os.PathLike[str], name: str, unset: str = "") -> None:
    """A ValueError naming ``name`` when ``path`` (a str or os.PathLike) is blank, which
    would mean the current directory (or a directory named by the spaces), or when it or
    its nearest existing parent is a file (no directory can be made there). ``unset``
    ends the first message: how to ask for the default. So is a path starting with a
    '~user' that names no user (or '~' without a home): ``os.path`` leaves it as it is,
    a directory of that name in the current one, and ``pathlib`` raises a RuntimeError.
    A path that cannot be inspected (no permission) passes: the cache reports what it
    cannot write, and keeps records in memory. Neither a str nor an os.PathLike of one
    (an int, bytes): a ValueError naming ``name``."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a directory path (a str or a pathlib.Path), got "
                         f"{type(path).__name__}")
    if not text.strip():
        raise ValueError(f"{name} {text!r} is empty; give a directory{unset}")
    if text.startswith("~") and os.path.expanduser(text).startswith("~"):
        head = text.split(os.sep, 1)[0]
        raise ValueError(f"{name} {text!r}: {head!r} names no home directory here; give "
                         f"another directory{unset}")
    parts = Path(os.path.expanduser(text)).parts  # '..' kept: 'f/../d' is inside f too
    for k in range(len(parts), 0, -1):  # the longest part of the path that exists
        where = os.path.join(*parts[:k])
        if os.path.lexists(where):  # os.path swallows permission errors: False
            if os.path.exists(where) and not os.path.isdir(where):
                inside = "" if k == len(parts) else f" (it lies inside the file {where!r})"
                raise ValueError(f"{name} {text!r} is not a directory{inside}")
            return


def default_cache_dir() -> Path:
    """``$LAUDTRITON_CACHE_DIR`` (unset or empty: not given), else ``<repo>/autotune_cache``
    in a source tree, else ``~/.cache/laudtriton``.

    Raises:
        ValueError: if the variable is blank (spaces: a directory named so in the current
            one) or names a file or lies inside one, as ``--cache-dir`` is refused then
            (:func:`check_dir`).
    """
    env = os.environ.get("LAUDTRITON_CACHE_DIR")
    if env:
        check_dir(env, "LAUDTRITON_CACHE_DIR", ", or unset it for the default")
        return Path(env).expanduser()
    repo = _PKG_DIR.parent
    if (repo / "pyproject.toml").is_file():
        return repo / "autotune_cache"
    return Path.home() / ".cache" / "laudtriton"


def disabled_by() -> str:
    """How the environment disables the cache, for messages: "LAUDTRITON_CACHE=<value>"."""
    return f"LAUDTRITON_CACHE={os.environ.get('LAUDTRITON_CACHE', '').strip()}"


def cache_enabled_from_env() -> bool:
    """Whether ``$LAUDTRITON_CACHE`` leaves the cache on: "0", "false", "off", "no"
    disable it; unset, "", "1", "true", "on", "yes" do not (any case).

    Raises:
        ValueError: naming the variable, for any other value.
    """
    raw = os.environ.get("LAUDTRITON_CACHE", "1")
    v = raw.strip().lower()
    if v in ("0", "false", "off", "no"):
        return False
    if v in ("", "1", "true", "on", "yes"):
        return True
    raise ValueError(f"LAUDTRITON_CACHE={raw!r}: accepted 0, false, off, no (the cache "
                     "disabled) or 1, true, on, yes (enabled)")


def refuse_bad_dir(cache_dir: str | os.PathLike[str] | None) -> None:
    """A ValueError when the ``cache_dir`` argument is blank, which would otherwise mean
    the current directory, or names a file or lies inside one (None means the default
    directory; ``keys.check_dir``)."""
    if cache_dir is not None:
        check_dir(cache_dir, "cache_dir", ", or None for the default")
