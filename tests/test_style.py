"""House style rule 3 (/work/shared/STYLE.md), the part a machine can check: every public
function and method of ``laudtriton`` has a type hint on each parameter and a return
annotation."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "laudtriton"

# Not walked: laudtriton/ops and laudtriton/kernels. Their code, annotations included, is
# part of the source hash that keys the shipped autotune caches (``tune.keys.source_hash``;
# comments and docstrings are left out of it, annotations are not), so annotating them
# would hide every timing measured with them until the caches are swept again.
HASHED = ("ops", "kernels")


def _public_functions(tree: ast.Module):
    """(qualified name, node, is a method) of the module's public functions and the
    public methods of its classes (``forward`` of an nn.Module included)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node, False
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{node.name}.{item.name}", item, True


def _missing(fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    """The parameters of ``fn`` without a type hint (self / cls excepted), and "return"
    when it has no return annotation."""
    a = fn.args
    params = [*a.posonlyargs, *a.args]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    if method and not static and params:
        params = params[1:]  # self, or cls of a classmethod
    params += [*([a.vararg] if a.vararg else []), *a.kwonlyargs, *([a.kwarg] if a.kwarg else [])]
    out = [p.arg for p in params if p.annotation is None]
    return out + (["return"] if fn.returns is None else [])


def _offenders() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in HASHED:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, fn, method in _public_functions(tree):
            if name.split(".")[-1].startswith("_"):
                continue
            missing = _missing(fn, method)
            if missing:
                out.append(f"laudtriton/{rel.as_posix()}:{fn.lineno} {name}: "
                           f"{', '.join(missing)}")
    return out


def test_the_walk_finds_the_package():
    files = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in HASHED]
    assert len(files) > 20, PACKAGE  # a wrong path would pass the test below vacuously


def test_public_functions_are_fully_annotated():
    offenders = _offenders()
    assert not offenders, (
        f"{len(offenders)} public functions or methods lack a type hint (parameter, or "
        "return):\n  " + "\n  ".join(offenders))


def test_missing_hints_are_found():
    tree = ast.parse("def f(a, b: int, *args, k=1, **kw): ...\n"
                     "class C:\n"
                     "    def m(self, x: int): ...\n"
                     "    @staticmethod\n"
                     "    def s(y) -> None: ...\n"
                     "    def ok(self, x: int) -> int: ...\n")
    found = {name: _missing(fn, method) for name, fn, method in _public_functions(tree)}
    assert found == {"f": ["a", "args", "k", "kw", "return"], "C.m": ["return"],
                     "C.s": ["y"], "C.ok": []}
