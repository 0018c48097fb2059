"""Returning the freed heap to the operating system during a long tiled prediction.

Each batch of tiles allocates large short-lived buffers (float tiles, activations, tile-sized
masks) between the small long-lived ones that tiling keeps (every detection's mask crop). glibc's
allocator serves the large buffers from its heap once its dynamic mmap threshold has grown, and
the small survivors scattered between them keep the freed space from being given back: without a
release, the resident memory grows with the number of tiles far faster than the detections
themselves need (figures in docs/tutorials/large-images.md, section 5). ``malloc_trim(0)`` gives
the freed pages inside the heap back (glibc >= 2.8 releases whole free pages anywhere in the heap,
not only at its top).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release_free_heap"]


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Give the allocator's free heap pages back to the operating system; returns whether memory
    was released (False also where the C library has no ``malloc_trim``)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
