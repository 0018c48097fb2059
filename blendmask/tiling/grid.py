"""Where the tiles of a large image lie: a grid of equal windows at the image's native resolution.

Windows are ``tile x tile`` (each side capped at the image's), ``round(tile * overlap)`` pixels
apart less than a tile; the last window of a row or column is moved back inside the image (as
SAHI does), so every window has the same size and a batch of tiles needs no padding. A tile at
least as large as the image is one window: the whole image.
"""
from __future__ import annotations

import math
from typing import List, Tuple

__all__ = ["Window", "tile_windows", "check_tile_options", "auto_tile_size"]

#: ``(y0, x0, y1, x1)``: rows ``y0:y1`` and columns ``x0:x1`` of the image.
Window = Tuple[int, int, int, int]


def check_tile_options(tile: int, overlap: float, *, largest_stride: int) -> None:
    """Refuse, in one line naming the option, a tile smaller than the model's largest stride
    (it would have no cell on the coarsest feature map) or an overlap outside ``[0, 1)``."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < largest_stride:
        raise ValueError(f"tile must be an integer >= the model's largest stride ({largest_stride} px), got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be a fraction in [0, 1), got {overlap!r}")


def auto_tile_size(min_size_test: int, max_size_test: int) -> int:
    """The tile of ``tile="auto"``: the model's test size, so that each tile runs at its native
    resolution (the test-time resize leaves a ``min_size_test`` square as it is)."""
    return int(min(min_size_test, max_size_test))


def _starts(size: int, tile: int, step: int) -> List[int]:
    if size <= tile:
        return [0]
    count = math.ceil((size - tile) / step) + 1
    return sorted({min(i * step, size - tile) for i in range(count)})


def tile_windows(height: int, width: int, *, tile: int, overlap: float) -> List[Window]:
    """The windows covering a ``height x width`` image, row by row."""
    tile_h, tile_w = min(tile, height), min(tile, width)
    step = max(1, tile - int(round(tile * overlap)))
    return [(y0, x0, y0 + tile_h, x0 + tile_w)
            for y0 in _starts(height, tile_h, step) for x0 in _starts(width, tile_w, step)]
