"""The stamp of a compiled blendmask install: what the build of ``blendmask._C`` depends on.

``.ci/install`` writes the stamp into the virtual environment after a build and skips the build
when the stamp it computes next time is the same (and the extension still loads). The stamp is a
SHA-256 over:

- the bytes of every file under ``csrc/`` and of ``setup.py``, ``CMakeLists.txt`` and
  ``pyproject.toml`` (the sources, the build script and the dependencies), with their paths;
- the build's environment variables that change what is compiled (:data:`BUILD_ENV`);
- the installed torch's version, the Python ABI and the extras installed with the package.

Python files of the package are not in it: the install is editable, so they need no rebuild.

Usage: ``python .ci/build_stamp.py --extras test,docs`` prints the stamp of the checkout that holds
this file, for the interpreter that runs it.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Mapping, Optional

#: Files and folders (relative to the repository root) whose content the build depends on.
BUILD_INPUTS = ("csrc", "setup.py", "CMakeLists.txt", "pyproject.toml")
#: Environment variables read by setup.py that change the compiled extension. MAX_JOBS is not one.
BUILD_ENV = ("FORCE_CUDA", "BLENDMASK_FORCE_CPU", "CUDA_HOME", "TORCH_CUDA_ARCH_LIST", "DEBUG")


def _input_files(root: Path):
    for name in BUILD_INPUTS:
        path = root / name
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        elif path.is_file():
            yield path


def compute_stamp(root: os.PathLike, *, env: Mapping[str, str], torch_version: str, extras: str,
                  python_tag: Optional[str] = None) -> str:
    """The hex SHA-256 stamp of the build of ``root`` under ``env`` (see the module docstring)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in _input_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    for name in BUILD_ENV:
        digest.update(f"{name}={env.get(name, '')}\0".encode())
    digest.update(f"torch={torch_version}\0python={python_tag or sys.implementation.cache_tag}\0".encode())
    digest.update(f"extras={','.join(sorted(e for e in extras.split(',') if e))}\0".encode())
    return digest.hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default="", help="the extras installed with the package, e.g. test,docs")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "none"
    print(compute_stamp(root, env=os.environ, torch_version=torch_version, extras=args.extras))
    return 0


if __name__ == "__main__":
    sys.exit(main())
