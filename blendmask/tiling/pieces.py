"""The detections of every tile, in image coordinates, each mask held as a crop around it.

A piece is one detection of one tile: its box, score, label, tile index, and its binary mask as
a ``bool (h, w)`` crop whose top-left pixel is at ``origin (x0, y0)`` of the whole image. A
crop spans the mask's own extent, so no piece holds a tile-sized or image-sized mask.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np

__all__ = ["Pieces"]


@dataclass
class Pieces:
    """Detections of all tiles: ``boxes (n, 4)`` xyxy image pixels, ``scores (n,)``,
    ``labels (n,)``, ``tiles (n,)`` (index of the window), ``origins (n, 2)`` ``(x0, y0)`` and
    ``crops`` (n bool arrays)."""

    boxes: List[np.ndarray] = field(default_factory=list)
    scores: List[float] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    tiles: List[int] = field(default_factory=list)
    origins: List[Tuple[int, int]] = field(default_factory=list)
    crops: List[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)

    def add_tile(self, result: Dict[str, Any], window: Tuple[int, int, int, int], tile_index: int) -> None:
        """Add a tile's detections: ``result`` as the predictor returns with ``mask_format="binary"``
        (``boxes (n, 4)`` in tile pixels, ``masks (n, 1, h, w)`` bool), ``window`` ``(y0, x0, y1, x1)``."""
        y0, x0 = window[0], window[1]
        boxes = result["boxes"].numpy().astype(np.float64)
        masks = result["masks"][:, 0].numpy()
        for i in range(boxes.shape[0]):
            mask = masks[i]
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if rows.size:
                crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].copy()
                top, left = int(rows[0]), int(cols[0])
            else:  # an empty mask: reported as the model gave it, merged with nothing
                crop = np.zeros((0, 0), dtype=bool)
                left, top = (int(v) for v in np.floor(boxes[i, :2]).clip(0))
            self.boxes.append(boxes[i] + np.array([x0, y0, x0, y0], dtype=np.float64))
            self.scores.append(float(result["scores"][i]))
            self.labels.append(int(result["labels"][i]))
            self.tiles.append(tile_index)
            self.origins.append((x0 + left, y0 + top))
            self.crops.append(crop)

    def extents(self) -> np.ndarray:
        """``(n, 4)`` int64 ``x0, y0, x1, y1`` (exclusive) of every crop in the image."""
        if not self.crops:
            return np.zeros((0, 4), dtype=np.int64)
        origins = np.asarray(self.origins, dtype=np.int64)
        sizes = np.asarray([(c.shape[1], c.shape[0]) for c in self.crops], dtype=np.int64)
        return np.concatenate([origins, origins + sizes], axis=1)
