"""The house style (STYLE.md, rule 3), the part a machine can check, on every module of
``laudtriton`` outside ``ops`` and ``kernels``:

- type hints: every public function and method has a type hint on each parameter (self /
  cls excepted) and a return annotation; so has ``__init__`` of a public class (a class
  whose name does not start with "_"). Other dunder methods are not checked.
- docstrings: every public class, public function and public method has one, properties
  (``@property``) and overrides of torch / argparse methods (``forward``, ``train``,
  ``extra_repr``, ``error``) included. ``__init__`` is not checked: its arguments are
  documented in the class docstring.

"Public": a name that does not start with "_"; a public-named method of a private class
counts (it is called from outside the class). Only module-level functions and the methods
of module-level classes are walked, not nested ones."""

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
    public methods of its classes (``forward`` of an nn.Module included), and
    ``__init__`` of its public classes."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not node.name.startswith("_"):
                yield node.name, node, False
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                init = item.name == "__init__" and not node.name.startswith("_")
                if init or not item.name.startswith("_"):
                    yield f"{node.name}.{item.name}", item, True


def _public_classes(tree: ast.Module):
    """(name, node) of the module's public classes."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield node.name, node


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


def _undocumented(tree: ast.Module) -> list[tuple[str, int]]:
    """(qualified name, line) of the module's public classes, functions and methods
    without a docstring (``__init__`` excepted: the class docstring documents it)."""
    out = [(name, node.lineno) for name, node in _public_classes(tree)
           if ast.get_docstring(node) is None]
    out += [(name, fn.lineno) for name, fn, _ in _public_functions(tree)
            if not name.endswith(".__init__") and ast.get_docstring(fn) is None]
    return sorted(out, key=lambda t: t[1])


def _modules():
    """(path relative to the package, parsed module) of every module that is walked."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in HASHED:
            continue
        yield rel, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _offenders() -> list[str]:
    out = []
    for rel, tree in _modules():
        for name, fn, method in _public_functions(tree):
            missing = _missing(fn, method)
            if missing:
                out.append(f"laudtriton/{rel.as_posix()}:{fn.lineno} {name}: "
                           f"{', '.join(missing)}")
    return out


def test_the_walk_finds_the_package():
    files = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in HASHED]
    assert len(files) > 20, PACKAGE  # a wrong path would pass the tests below vacuously


def test_public_functions_are_fully_annotated():
    offenders = _offenders()
    assert not offenders, (
        f"{len(offenders)} public functions or methods lack a type hint (parameter, or "
        "return):\n  " + "\n  ".join(offenders))


def test_public_functions_and_classes_have_docstrings():
    offenders = [f"laudtriton/{rel.as_posix()}:{line} {name}"
                 for rel, tree in _modules() for name, line in _undocumented(tree)]
    assert not offenders, (
        f"{len(offenders)} public classes, functions or methods lack a docstring:\n  "
        + "\n  ".join(offenders))


def test_missing_hints_are_found():
    tree = ast.parse("def f(a, b: int, *args, k=1, **kw): ...\n"
                     "def _private(a): ...\n"
                     "class C:\n"
                     "    def __init__(self, n): ...\n"
                     "    def __repr__(self): ...\n"
                     "    def m(self, x: int): ...\n"
                     "    @staticmethod\n"
                     "    def s(y) -> None: ...\n"
                     "    def ok(self, x: int) -> int: ...\n"
                     "class _P:\n"
                     "    def __init__(self, n): ...\n"
                     "    def m(self, x): ...\n")
    found = {name: _missing(fn, method) for name, fn, method in _public_functions(tree)}
    assert found == {"f": ["a", "args", "k", "kw", "return"], "C.__init__": ["n", "return"],
                     "C.m": ["return"], "C.s": ["y"], "C.ok": [], "_P.m": ["x", "return"]}


def test_missing_docstrings_are_found():
    tree = ast.parse('def f(): ...\n'
                     'def g():\n    """Documented."""\n'
                     'def _h(): ...\n'
                     'class C:\n'
                     '    def __init__(self): ...\n'
                     '    @property\n'
                     '    def p(self): ...\n'
                     '    def m(self):\n        """Documented."""\n'
                     'class D:\n    """Documented."""\n'
                     'class _P:\n'
                     '    def m(self): ...\n')
    assert [name for name, _ in _undocumented(tree)] == ["f", "C", "C.p", "_P.m"]
