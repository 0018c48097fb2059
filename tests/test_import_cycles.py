"""No import cycle inside ``blendmask``.

The check reads every module's *module-level* imports with :mod:`ast` (imports inside
functions are deliberate deferrals and do not count). Importing ``a.b.c`` runs the ``__init__`` of
``a`` and ``a.b`` first, so an import of a module also depends on those packages, except the
packages that enclose the importing module (they are already being initialised when it runs).
``from pkg import name`` depends on ``pkg.name`` when that is a module, else on ``pkg`` itself.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

from tests.helpers.paths import REPO, subprocess_env

PACKAGE = REPO / "blendmask"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _all_modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module):
    """Import nodes executed when the module is imported (not in functions or TYPE_CHECKING)."""
    todo: List[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            todo.extend(node.orelse if _is_type_checking(node.test) else node.body + node.orelse)
        elif isinstance(node, ast.Try):
            todo.extend(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
        elif isinstance(node, (ast.With, ast.ClassDef)):
            todo.extend(node.body)


def _dependencies(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    enclosing = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)} - {name}
    targets: Set[str] = set()
    for node in _module_level_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            targets.add(sub if sub in modules else base)
    deps: Set[str] = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            dep = ".".join(parts[:i])
            if dep in modules and dep != name and (dep not in enclosing or dep == target):
                deps.add(dep)
    return deps


def _find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``[]``."""
    state: Dict[str, int] = {}  # 1: on the stack, 2: done
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_cycle_finder_sees_a_cycle_through_a_package_init(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import A\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    import pkg.b\n\nA = 1\n")  # deferred: no edge
    (pkg / "b.py").write_text("from pkg.sub.a import A\n")
    modules = {_module_name_in(tmp_path, p): p for p in sorted(pkg.rglob("*.py"))}
    graph = {name: _dependencies(name, path, modules) for name, path in modules.items()}
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.a"} and graph["pkg.sub.a"] == set()
    assert _find_cycle(graph) == []
    (pkg / "sub" / "a.py").write_text("from pkg import b\n\nA = 1\n")
    graph = {name: _dependencies(name, path, modules) for name, path in modules.items()}
    assert _find_cycle(graph) == ["pkg.b", "pkg.sub", "pkg.sub.a", "pkg.b"]


def _module_name_in(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle_among_blendmask_modules():
    modules = _all_modules()
    graph = {name: _dependencies(name, path, modules) for name, path in modules.items()}
    assert "blendmask.cli" in graph and "blendmask.config" in graph["blendmask.cli"]
    cycle = _find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("first", ["blendmask.models", "blendmask.data", "blendmask.evaluation",
                                   "blendmask.distributed", "blendmask.engine"])
def test_each_package_imports_first_in_a_fresh_process(first):
    """Importing any of them first works, and the distributed helpers pull in neither models nor data."""
    code = (f"import sys, {first}\n"
            "from blendmask.distributed import dist_rank_and_world_size, reduce_mean\n"
            "print(sorted(m for m in ('blendmask.models', 'blendmask.data') if m in sys.modules))")
    env = subprocess_env()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if first in ("blendmask.distributed", "blendmask.engine"):
        assert proc.stdout.strip() == "[]"
