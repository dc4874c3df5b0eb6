"""The shape of the code base: no import circles among the project's modules, and imports only
point down the layers models < serving < components < pipeline < benchmarks, tests.

Static (ast) analysis, so it also sees imports inside functions: a lazy import that points up is
still a dependency that points up.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

LAYERS = ("models", "serving", "components", "pipeline", "benchmarks", "tests")
REPO = Path(__file__).resolve().parents[1]


def _module_name(root: Path, path: Path) -> str:
    name = ".".join(path.relative_to(root).with_suffix("").parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for top in LAYERS:
        for directory, _, files in os.walk(root / top):
            if "__pycache__" in directory:
                continue
            for file in files:
                if file.endswith(".py"):
                    path = Path(directory) / file
                    found[_module_name(root, path)] = path
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its body)."""
    modules = _modules(root)

    def resolve(name: str):
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in modules:
                return ".".join(parts[:end])
        return None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in filter(None, map(resolve, targets)):
                # a package's own modules, and a module's own package(s), are not edges
                if target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} -> {target}" for module, targets in graph.items()
                  for target in targets if _layer(target) > _layer(module))


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_project_has_no_import_circles():
    graph = import_graph(REPO)
    assert len(graph) > 50, "the walk found too few modules: is REPO right?"
    circles = import_circles(graph)
    assert not circles, "import circles:\n" + "\n".join(", ".join(c) for c in circles)


def test_imports_only_point_down_the_layers():
    problems = upward_imports(import_graph(REPO))
    assert not problems, ("imports from a lower layer to a higher one "
                          f"({' < '.join(LAYERS)}):\n" + "\n".join(problems))


def _write(root: Path, relative: str, source: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path):
    _write(tmp_path, "models/__init__.py", "")
    _write(tmp_path, "models/a.py", "def f():\n    from components import c\n")
    _write(tmp_path, "components/__init__.py", "")
    _write(tmp_path, "components/c.py", "from . import d\n")
    _write(tmp_path, "models/b.py", "")
    _write(tmp_path, "components/d.py", "from components.c import x\nimport models.b\n")
    graph = import_graph(tmp_path)
    assert graph["components.c"] == {"components.d"}
    assert graph["components.d"] == {"components.c", "models.b"}
    assert import_circles(graph) == [["components.c", "components.d"]]
    assert upward_imports(graph) == ["models.a -> components", "models.a -> components.c"]
