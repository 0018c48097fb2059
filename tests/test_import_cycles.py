"""No import cycle inside ``blendmask``, of any kind.

The check reads every import statement of every module with :mod:`ast`, wherever it stands:
at module level, inside a function (a deferred import still ties the two modules together),
and under ``if TYPE_CHECKING:`` (a type that names the importer is a cycle too). Importing ``a.b.c`` runs the ``__init__`` of
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


def _all_imports(tree: ast.Module):
    """Every import node of the module: module level, in functions and classes, under TYPE_CHECKING."""
    return (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def _dependencies(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    enclosing = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)} - {name}
    targets: Set[str] = set()
    for node in _all_imports(ast.parse(path.read_text(), str(path))):
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


def _graph_of(tmp_path: Path) -> Dict[str, Set[str]]:
    modules = {_module_name_in(tmp_path, p): p for p in sorted((tmp_path / "pkg").rglob("*.py"))}
    return {name: _dependencies(name, path, modules) for name, path in modules.items()}


def test_the_cycle_finder_sees_a_cycle_through_a_package_init(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import A\n")
    (pkg / "sub" / "a.py").write_text("A = 1\n")
    (pkg / "b.py").write_text("from pkg.sub.a import A\n")
    graph = _graph_of(tmp_path)
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.a"} and graph["pkg.sub.a"] == set()
    assert _find_cycle(graph) == []
    (pkg / "sub" / "a.py").write_text("from pkg import b\n\nA = 1\n")
    assert _find_cycle(_graph_of(tmp_path)) == ["pkg.b", "pkg.sub", "pkg.sub.a", "pkg.b"]


@pytest.mark.parametrize("importer", [
    "def f():\n    import pkg.b\n",  # deferred into a function
    "class C:\n    def f(self):\n        from . import b\n",  # in a method, relative
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",  # for type hints only
    "import typing\nif typing.TYPE_CHECKING:  # pragma: no cover\n    from .b import B\nelse:\n    B = None\n",
])
def test_the_cycle_finder_sees_deferred_and_type_checking_imports(tmp_path, importer):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(importer)
    (pkg / "b.py").write_text("from pkg.a import f\n\nB = 1\n")
    assert _find_cycle(_graph_of(tmp_path)) == ["pkg.a", "pkg.b", "pkg.a"]


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
