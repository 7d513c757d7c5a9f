"""The package's modules import one another without circles (issue: ``data/`` had two).

Every ``from lumbardx.x.y import ...`` and ``import lumbardx.x.y`` in a module, at module level
or inside a function, is an edge; the graph of ``lumbardx.data`` must have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lumbardx

PACKAGE = Path(lumbardx.__file__).parent


def _imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports (``lumbardx.data.images`` -> ``images``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.startswith(package + "."):
                out.add(name[len(package) + 1:].split(".")[0])
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_data_modules_import_without_circles() -> None:
    folder = PACKAGE / "data"
    modules = {p.stem for p in folder.glob("*.py")}
    graph = {p.stem: _imports(p, "lumbardx.data") & modules - {p.stem}
             for p in folder.glob("*.py")}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
