"""`.ci/install` reuses a current install: the build stamp (`.ci/build_stamp.py`) and the script.

The stamp must change with everything the compiled extension depends on and with nothing else;
the script must skip the package build when the stamp matches and build when it does not.
"""
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_build_stamp():
    spec = importlib.util.spec_from_file_location("build_stamp", ROOT / ".ci" / "build_stamp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_stamp = _load_build_stamp()


@pytest.fixture
def tree(tmp_path):
    """A minimal source tree with the files the stamp reads, plus some it must ignore."""
    root = tmp_path / "tree"
    (root / "csrc" / "cpu").mkdir(parents=True)
    (root / "csrc" / "blender.cpp").write_text("int blend() { return 1; }\n")
    (root / "csrc" / "cpu" / "blender_cpu.cpp").write_text("int cpu() { return 2; }\n")
    (root / "setup.py").write_text("from setuptools import setup\n")
    (root / "CMakeLists.txt").write_text("project(x)\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "blendmask").mkdir()
    (root / "blendmask" / "ops.py").write_text("x = 1\n")
    (root / "README.md").write_text("# x\n")
    return root


def _stamp(root, env=None, torch_version="2.14.1", extras="test,docs"):
    return build_stamp.compute_stamp(root, env=env or {}, torch_version=torch_version, extras=extras,
                                     python_tag="cpython-311")


def test_the_stamp_is_the_same_for_the_same_inputs(tree):
    assert _stamp(tree) == _stamp(tree)
    assert _stamp(tree, extras="docs,test") == _stamp(tree, extras="test,docs")


@pytest.mark.parametrize("edit", [
    lambda root: (root / "csrc" / "cpu" / "blender_cpu.cpp").write_text("int cpu() { return 3; }\n"),
    lambda root: (root / "csrc" / "cuda").mkdir() or (root / "csrc" / "cuda" / "k.cu").write_text("\n"),
    lambda root: (root / "csrc" / "blender.cpp").rename(root / "csrc" / "blender2.cpp"),
    lambda root: (root / "setup.py").write_text("from setuptools import setup  # changed\n"),
    lambda root: (root / "CMakeLists.txt").write_text("project(y)\n"),
    lambda root: (root / "pyproject.toml").write_text("[project]\nname = 'x'\ndependencies = ['numpy']\n"),
], ids=["csrc file changed", "csrc file added", "csrc file renamed", "setup.py", "CMakeLists.txt",
        "pyproject.toml"])
def test_the_stamp_changes_with_every_build_input(tree, edit):
    before = _stamp(tree)
    edit(tree)
    assert _stamp(tree) != before


@pytest.mark.parametrize("name", build_stamp.BUILD_ENV)
def test_the_stamp_changes_with_each_build_setting(tree, name):
    assert _stamp(tree, env={name: "1"}) != _stamp(tree, env={})


def test_the_stamp_changes_with_torch_and_the_extras(tree):
    assert _stamp(tree, torch_version="2.15.0") != _stamp(tree)
    assert _stamp(tree, extras="test") != _stamp(tree)


def test_python_files_and_job_count_do_not_change_the_stamp(tree):
    """The install is editable: Python files need no rebuild, and MAX_JOBS changes no output."""
    before = _stamp(tree)
    (tree / "blendmask" / "ops.py").write_text("x = 2\n")
    (tree / "README.md").write_text("# y\n")
    assert _stamp(tree, env={"MAX_JOBS": "8"}) == before


FAKE_PIP = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_PIP_LOG"
if [[ " $* " == *" -e "* ]]; then
  echo "  [blendmask setup] configuration: backend=CPU, sources=2"
  echo "  [1/2] c++ -MMD -MF /tmp/b/blender.o.d -O3 -c $PWD/csrc/blender.cpp -o /tmp/b/blender.o"
  echo "  [2/2] c++ -MMD -MF /tmp/b/cpu.o.d -O3 -c $PWD/csrc/cpu/blender_cpu.cpp -o /tmp/b/cpu.o"
  echo "  g++ -O3 -shared /tmp/b/blender.o /tmp/b/cpu.o -o /tmp/b/_C.so"
fi
"""


@pytest.fixture
def install_copy(tmp_path):
    """A copy of the checkout's build inputs, `.ci/` and package (with its compiled extension), and
    a virtual environment whose pip only logs its arguments and whose python is this one."""
    if not list((ROOT / "blendmask").glob("_C*.so")):
        pytest.fail("blendmask._C is not built in this checkout (run .ci/install)")
    copy = tmp_path / "checkout"
    copy.mkdir()
    for name in ("csrc", "blendmask", ".ci"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "wheels"))
    for name in ("setup.py", "CMakeLists.txt", "pyproject.toml"):
        shutil.copy2(ROOT / name, copy / name)
    venv_bin = copy / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "pip").write_text(FAKE_PIP)
    (venv_bin / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for tool in ("pip", "python"):
        (venv_bin / tool).chmod((venv_bin / tool).stat().st_mode | stat.S_IXUSR)
    return copy


def _run_install(copy):
    log = copy / "pip.log"
    log.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("VENV", "PYTHONPATH")}
    env["FAKE_PIP_LOG"] = str(log)
    done = subprocess.run(["bash", str(copy / ".ci" / "install")], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    builds = [line for line in log.read_text().splitlines() if " -e " in f" {line} "]
    return done.stdout, builds


def test_a_second_install_reuses_the_build_and_a_changed_source_rebuilds(install_copy):
    out, builds = _run_install(install_copy)
    assert builds == ["install --no-build-isolation -v -e .[test,docs]"]
    assert "about 12" in out and "build/extension-build.log" in out
    assert "[1/2] compiled csrc/blender.cpp" in out and "[2/2] compiled csrc/cpu/blender_cpu.cpp" in out
    assert "linking blendmask._C" in out
    assert (install_copy / ".venv" / ".blendmask-build-stamp").is_file()

    out, builds = _run_install(install_copy)
    assert builds == []
    assert "is current" in out and "blendmask._C: loaded" in out

    source = install_copy / "csrc" / "blender.cpp"
    source.write_text(source.read_text() + "\n// changed\n")
    out, builds = _run_install(install_copy)
    assert len(builds) == 1 and "is current" not in out
