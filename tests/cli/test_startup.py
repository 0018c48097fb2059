"""The command line starts instantly: ``blendmask.cli`` (and every ``--help``) imports no torch,
numpy or torchvision, and no library module imports the command line."""
from __future__ import annotations

import ast
import subprocess
import sys
from typing import List, Set

import pytest

from tests.helpers.paths import REPO, subprocess_env

PACKAGE = REPO / "blendmask"
HEAVY = ("torch", "torchvision", "numpy")


def test_only_the_entry_point_imports_the_cli():
    """The command line sits on top: no library module imports it, not even inside a function."""
    importers = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        package = list(path.relative_to(REPO).parent.parts)  # the package a relative import starts from
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module
                imported = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            if "blendmask.cli" in imported:
                importers.add(path.relative_to(PACKAGE).as_posix())
    assert importers <= {"__main__.py"}, importers


def _env():
    return subprocess_env()


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
