"""The package has no import cycle, function-level imports included (read with ast)."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "geom_jax"


def modules(root=ROOT) -> dict[str, str]:
    """Dotted module name -> file of every module of the package."""
    out = {}
    for folder, _, names in os.walk(os.path.join(root, PACKAGE)):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def imported(module: str, path: str, known: dict) -> set[str]:
    """Modules of the package that ``module`` imports anywhere (module level, in
    functions, in classes), absolute or relative; ``from pkg import name`` counts as an
    import of ``pkg.name`` when that is a module, else of ``pkg``."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != module:
                out.add(t)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or with a self loop
    (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def import_graph(root=ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {m: imported(m, p, known) for m, p in known.items()}


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "geom_jax.metrics.declare.registry" in graph
    assert "geom_jax.metrics.declare.builtin" in graph["geom_jax.metrics.declare.registry"]
    assert cycles(graph) == []


def test_the_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    """A cycle closed only inside a function (a lazy import) is still a cycle."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from geom_jax.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n    return a\n")
    (pkg / "c.py").write_text("from . import a\n")
    graph = import_graph(str(tmp_path))
    assert graph["geom_jax.sub.b"] == {"geom_jax.a"}
    assert cycles(graph) == [["geom_jax.a", "geom_jax.sub.b"]]


def test_measures_reach_the_backends_only_through_their_protocol():
    """measures/ and similarity/ import from backends/ its package (on_points) and
    its protocol, never a context's internals."""
    allowed = {f"{PACKAGE}.metrics.backends", f"{PACKAGE}.metrics.backends.protocol"}
    graph = import_graph()
    checked = 0
    for module, deps in graph.items():
        if module.startswith((f"{PACKAGE}.metrics.measures", f"{PACKAGE}.metrics.similarity")):
            checked += 1
            reached = {d for d in deps if d.startswith(f"{PACKAGE}.metrics.backends")}
            assert reached <= allowed, (module, sorted(reached - allowed))
    assert checked >= 12


@pytest.mark.parametrize("layer", ["metrics", "models", "data", "io"])
def test_ground_floor_imports_nothing_above_it(layer):
    """metrics/, models/, data/ and io/ import neither the fused step, the run nor the
    report (the layout's floors)."""
    above = ("geom_jax.pipeline", "geom_jax.run", "geom_jax.report", "geom_jax.results")
    graph = import_graph()
    for module, deps in graph.items():
        if module.startswith(f"{PACKAGE}.{layer}"):
            assert not {d for d in deps if d.startswith(above)}, module


def test_the_public_surface_is_the_measures_and_the_entry_points():
    """geom_jax.metrics.__all__ (issue 28, acceptance 1): every name is a function or the
    registry, none is a module of the machinery, and each exists."""
    import types

    import geom_jax.metrics as m

    for name in m.__all__:
        obj = getattr(m, name)
        assert callable(obj) or name == "registry", name
        assert not isinstance(obj, types.ModuleType) or name == "registry", name
    assert {"layer_geometry", "stack_geometry", "layer_similarity", "gride"} <= set(m.__all__)
    assert not {"check_sizes", "validate_hidden", "SELECTION_METHODS"} & set(m.__all__)
