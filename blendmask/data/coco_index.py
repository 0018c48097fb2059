"""The one reader of COCO JSON files: each file parsed once per process.

Instance files: :func:`load_coco_records` parses the JSON, validates and flattens it into
:class:`CocoRecords` (:func:`blendmask.data.coco_build.build_records`) and releases the parsed JSON
before returning. Records are cached on disk between runs (:mod:`blendmask.data.coco_cache`).

Panoptic files: :func:`load_panoptic_json` returns the parsed JSON (the panoptic dataset checks it
and keeps its records).

What the last files read gave (records, or a panoptic file's parsed JSON) is kept for the process,
keyed by path, size, modification time and content hash, so that the format check
(:func:`json_file_format`), the image-directory search (:func:`blendmask.data.resolve_split`) and
the dataset share one parse of a ``--data`` JSON.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple

from .coco_build import build_records
from .coco_cache import CacheSlot, FileKey
from .coco_records import CocoRecords
from .json_files import coco_json_format, cyclic_gc_paused, read_json_file

__all__ = ["load_coco_records", "load_panoptic_json", "json_file_format", "PROGRESS_MIN_BYTES"]

logger = logging.getLogger(__name__)

#: Files at least this large show a progress bar while they are checked.
PROGRESS_MIN_BYTES = 64 << 20
_KEPT_FILES = 2  # a train and a val file
_recent: "OrderedDict[FileKey, CocoRecords]" = OrderedDict()
_recent_panoptic: "OrderedDict[FileKey, Dict[str, Any]]" = OrderedDict()
#: A file changed less than this long before it was hashed may change again without its
#: modification time moving (timestamps are as coarse as the kernel's clock tick): not memoised.
_SETTLED_NS = 2_000_000_000
_digests: Dict[Tuple[str, int, int, int, int, int], str] = {}  # (real path, device, inode, size, mtime, ctime) -> SHA-256


def _file_key(path: str) -> FileKey:
    """``(real path, size, modification time ns, SHA-256 of the content)`` of ``path``.

    The content is hashed once per process while the file's identity, size and times stay the
    same (the format check, the image-directory search and the dataset all ask); a file modified
    within :data:`_SETTLED_NS` of its hashing is hashed again at every call."""
    real = os.path.realpath(path)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        stamp = (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        digest = _digests.get(stamp)
        if digest is None:
            hashed_at = time.time_ns()
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            if hashed_at - max(st.st_mtime_ns, st.st_ctime_ns) >= _SETTLED_NS:
                while len(_digests) >= _KEPT_FILES:
                    del _digests[next(iter(_digests))]  # the oldest
                _digests[stamp] = digest
    return real, st.st_size, st.st_mtime_ns, digest


def _recall(recent: OrderedDict, key: FileKey):
    """What ``recent`` keeps for ``key`` (now the most recent), or None."""
    if key not in recent:
        return None
    recent.move_to_end(key)
    return recent[key]


def _remember(recent: OrderedDict, key: FileKey, value) -> None:
    recent[key] = value
    recent.move_to_end(key)
    while len(recent) > _KEPT_FILES:
        recent.popitem(last=False)


def _read_json_object(path: str) -> Dict[str, Any]:
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    return data


def _build(path: str, data, key: FileKey, progress: Optional[bool], slot: CacheSlot) -> CocoRecords:
    show = key[1] >= PROGRESS_MIN_BYTES if progress is None else progress
    records = build_records(data, path, progress=show)
    del data  # the caller's reference is the last one
    slot.write(records)
    _remember(_recent, key, records)
    return records


def _cached(key: FileKey, slot: CacheSlot) -> Optional[CocoRecords]:
    records = slot.read()
    if records is not None:
        _remember(_recent, key, records)
    return records


def load_coco_records(ann_file: str | os.PathLike, *, progress: Optional[bool] = None) -> CocoRecords:
    """The validated records of the COCO instance file ``ann_file``: from this process's recent
    files, else from the cache (:mod:`blendmask.data.coco_cache`), else parsed, checked and cached.

    Raises ``FileNotFoundError`` if the file is missing and a one-line ``ValueError`` naming the
    file (and line/column, or the record) if it is not valid JSON or breaks a rule of
    :func:`~blendmask.data.coco_checks.check_coco`. ``progress``: show a bar while checking
    (default: for files of at least :data:`PROGRESS_MIN_BYTES`)."""
    ann_file = os.fspath(ann_file)
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file!r}")
    key = _file_key(ann_file)
    records = _recall(_recent, key)
    if records is not None:
        return records
    with CacheSlot(key) as slot:
        records = _cached(key, slot)
        if records is not None:
            return records
        with cyclic_gc_paused():  # the parsed tree is built, flattened and dropped unscanned
            return _build(ann_file, read_json_file(ann_file, what="COCO annotation file"), key, progress, slot)


def load_panoptic_json(path: str | os.PathLike) -> Dict[str, Any]:
    """The parsed COCO panoptic JSON ``path`` (a dict): from this process's recent files (e.g. the
    parse of :func:`json_file_format`), else read, and kept if its records are panoptic. The dict
    is shared by every caller until the file changes: read it, never modify it. Raises as
    :func:`read_json_file`, and a one-line ``ValueError`` if the top level is not a JSON object."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO panoptic file not found: {path!r}")
    key = _file_key(path)
    data = _recall(_recent_panoptic, key)
    if data is not None:
        return data
    data = _read_json_object(path)
    if coco_json_format(data) == "panoptic":
        _remember(_recent_panoptic, key, data)
    return data


def json_file_format(path: str | os.PathLike) -> str:
    """``"panoptic"`` or ``"instances"`` for a COCO JSON file, by its records (``segments_info``
    vs ``segmentation``/``bbox``; a file without annotations by its categories' ``isthing``;
    ``"instances"`` when nothing says). A cached instance file is not parsed; a valid instance file
    is flattened and cached on the way (:func:`load_coco_records` then returns those records
    without reading the file again), a panoptic file's parse is kept for
    :func:`load_panoptic_json`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--data {path!r} is neither a directory nor a COCO JSON file")
    key = _file_key(path)
    if key in _recent:
        return "instances"
    if key in _recent_panoptic:
        return "panoptic"
    with CacheSlot(key) as slot:
        if _cached(key, slot) is not None:
            return "instances"
        with cyclic_gc_paused():  # the parsed tree is built, flattened and dropped unscanned
            data = _read_json_object(path)
            found = coco_json_format(data) or "instances"
            if found == "panoptic":
                _remember(_recent_panoptic, key, data)
            else:
                try:
                    _build(path, data, key, None, slot)
                except ValueError:
                    pass  # the format is known; the dataset that reads the file reports what is wrong
            del data
        return found
