"""The package's layering, read from its source with ``ast`` (no import is executed).

Layers, lowest first (docs/architecture.md has the picture): the neutral base modules
(``errors``, ``fileio``, ``runtime``, ``version``), then ``data`` and ``metrics``, ``models``,
``inference``, ``evaluation``, ``engine``, and on top ``integrations`` and ``cli``. A module may
import from its own layer and the layers below it, never above; no two package modules may
import each other, directly or through others (function-level imports count too: a lazy import
still ties the two modules together). The top-level ``agileir`` facade re-exports the public API
and is imported by no package module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "agileir"

#: layer of each top-level part of the package; higher may import lower
LAYERS = {
    "errors": 0, "fileio": 0, "runtime": 0, "version": 0,
    "data": 1, "metrics": 1,
    "models": 2,
    "inference": 3,
    "evaluation": 4,
    "engine": 5,
    "integrations": 6, "cli": 6, "__main__": 6,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """Package modules that ``name`` imports anywhere in its source (resolved to modules)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` imports the submodule when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for t in targets:
            if t == "agileir" or t.startswith("agileir."):
                while t not in MODULES and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t != name:
                    found.add(t)
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_part_of_the_package_has_a_layer():
    unknown = sorted({n.split(".")[1] for n in MODULES if "." in n and layer(n) is None})
    assert not unknown, f"add these to LAYERS (and docs/architecture.md): {unknown}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "agileir"))
def test_imports_follow_the_layers(name):
    mine = layer(name)
    bad = []
    for target in sorted(GRAPH[name]):
        if target == "agileir":
            bad.append(f"{target} (the facade; import the defining module)")
        elif target.startswith("agileir.") and layer(target) is not None and layer(target) > mine:
            bad.append(f"{target} (layer {layer(target)} > {mine})")
    assert not bad, f"{name} imports from above its layer: {', '.join(bad)}"


def test_no_import_cycles():
    """Depth-first search for a cycle among package modules (package facades excluded: an
    ``__init__`` that re-exports its own submodules is not a cycle)."""
    facades = {n for n, p in MODULES.items() if p.name == "__init__.py"}
    graph = {n: {t for t in ts if t not in facades} for n, ts in GRAPH.items() if n not in facades}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for t in sorted(graph.get(n, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_package_internals_import_defining_modules_not_facades():
    """Inside the package, ``from agileir.models import X`` (a facade) hides who depends on whom."""
    facades = {n for n, p in MODULES.items() if p.name == "__init__.py" and n != "agileir.cli"}
    bad = sorted(f"{n} -> {t}" for n, ts in GRAPH.items() for t in ts
                 if t in facades and not n.startswith(t + ".") and n not in facades)
    assert not bad, "import the defining module instead: " + ", ".join(bad)
