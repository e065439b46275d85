"""The package has no import cycle, lazy (function-level) imports included: each module can be read and
tested without the ones that use it."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "pytest_vllm_compat"


def module_name(path: Path) -> str:
    """``matrix/cells.py`` -> ``matrix.cells``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _target(name: str, modules: set[str]) -> str | None:
    """The longest known module a dotted name (relative to the package) starts with."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return None


def _from_import(full: str, names: list[str], modules: set[str]) -> set[str]:
    """``from FULL import NAMES``: the submodules it names, and FULL itself unless every name is a submodule
    (``from . import charts`` in a subpackage needs the package's ``__init__`` only as a parent, not its names)."""
    subs = {f"{full}.{n}" if full else n for n in names}
    deps = {m for m in subs if m in modules}
    if full and len(deps) < len(subs):
        target = _target(full, modules)
        if target:
            deps.add(target)
    return deps


def imports_of(path: Path, modules: set[str]) -> set[str]:
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base)
            elif node.module and node.module.split(".")[0] == "pytest_vllm_compat":
                full = node.module.split(".", 1)[1] if "." in node.module else ""
                deps |= _from_import(full, [a.name for a in node.names], modules)
                continue
            else:
                continue
            full = ".".join(x for x in (prefix, node.module or "") if x)
            deps |= _from_import(full, [a.name for a in node.names], modules)
        elif isinstance(node, ast.Import):
            deps |= {t for a in node.names if a.name.startswith("pytest_vllm_compat.")
                     if (t := _target(a.name.split(".", 1)[1], modules))}
    return {d for d in deps if d != me}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle() -> None:
    files = sorted(PKG.rglob("*.py"))
    modules = {module_name(p) for p in files}
    graph = {module_name(p): imports_of(p, modules) for p in files}
    assert graph["matrix"] and "website" not in graph["matrix"]  # the graph is read (and the old cycle is gone)
    # subpackages are read too: relative imports inside them and into the rest of the package
    assert {"website.base", "website.index", "website.logs", "website.measures", "matrix"} <= graph["website"]
    assert {"runtime", "environments", "server_spec"} <= graph["runtime.docker"]
    assert cycles(graph) == []
