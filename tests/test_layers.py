"""The package's floor plan: every onnxopt module imports only its own layer or lower ones
(``onnxopt.LAYERS``), and no onnxopt modules import each other in a circle.

Imports are read with ``ast`` (nothing is executed), at module level and inside functions,
absolute and relative; ``from pkg import name`` counts as an import of ``pkg.name`` when that is
a module, else of ``pkg`` (except ``from onnxopt import __version__``: metadata, not the API).
"""

from __future__ import annotations

import ast
from pathlib import Path

import onnxopt

PACKAGE_DIR = Path(onnxopt.__file__).resolve().parent

# Known violations awaiting a change elsewhere: (importer, imported) -> that change. The tests fail
# on an entry that no longer occurs, so the lists cannot go stale. Both are empty now.
PENDING: dict[tuple[str, str], str] = {}
PENDING_CYCLE_EDGES: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _resolve_base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    # a package's own __init__ is level 1's anchor; a plain module's anchor is its package
    anchor = module.split(".")
    drop = node.level - 1 if is_package else node.level
    anchor = anchor[: len(anchor) - drop] if drop else anchor
    return ".".join(anchor + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The onnxopt modules that ``module`` imports anywhere in its file."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_base(module, path.name == "__init__.py", node)
            for alias in node.names:
                if base == "onnxopt" and alias.name.startswith("__"):
                    continue  # package metadata (__version__), not the API facade
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return {name for name in found if name == "onnxopt" or name.startswith("onnxopt.")} - {module}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def layer_of(module: str) -> int:
    """Index in ``onnxopt.LAYERS`` of the longest prefix owning ``module``; bare ``onnxopt`` only owns itself."""
    best, best_len = -1, -1
    for index, prefixes in enumerate(onnxopt.LAYERS.values()):
        for prefix in prefixes:
            owns = module == prefix or (prefix != "onnxopt" and module.startswith(prefix + "."))
            if owns and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.add(item)
                if item == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_within(graph, comp) for comp in components]


def _cycle_within(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, staying inside it."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle found in component {sorted(component)}")


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    names = list(onnxopt.LAYERS)
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                bad.append((module, target))
    assert names  # LAYERS must not be empty for the comparison above to mean anything
    return bad


def test_every_module_has_a_layer():
    unowned = [m for m in all_modules() if layer_of(m) < 0]
    assert not unowned, f"modules in no layer of onnxopt.LAYERS: {unowned}"


def test_no_module_imports_a_higher_layer():
    names = list(onnxopt.LAYERS)
    bad = [(a, b) for a, b in upward_imports(import_graph()) if (a, b) not in PENDING]
    lines = [f"{a} ({names[layer_of(a)]}) imports {b} ({names[layer_of(b)]})" for a, b in bad]
    assert not lines, "upward imports:\n" + "\n".join(lines)


def test_pending_allow_list_is_not_stale():
    current = set(upward_imports(import_graph()))
    stale = [pair for pair in PENDING if pair not in current]
    assert not stale, f"these allowed violations are gone; remove them from PENDING: {stale}"


def test_no_import_cycles():
    graph = import_graph()
    for importer, imported in PENDING_CYCLE_EDGES:
        graph.get(importer, set()).discard(imported)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (one per knot of mutually importing modules):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_pending_cycle_edges_still_exist():
    graph = import_graph()
    stale = [edge for edge in PENDING_CYCLE_EDGES if edge[1] not in graph.get(edge[0], set())]
    assert not stale, f"these allowed imports are gone; remove them from PENDING_CYCLE_EDGES: {stale}"


def test_checker_sees_function_level_relative_and_from_imports(tmp_path):
    # the reader itself, on a tiny package: a cycle through a function-level relative import and an
    # upward `from onnxopt import cli` must both be found
    pkg = tmp_path / "onnxopt" / "passes"
    pkg.mkdir(parents=True)
    (tmp_path / "onnxopt" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from onnxopt import cli\nfrom onnxopt.passes import a\n")
    (tmp_path / "onnxopt" / "cli.py").write_text("")
    known = {"onnxopt", "onnxopt.passes", "onnxopt.passes.a", "onnxopt.passes.b", "onnxopt.cli"}
    graph = {}
    for name in known:
        rel = name.split(".")[1:]
        path = tmp_path.joinpath("onnxopt", *rel, "__init__.py") if name in ("onnxopt", "onnxopt.passes") \
            else tmp_path.joinpath("onnxopt", *rel[:-1], rel[-1] + ".py")
        graph[name] = imports_of(name, path, known)
    assert graph["onnxopt.passes"] == {"onnxopt.passes.a"}
    assert graph["onnxopt.passes.a"] == {"onnxopt.passes.b"}
    assert graph["onnxopt.passes.b"] == {"onnxopt.cli", "onnxopt.passes.a"}
    assert find_cycles(graph) == [["onnxopt.passes.a", "onnxopt.passes.b", "onnxopt.passes.a"]]
    assert ("onnxopt.passes.b", "onnxopt.cli") in upward_imports(graph)
