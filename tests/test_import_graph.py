"""The package's import graph: no module-level import cycle in blendmask/, and the one
distributed module (blendmask.engine.distributed) is usable from models, data and evaluation."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules():
    """``{dotted name: (file, is_package)}`` for every module of blendmask/."""
    modules = {}
    for path in (ROOT / "blendmask").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _module_level_imports(tree):
    """Import statements that run at import time (function bodies and ``if TYPE_CHECKING`` excluded)."""
    found = []

    def visit(statements):
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body), visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body), visit(node.orelse), visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(tree.body)
    return found


def _import_graph():
    """``{module: modules it makes Python import at import time}``. Importing ``a.b.c`` from outside
    ``a.b`` also runs ``a/__init__`` and ``a/b/__init__``; a package's own ``__init__`` running first
    for its submodules is not an edge (Python handles it)."""
    modules = _modules()
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name.split(".") if is_package else name.split(".")[:-1]
        deps = set()
        for node in _module_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                        deps.add(prefix)
        graph[name] = deps
    return graph


def _find_cycle(graph):
    """One cycle as a list of modules, or None (iterative depth-first search)."""
    state = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_no_module_level_import_cycle():
    graph = _import_graph()
    assert "blendmask.engine.distributed" in graph["blendmask.models.fcos.losses"]  # the graph sees real edges
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("first", ["blendmask.models", "blendmask.data", "blendmask.evaluation",
                                   "blendmask.engine.distributed", "blendmask.engine"])
def test_each_package_imports_first_in_a_fresh_process(first):
    """Importing any of them first works, and the distributed helpers pull in neither models nor data."""
    code = (f"import sys, {first}\n"
            "from blendmask.engine.distributed import dist_rank_and_world_size, reduce_mean\n"
            "print(sorted(m for m in ('blendmask.models', 'blendmask.data') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if first.startswith("blendmask.engine"):
        assert proc.stdout.strip() == "[]"
