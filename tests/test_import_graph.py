"""The package's import graph keeps its layers: checked over every `import` in the source (including imports
inside functions and under TYPE_CHECKING), so an upward import or a circle cannot come back unnoticed.

- `runtime/outputs` (the writers) imports nothing from `runtime/segment` (the batch that calls them);
- the backend registry imports no backend implementation, and no backend imports the registry;
- nothing under `runtime/`, `train/` or `model/` imports the exporter (`slidefuse.export`): the network lives in
  `slidefuse.model`, which imports neither the exporter nor the runtime's backends;
- no import circle joins two of the package's areas (a top-level package, or a sub-package or module of
  `runtime/`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "slidefuse"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """slidefuse module -> the slidefuse modules it imports (a name imported from a package counts as the
    submodule when one of that name exists)."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, frozenset[str]] = {}
    for mod, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, path.name == "__init__.py", node)
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    found.add(sub if sub in modules else target)
        graph[mod] = frozenset(m for m in found if m in modules and m != mod)
    return graph


def _under(mod: str, prefixes: Iterable[str]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def _edges(src: Iterable[str], dst: Iterable[str]) -> list[str]:
    src, dst = tuple(src), tuple(dst)
    return sorted(f"{m} -> {t}" for m, targets in import_graph().items() if _under(m, src)
                  for t in targets if _under(t, dst))


def test_graph_sees_the_package() -> None:
    g = import_graph()
    assert "slidefuse.runtime.segment.scheduler" in g
    assert "slidefuse.runtime.outputs" in g["slidefuse.runtime.segment.stages"] | {
        t for t in g["slidefuse.runtime.segment.stages"] if t.startswith("slidefuse.runtime.outputs")}


def test_outputs_import_nothing_from_segment() -> None:
    assert _edges(["slidefuse.runtime.outputs"], ["slidefuse.runtime.segment"]) == []


def test_backend_registry_and_backends_do_not_import_each_other() -> None:
    registry = "slidefuse.runtime.backends.registry"
    allowed = {"slidefuse.runtime.backends.base", "slidefuse.runtime.backends.options"}
    impl = sorted(t for t in import_graph()[registry] if t.startswith("slidefuse.runtime.backends.")
                  and t not in allowed)
    assert impl == [], f"the registry imports backend implementations: {impl}"
    # auto.py chooses among the registered backends: it is the registry's client, not a backend
    chooser = ("slidefuse.runtime.backends.auto", "slidefuse.runtime.backends")
    back = [m for m, targets in import_graph().items() if m.startswith("slidefuse.runtime.backends.")
            and m != registry and m not in chooser and registry in targets]
    assert back == [], f"backends import the registry: {back}"


@pytest.mark.parametrize("area", ["slidefuse.runtime", "slidefuse.train", "slidefuse.model"])
def test_nothing_below_the_exporter_imports_it(area: str) -> None:
    assert _edges([area], ["slidefuse.export"]) == []


def test_model_is_below_the_runtime_backends() -> None:
    assert _edges(["slidefuse.model"], ["slidefuse.runtime.backends", "slidefuse.commands", "slidefuse.cli"]) == []


def _area(mod: str) -> str:
    """The area a module belongs to: slidefuse.<top> or, inside runtime, slidefuse.runtime.<sub>."""
    parts = mod.split(".")
    return ".".join(parts[:3] if len(parts) >= 3 and parts[1] == "runtime" else parts[:2])


def _cycles_between_areas() -> list[list[str]]:
    """Strongly connected components of the area graph (Tarjan) with more than one area."""
    g: dict[str, set[str]] = {}
    for mod, targets in import_graph().items():
        g.setdefault(_area(mod), set()).update(_area(t) for t in targets if _area(t) != _area(mod))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_circle_joins_two_areas() -> None:
    """No circle at all between areas (segment and outputs, the registry and the backends, export and the
    runtime, ...): each area's imports point one way."""
    assert _cycles_between_areas() == []
