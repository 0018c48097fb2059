"""Deprecated aliases: names that moved keep working for one version, with a warning naming the new place."""
from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Dict

__all__ = ["warn_renamed", "renamed_attributes"]


def warn_renamed(old: str, new: str) -> None:
    """Warn (``FutureWarning``, shown by default) that ``old`` is deprecated in favour of ``new``."""
    warnings.warn(f"{old} is deprecated and will be removed in the next version; use {new}", FutureWarning,
                  stacklevel=3)


def renamed_attributes(module: str, renamed: Dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving the deprecated names of ``module``: ``renamed`` maps each old
    name to the new ``"package.module.name"``, imported when the old name is first read."""

    def __getattr__(name: str) -> Any:
        if name not in renamed:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_module, _, new_name = renamed[name].rpartition(".")
        warn_renamed(f"{module}.{name}", renamed[name])
        return getattr(importlib.import_module(new_module), new_name)

    return __getattr__
