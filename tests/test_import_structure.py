"""Module boundaries: no import cycle inside ``blendmask``, and a command line that starts without torch.

The cycle check reads every module's *module-level* imports with :mod:`ast` (imports inside
functions are deliberate deferrals and do not count). Importing ``a.b.c`` runs the ``__init__`` of
``a`` and ``a.b`` first, so an import of a module also depends on those packages, except the
packages that enclose the importing module (they are already being initialised when it runs).
``from pkg import name`` depends on ``pkg.name`` when that is a module, else on ``pkg`` itself.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "blendmask"
HEAVY = ("torch", "torchvision", "numpy")


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


def test_only_the_entry_point_imports_the_cli():
    """The command line sits on top: no library module imports it, not even inside a function."""
    importers = []
    for name, path in _all_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(m == "blendmask.cli" or m.startswith("blendmask.cli.") for m in imported):
                importers.append(name)
    assert set(importers) <= {"blendmask.__main__"}, importers


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def _imported_modules(code: str) -> Set[str]:
    proc = subprocess.run([sys.executable, "-c", code + "; print(' '.join(sys.modules))"], env=_env(),
                          capture_output=True, text=True, check=True)
    return set(proc.stdout.split())


@pytest.mark.parametrize("module", ["blendmask", "blendmask.cli", "blendmask.config", "blendmask.errors"])
def test_light_modules_do_not_import_torch(module):
    loaded = _imported_modules(f"import sys, {module}")
    assert module in loaded
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]


def _subcommands() -> List[str]:
    from blendmask.cli import COMMANDS

    return [command.name for command in COMMANDS]


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in _subcommands()])
def test_help_imports_no_heavy_module(argv):
    """``python -X importtime -m blendmask [SUB] --help``: what it imports, by the interpreter's own log."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "blendmask", *argv], env=_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: blendmask" in proc.stdout
    imported = [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "blendmask.cli" in imported
    assert not [m for m in imported if m.split(".")[0] in HEAVY]
