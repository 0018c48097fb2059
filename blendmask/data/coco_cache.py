"""The on-disk cache of validated COCO records: a later start reads the flat arrays instead of
parsing and checking the JSON again.

- **Where**: ``$BLENDMASK_CACHE`` if set (``off`` disables the cache), else
  ``$XDG_CACHE_HOME/blendmask``, else ``~/.cache/blendmask``; never beside the data. One file per
  annotation file, ``coco-records-<hash of its real path>.npz`` (numpy's uncompressed zip of the
  :class:`~blendmask.data.coco_records.CocoRecords` arrays plus the key).
- **Key**: the annotation file's real path, size, modification time and SHA-256 of its content,
  and the cache format version. Only a file whose key matches is used.
- **Never trusted blindly**: a stale (other key), truncated, foreign or corrupt cache file (the zip
  CRCs, every field's dtype and shape, every offset) is rebuilt, with one :class:`CacheWarning`.
- **Atomic**: written to a temporary file in the cache directory, then renamed over the old one.
- **Concurrent starts** (the ranks of a DDP job, two jobs on one data set): the first process takes
  an exclusive lock on ``<cache file>.lock`` while it reads or builds; the others wait on the lock
  and then read what it wrote.
- **An unwritable cache directory** is a :class:`CacheWarning`, and the records are built in memory.
- Files smaller than :data:`CACHE_MIN_BYTES` are not cached (they parse faster than a cache pays).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from .coco_records import RECORD_FIELDS, CocoRecords

__all__ = ["CacheWarning", "CacheSlot", "cache_dir", "CACHE_MIN_BYTES", "CACHE_VERSION"]

#: Annotation files below this size are not cached.
CACHE_MIN_BYTES = 1 << 20
#: Bumped whenever the records' fields or their meaning change.
CACHE_VERSION = 1
FileKey = Tuple[str, int, int, str]  # real path, size, mtime ns, SHA-256


class CacheWarning(UserWarning):
    """The records cache could not be used (it is rebuilt or skipped; nothing fails)."""


def cache_dir() -> Optional[Path]:
    """The cache directory (module doc), or None when ``BLENDMASK_CACHE=off``."""
    chosen = os.environ.get("BLENDMASK_CACHE")
    if chosen:
        return None if chosen.lower() == "off" else Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "blendmask"


def _key_text(key: FileKey) -> str:
    path, size, mtime_ns, digest = key
    return json.dumps({"version": CACHE_VERSION, "path": path, "size": size, "mtime_ns": mtime_ns, "sha256": digest},
                      sort_keys=True)


class CacheSlot:
    """The cache entry of one annotation file, locked while in use (``with CacheSlot(...) as slot``).

    :meth:`read` returns the cached records when they are there and valid (else None, with one
    warning when a file was there but unusable); :meth:`write` stores records atomically.
    """

    def __init__(self, key: FileKey) -> None:
        self.key = key
        directory = cache_dir() if key[1] >= CACHE_MIN_BYTES else None
        name = hashlib.sha256(key[0].encode("utf-8", "surrogatepass")).hexdigest()[:24]
        self.path = None if directory is None else directory / f"coco-records-{name}.npz"
        self._lock_fd: Optional[int] = None
        self._warned = False

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"records cache {self.path}: {message}", CacheWarning, stacklevel=4)

    def __enter__(self) -> "CacheSlot":
        if self.path is None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except OSError as e:
            self._close()
            self._warn(f"cannot lock ({e.strerror or e}); reading the annotation file without a cache lock")
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def _close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def read(self) -> Optional[CocoRecords]:
        """The cached records of the key, or None (missing, or unusable: one warning)."""
        if self.path is None or not self.path.exists():
            return None
        try:
            with open(self.path, "rb") as f, np.load(f, allow_pickle=False) as saved:
                if "key" not in saved.files:
                    raise ValueError("not a records cache file")
                found = saved["key"].tobytes().decode("utf-8", "replace")
                if found != _key_text(self.key):
                    self._warn("made for another version of the annotation file; rebuilding it")
                    return None
                return CocoRecords.from_arrays({name: saved[name] for name in RECORD_FIELDS if name in saved.files})
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
            self._warn(f"unreadable ({' '.join(str(e).split()) or type(e).__name__}); rebuilding it")
            return None

    def write(self, records: CocoRecords) -> None:
        """Store ``records`` atomically (a warning, not a failure, when the directory is not writable)."""
        if self.path is None:
            return
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".coco-records-", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                key = np.frombuffer(_key_text(self.key).encode("utf-8"), dtype=np.uint8)
                np.savez(f, key=key, **records.arrays())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
        except OSError as e:
            self._warn(f"cannot be written ({e.strerror or e}); the records are kept in memory only")
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
