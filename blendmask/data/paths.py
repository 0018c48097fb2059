"""The one rule for the file names a data set's records give: they stay inside their directory.

An annotation file names its images (and panoptic PNGs) relative to a directory. A name that
leaves it (``../../x.png``, an absolute path) would make training or evaluation read files
outside the data set, and whether the error says "not found" or "cannot read" would tell which
files exist. :func:`contained_path` refuses such names, by their text alone (before touching the
file system, so the message is the same whether the file exists or not), unless the caller
allows them. Symbolic links inside the directory are followed: where they point is the data set
owner's choice.
"""
from __future__ import annotations

import os
from typing import FrozenSet

__all__ = ["PathOutsideDataError", "contained_path", "files_in", "ALLOW_OUTSIDE_OPTION"]

#: The command-line option that allows names outside the data set's directories.
ALLOW_OUTSIDE_OPTION = "--allow-outside-data"


class PathOutsideDataError(ValueError):
    """A record's file name resolves outside the directory it is relative to."""


def contained_path(directory: str, name: str, *, where: str, what: str = "image directory",
                   allow_outside: bool = False) -> str:
    """``directory/name``, refused if ``name`` leads outside ``directory``.

    Args:
        directory: the directory the name is relative to.
        name: the record's ``file_name``.
        where: how the message names the record, e.g. ``"ann.json: image id 3"``.
        what: how the message names ``directory``.
        allow_outside: return the joined path whatever it is.
    Raises:
        PathOutsideDataError: ``name`` is absolute or its ``..`` parts climb out of ``directory``.
    """
    path = os.path.join(directory, name)
    if allow_outside:
        return path
    root = os.path.normpath(directory)
    resolved = os.path.normpath(path)
    if os.path.isabs(name) or not (resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep)):
        raise PathOutsideDataError(f"{where}: file_name {name!r} leads outside the {what} {directory!r}; "
                                   f"pass {ALLOW_OUTSIDE_OPTION} to read files outside the data set")
    return path


def files_in(directory: str) -> FrozenSet[str]:
    """The names of the regular files directly in ``directory`` (symbolic links followed, as
    ``os.path.isfile`` does); empty if it cannot be listed.

    One listing instead of a ``stat`` per record: ``name in files_in(d)`` implies
    ``os.path.isfile(os.path.join(d, name))``. Each such name is a single path component, so
    :func:`contained_path` gives all of them the same answer (it accepts every one or none).
    """
    found = set()
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if entry.is_file():
                        found.add(entry.name)
                except OSError:
                    pass  # not listed: the caller's own check of that name decides
    except (OSError, ValueError):
        return frozenset()
    return frozenset(found)
