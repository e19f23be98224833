"""The package's import graph, read from the source (function-level imports included): no module imports itself
through others, `models/` holds only the model, `rubric/` is pure Python, and the lower layers never reach up.
docs/ARCHITECTURE.md draws the same rules."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("omnirrm_jax", "data_prep")

# package -> the project packages it may import (besides itself). Anything else is a layering break.
# The table of docs/ARCHITECTURE.md, bottom to top; `errors` (the user-error type) sits below them all, and
# `compile_cache` (JAX's persistent cache settings) beside it.
ALLOWED = {
    "errors": set(),
    "compile_cache": set(),
    "models": {"errors"},
    "rubric": {"errors"},
    "parallel": {"errors", "models"},
    "data": {"errors", "models", "rubric", "parallel"},
    "decoding": {"errors", "models", "rubric", "parallel"},
    "checkpoint": {"errors", "parallel"},
    "data_prep": {"errors", "models", "rubric", "parallel", "data"},
    "eval": {"errors", "models", "rubric", "parallel", "data", "decoding", "checkpoint", "data_prep"},
    "training": {"errors", "compile_cache", "models", "rubric", "parallel", "data", "decoding", "checkpoint",
                 "data_prep", "eval"},
    "bon": {"errors", "models", "rubric", "parallel", "data", "decoding", "data_prep", "eval"},
    "serve": {"errors", "compile_cache", "models", "rubric", "parallel", "data", "decoding", "checkpoint", "data_prep", "eval"},
    "synth": {"errors", "models", "rubric", "parallel", "data", "decoding", "data_prep", "eval", "bon"},
}
RUBRIC_FORBIDDEN = ("jax", "flax", "optax", "orbax", "numpy", "torch")


def _modules() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: str) -> list[str]:
    """Every module name an import statement of `path` names (`from a import b` names `a` and `a.b`)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import (the project imports absolutely)"
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for name in _imports(path):
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name != m and not m.startswith(name + "."):  # a package's own __init__ is no cycle
                graph[m].add(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "omnirrm_jax" and len(parts) > 1 else parts[0]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_lower_layers_do_not_reach_up(package):
    graph = _graph()
    breaks = sorted(f"{m} -> {d}" for m, deps in graph.items() if _package(m) == package
                    for d in deps if d.startswith(PACKAGES) and _package(d) not in ALLOWED[package] | {package})
    assert breaks == [], f"{package}/ may import only {sorted(ALLOWED[package])} of the project"


def test_rubric_imports_no_array_library():
    mods = _modules()
    found = sorted(f"{m}: {name}" for m, path in mods.items() if _package(m) == "rubric"
                   for name in _imports(path) if name.split(".")[0] in RUBRIC_FORBIDDEN)
    assert found == []
