"""The architecture, checked: layers, no import circles, short modules, strict types.

docs/architecture.md states the rules; this file is what keeps them true.

- The layer contract lives in pyproject.toml (``[tool.importlinter]``) and is checked by
  import-linter's ``lint-imports``: nothing imports upward, the pure core stays free of I/O,
  torch and numpy only in core's tensor-maths modules, the daemon process torch-free.
- import-linter checks layers, not arbitrary circles, so the circles between single modules
  (issue 14 target: 0) are found here from the source (``ast``), TYPE_CHECKING imports included:
  a circle held together by type-only imports is still a circle in the design.
- Issue 14 size targets: no module over 400 lines, no function over 80 lines.
- ``mypy --strict`` on ``agent/core`` and ``agent/io`` (about 10 s from a cold cache, under a
  second warm; pyproject.toml holds the same modules to the same flags in ``make lint``).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "exporter")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    """The dev tool ``name`` next to this interpreter (the venv), else on PATH."""
    local = BIN / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `pip install -e '.[dev]'` (or `make setup`)")
    return found


def _source_files() -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) of every module under the checked packages."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name ``module`` imports, anywhere in the file (functions, TYPE_CHECKING)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                here = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".")
            else:
                base = node.module or ""
            for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
                yield f"{base}.{alias.name}"


def _resolve(name: str, modules: set[str]) -> str | None:
    """The module ``name`` refers to (its longest known prefix), or None when external."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of this tree it imports (direct imports only)."""
    files = dict(_source_files())
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        targets = {_resolve(name, modules) for name in _imported_names(tree, module, is_package)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    circles: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return sorted(circles)


def test_layer_contract_holds() -> None:
    """`lint-imports` keeps every contract of [tool.importlinter] (see docs/architecture.md)."""
    proc = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    report = proc.stdout[proc.stdout.find("Contracts"):] + proc.stderr
    assert proc.returncode == 0, f"the layer contract is broken:\n{report}"


def test_no_import_circles_between_modules() -> None:
    """No module of agent/ or exporter/ reaches itself through its imports."""
    circles = import_circles(import_graph())
    listing = "\n".join("  " + " <-> ".join(circle) for circle in circles)
    assert not circles, f"{len(circles)} import circle(s) between modules:\n{listing}"


def test_circle_finder_finds_circles() -> None:
    """The finder itself: a ring of three and a pair are found, a chain and a self-loop are not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "f"}, "f": {"f"},
             "g": {"h"}, "h": set()}
    assert import_circles(graph) == [["a", "b", "c"], ["d", "e"]]


def test_relative_and_from_imports_resolve() -> None:
    """`from pkg import mod`, relative imports and imports inside functions all count."""
    tree = ast.parse("from . import b\nfrom .c import x\ndef f():\n    import agent.errors\n")
    names = set(_imported_names(tree, "agent.core.a", is_package=False))
    modules = {"agent.core.b", "agent.core.c", "agent.errors", "agent.core.a"}
    assert {_resolve(n, modules) for n in names} == {"agent.core.b", "agent.core.c",
                                                     "agent.errors"}


def test_no_module_over_400_lines() -> None:
    """Issue 14 target: every module of agent/ and exporter/ is at most 400 lines."""
    long = sorted((len(path.read_text(encoding="utf-8").splitlines()), module)
                  for module, path in _source_files())
    offenders = [f"  {module}: {lines} lines" for lines, module in long
                 if lines > MAX_MODULE_LINES]
    assert not offenders, (f"{len(offenders)} module(s) over {MAX_MODULE_LINES} lines:\n"
                           + "\n".join(offenders))


def test_no_function_over_80_lines() -> None:
    """Issue 14 target: every function (def line to last line) is at most 80 lines."""
    offenders = []
    for module, path in _source_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    offenders.append(f"  {module}.{node.name} (line {node.lineno}): {lines} lines")
    assert not offenders, (f"{len(offenders)} function(s) over {MAX_FUNCTION_LINES} lines:\n"
                           + "\n".join(offenders))


def test_core_and_io_pass_mypy_strict() -> None:
    """``mypy --strict agent/core agent/io`` finds nothing (issue 14)."""
    proc = subprocess.run([_tool("mypy"), "--strict", "agent/core", "agent/io"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"mypy (strict on core and io):\n{proc.stdout}{proc.stderr}"
