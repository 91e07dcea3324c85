"""The shape a newcomer relies on: commands apart from the library, no import circles, a small top level.

The import graph is read with `ast` from the source (function-level imports included), so a circle hidden
behind a lazy import still fails here.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "lungcnn"
MAX_TOP_LEVEL_MODULES = 6
MAX_CLI_LINES = 80


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module `name` refers to: itself, or the nearest enclosing package (`from pkg import name`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {_resolve(a.name, modules) for a in node.names if a.name.startswith("lungcnn")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                if base.startswith("lungcnn"):
                    targets |= {_resolve(f"{base}.{a.name}", modules) for a in node.names}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def _unit(module: str) -> str:
    """A top-level module or package: lungcnn.data.io -> lungcnn.data."""
    return ".".join(module.split(".")[:2])


def test_every_library_import_names_a_module_that_exists():
    # `from lungcnn.calibrate import x` after a move would resolve to the package itself and hide from the graph.
    modules = _modules()
    missing = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("lungcnn"):
                if node.module not in modules:
                    missing.append(f"{name}: {node.module}")
    assert missing == []


def test_no_module_imports_in_a_circle():
    assert cycles(import_graph()) == []


def test_no_package_imports_in_a_circle():
    packages: dict[str, set[str]] = defaultdict(set)
    for source, targets in import_graph().items():
        packages[_unit(source)] |= {_unit(t) for t in targets if _unit(t) != _unit(source)}
    assert cycles(packages) == []


def test_the_library_never_imports_a_command():
    offenders = {source: sorted(t for t in targets if t == "lungcnn.cli" or t.startswith("lungcnn.cli."))
                 for source, targets in import_graph().items() if not source.startswith("lungcnn.cli")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_top_level_holds_packages_and_few_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


def test_commands_are_thin():
    long = {p.name: n for p in (PACKAGE / "cli").glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_CLI_LINES}
    assert long == {}


def test_the_checker_finds_a_hidden_circle():
    # The checks above are only worth something if a circle through a function-level import is seen.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert _resolve("lungcnn.inference.predictor.Predictor", _modules()) == "lungcnn.inference.predictor"
