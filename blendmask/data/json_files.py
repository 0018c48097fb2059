"""The one reader of the package's JSON annotation files."""
from __future__ import annotations

import contextlib
import gc
import json
import os
from typing import Any, Dict, Iterator, Optional

__all__ = ["read_json_file", "coco_json_format", "cyclic_gc_paused"]


def read_json_file(path: str | os.PathLike, *, what: str = "annotation file") -> Any:
    """The parsed JSON of ``path``: the one reader of the package's annotation files. A missing
    file is a ``FileNotFoundError`` naming ``what``; broken JSON (line and column), a file that is
    not UTF-8, an integer too long to convert or nesting too deep is a one-line ``ValueError``
    naming the file. A UTF-8 byte-order mark is accepted."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path!r}")
    try:
        with open(path, "r", encoding="utf-8-sig") as f, cyclic_gc_paused():
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: broken JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e})") from e
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise ValueError(f"{path}: not valid JSON: {' '.join(str(e).split())}") from e
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply") from None


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector. The JSON parser builds a tree without reference
    cycles, so the collector has nothing to find in it; running, it rescans the growing tree again
    and again (for a COCO-sized file that nearly doubles the parse time). Objects are still freed
    by reference counting meanwhile; the collector resumes as it was. A caller that also builds
    from the tree and drops it inside the pause spares the collector's scans of it afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def coco_json_format(data: Dict[str, Any]) -> Optional[str]:
    """"panoptic", "instances" or None (no annotation says) from a loaded COCO JSON."""
    annotations = data.get("annotations")
    if isinstance(annotations, list):
        for ann in annotations:
            if isinstance(ann, dict) and "segments_info" in ann:
                return "panoptic"
            if isinstance(ann, dict) and ("segmentation" in ann or "bbox" in ann):
                return "instances"
    categories = data.get("categories")
    if isinstance(categories, list) and categories and all(isinstance(c, dict) and "isthing" in c for c in categories):
        return "panoptic"
    return None
