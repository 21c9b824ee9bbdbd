"""models/: the modules import each other without a circle, and never import pipeline/ (imports go one way)."""

from __future__ import annotations

import ast
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "models"


def _imports(path: Path) -> set[str]:
    """Top-level packages and ``models.<module>`` names that ``path`` imports, at module level or in a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module)
            if node.module == "models":  # `from models import churn as cm` imports the module models.churn
                found.update(f"models.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in MODELS.glob("*.py") if p.stem != "__init__"}
    return {
        name: {imp.split(".")[1] for imp in _imports(path) if imp.startswith("models.")} & set(modules)
        for name, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``graph`` as the list of modules around it, or None."""
    state: dict[str, str] = {}  # "open" while its imports are being walked, then "done"
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_cycle_finder_finds_a_planted_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_models_import_each_other_without_a_circle() -> None:
    graph = _graph()
    assert {"clv_base", "histories", "purchases", "spend", "bootstrap", "value"} <= set(graph)
    assert "clv" not in graph  # split by job; no re-export module left behind
    assert _cycle(graph) is None


def test_models_do_not_import_pipeline() -> None:
    for path in MODELS.glob("*.py"):
        assert not any(imp == "pipeline" or imp.startswith("pipeline.") for imp in _imports(path)), path.name
