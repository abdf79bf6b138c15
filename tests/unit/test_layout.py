"""The package's layout: the delivery core flat in dispatcher/, the wings in sub-packages
(integrations/, admin/, demo/), imports that run one way only.

Every import statement in dispatcher/ counts, wherever it is: module level, inside a
function, under `if TYPE_CHECKING:`. The rules:

- no import cycle among dispatcher's modules;
- a core module imports no wing, except the composition roots that wire the wings in:
  cli.py (the commands) and app.py (the daemon's tasks and metrics).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import dispatcher

PACKAGE = Path(dispatcher.__file__).parent
WINGS = ("dispatcher.integrations", "dispatcher.admin", "dispatcher.demo")
COMPOSITION_ROOTS = {"dispatcher.cli", "dispatcher.app"}

Graph = Mapping[str, set[str]]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the dispatcher modules it imports}, read from the source with ast."""
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: relative import (the house uses absolute ones)"
                base = node.module or ""
                for alias in node.names:
                    # `from dispatcher.admin import api` imports the module dispatcher.admin.api
                    full = f"{base}.{alias.name}"
                    found.add(full if full in paths else base)
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def is_wing(module: str) -> bool:
    return any(module == w or module.startswith(w + ".") for w in WINGS)


def core_into_wing(graph: Graph) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if not is_wing(module) and module not in COMPOSITION_ROOTS
        for target in targets
        if is_wing(target)
    )


def test_the_checks_see_what_they_look_for() -> None:
    graph = {
        "dispatcher.metrics": {"dispatcher.integrations.events"},
        "dispatcher.integrations.events": {"dispatcher.queries"},
        "dispatcher.admin.cli": {"dispatcher.admin.webhooks_cli"},
        "dispatcher.admin.webhooks_cli": {"dispatcher.admin.cli"},
        "dispatcher.cli": {"dispatcher.admin.cli"},
    }
    assert cycles(graph) == [["dispatcher.admin.cli", "dispatcher.admin.webhooks_cli"]]
    assert core_into_wing(graph) == ["dispatcher.metrics imports dispatcher.integrations.events"]


def test_the_graph_is_read_from_every_module_and_every_kind_of_import() -> None:
    graph = import_graph()
    assert {"dispatcher.cli", "dispatcher.admin.api", "dispatcher.demo.walkthrough"} <= set(graph)
    assert "dispatcher.integrations.worker" in graph["dispatcher.app"]  # module level
    assert "dispatcher.app" in graph["dispatcher.cli"]  # inside a function
    assert "dispatcher.integrations.verdict" in graph["dispatcher.integrations.failover"]  # typing


def test_no_import_cycle_among_dispatcher_modules() -> None:
    assert cycles(import_graph()) == []


def test_the_core_imports_no_wing_except_where_the_wings_are_wired_in() -> None:
    assert core_into_wing(import_graph()) == []


def test_the_wings_are_sub_packages_and_the_core_stays_flat() -> None:
    for wing in WINGS:
        assert (PACKAGE.parent / wing.replace(".", "/") / "__init__.py").is_file()
    assert sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()) == [
        "admin",
        "demo",
        "integrations",
    ]
