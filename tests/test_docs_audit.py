"""The docs against the code: docs/layout.md names every package module and only existing
ones; every ``laudtriton COMMAND ... --option`` that README.md or docs/*.md writes, and
every option of a README "Commands" row, is an option of that command's parser; the
Commands table has a row per command; the Python snippets' imports resolve; and the
modules layout.md calls leaves import nothing else of the package. Static: nothing runs
but the parser and the imports."""

from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib
import re
from pathlib import Path

import pytest

from laudtriton.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OPTION = re.compile(r"(?<![\w-])--[a-z][\w-]*")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subparsers of ``parser`` by name ({} for a leaf command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its subcommands (``cache ls --all``)."""
    found = {o for a in parser._actions for o in a.option_strings}
    for sub in _subcommands(parser).values():
        found |= _options(sub)
    return found


COMMANDS = _subcommands(build_parser())


def _layout_tree() -> list[str]:
    """The paths layout.md's tree names under laudtriton/: files (globs allowed:
    ``triton_*.py``) and subpackage folders (ending in '/')."""
    tree = (ROOT / "docs" / "layout.md").read_text().split("```\n")[1]
    named, package = [], None
    for line in tree.splitlines():
        m = re.match(r"^( *)(\S.*)$", line)
        if not m:
            continue
        indent, text = len(m.group(1)), m.group(2)
        if indent == 0 and not text.startswith("laudtriton/"):
            break  # autotune_cache/, benchmarks/, ...: outside the package
        if indent == 2:
            first = text.split()[0]
            package = first if first.endswith("/") else None
            named.append("laudtriton/" + first)
        elif indent == 4 and package:  # "a.py, b.py   description" lists too
            for name in re.findall(r"[\w*]+\.py", text.split("   ")[0]):
                named.append("laudtriton/" + package + name)
    return named


def test_layout_names_every_package_module():
    """A subpackage's __init__.py counts as named by its folder (the text after the tree
    says what each holds)."""
    named = _layout_tree()
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "laudtriton").rglob("*.py"))
    missing = [m for m in modules
               if not any(fnmatch.fnmatch(m, n) for n in named)
               and not (m.endswith("/__init__.py") and m[:-len("__init__.py")] in named)]
    assert not missing, f"docs/layout.md does not name {missing}"


def test_layout_names_only_existing_modules():
    named = _layout_tree()
    assert len(named) > 50, named  # the parse found the tree
    gone = [n for n in named if not (n.endswith("/") and (ROOT / n).is_dir())
            and not (not n.endswith("/") and list(ROOT.glob(n)))]
    assert not gone, f"docs/layout.md names {gone}, which do not exist"


def _readme_command_rows() -> list[tuple[str, str]]:
    """(command, row text) of each row of README's Commands table."""
    section = (ROOT / "README.md").read_text().split("\n## Commands\n")[1].split("\n## ")[0]
    return [(m.group(1), line) for line in section.splitlines()
            if (m := re.match(r"\| `laudtriton (\w+)", line))]


def test_readme_commands_table_has_a_row_per_command():
    rows = [cmd for cmd, _ in _readme_command_rows()]
    assert sorted(rows) == sorted(COMMANDS), (sorted(rows), sorted(COMMANDS))


@pytest.mark.parametrize("command,row", _readme_command_rows(),
                         ids=[c for c, _ in _readme_command_rows()])
def test_readme_commands_row_names_only_options_of_its_command(command, row):
    unknown = sorted(set(OPTION.findall(row)) - _options(COMMANDS[command]))
    assert not unknown, f"README Commands row of {command!r} names {unknown}"


def _doc_command_lines() -> list[tuple[str, str, str]]:
    """(file, command, text) of each ``laudtriton COMMAND ...`` in an inline code span
    (which may wrap), a fenced block or an indented code line (backslash continuations
    joined) of README.md and docs/*.md."""
    found = []
    for path in DOCS:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
        prose = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
        spans = [s.replace("\n", " ") for s in re.findall(r"`([^`]+)`", prose)
                 if "\n\n" not in s]
        spans += [line for block in blocks for line in block.splitlines()]
        spans += re.findall(r"^ {4,}(laudtriton .*)$", prose, re.M)
        for span in spans:
            for m in re.finditer(r"\blaudtriton (\w+)([^;&#]*)", span):
                if m.group(1) in COMMANDS:
                    found.append((path.name, m.group(1), m.group(2)))
    return found


def test_doc_commands_name_only_options_their_command_has():
    lines = _doc_command_lines()
    assert len(lines) > 20, lines  # the scan found the commands
    bad = [(f, cmd, o) for f, cmd, rest in lines
           for o in OPTION.findall(rest) if o not in _options(COMMANDS[cmd])]
    assert not bad, f"options the parser does not have: {bad}"


def _python_imports() -> list[tuple[str, str]]:
    """(file, statement) of each import line of the ```python blocks of the docs."""
    found = []
    for path in DOCS:
        for block in re.findall(r"```python\n(.*?)```", path.read_text(), re.S):
            for node in ast.parse(block).body:
                if isinstance(node, ast.Import | ast.ImportFrom):
                    found.append((path.name, ast.unparse(node)))
    return found


def test_doc_python_snippets_import_what_exists():
    statements = _python_imports()
    assert statements, "no ```python block found"
    for name, statement in statements:
        try:
            exec(statement, {})
        except ImportError as e:  # an import the package no longer offers
            pytest.fail(f"{name}: {statement!r} fails: {e}")


@pytest.mark.parametrize("module", ["nn", "runtime", "progress", "_version"])
def test_leaf_modules_import_nothing_else_of_the_package(module):
    """layout.md: ``nn``, ``runtime`` and ``progress`` import nothing else of the
    package (``tune.sweep`` imports the progress bar at module level)."""
    mod = importlib.import_module(f"laudtriton.{module}")
    base = Path(mod.__file__)
    files = sorted(base.parent.rglob("*.py")) if base.name == "__init__.py" else [base]
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level == 0 and target.startswith("laudtriton") and not (
                        target == f"laudtriton.{module}"
                        or target.startswith(f"laudtriton.{module}.")):
                    bad.append((path.name, target))
                # relative: inside a subpackage level 1 stays in it; a top-level
                # module's level-1 import reaches a sibling module
                if node.level > (1 if base.name == "__init__.py" else 0):
                    bad.append((path.name, "." * node.level + target))
            elif isinstance(node, ast.Import):
                bad += [(path.name, a.name) for a in node.names
                        if a.name.startswith("laudtriton")]
    assert not bad, f"laudtriton.{module} imports {bad}"
