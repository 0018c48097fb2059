"""Where the commands write: checks of an output location, made before any long work.

A command that runs for minutes must not fail at its end because its output cannot be written,
nor write one output over another; these checks name the argument (``option``) and the path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Sequence

__all__ = ["check_output_location", "check_distinct_stems"]


def check_output_location(path: str | os.PathLike, option: str, *, is_dir: bool) -> Path:
    """Refuse, before any long work, an output location that cannot be written.

    ``path`` (a directory if ``is_dir``, else a file) must not exist as the other kind, and the
    directory that will receive the writes must be writable: ``path`` itself for an existing
    output directory, else the nearest existing ancestor (missing directories are created later,
    by the command). ``option`` names the argument in the messages. Raises an ``OSError``
    (``NotADirectoryError``, ``IsADirectoryError``, ``PermissionError``, ``FileNotFoundError``)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"{option} {path} is a broken symbolic link")
    if path.exists():
        if is_dir and not path.is_dir():
            raise NotADirectoryError(f"{option} {path} exists and is not a directory")
        if not is_dir and path.is_dir():
            raise IsADirectoryError(f"{option} {path} is a directory: give a file name")
        if not is_dir and not os.access(path, os.W_OK):
            raise PermissionError(f"{option} {path} exists and is not writable")
    folder = path if path.is_dir() else path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"{option} {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: cannot write into {folder}")
    return path


def check_distinct_stems(images: Sequence[str]) -> None:
    """Outputs are named after the input's file stem (``<stem>_pred.png``): refuse two inputs
    with one stem (``a.png`` and ``sub/a.png``) rather than write one over the other."""
    first: Dict[str, str] = {}
    for image in images:
        stem = Path(image).stem
        if stem in first:
            raise ValueError(f"images {first[stem]!r} and {image!r} would both be written as {stem}_pred.png: "
                             "rename one, or predict them in separate runs with different --out")
        first[stem] = image
