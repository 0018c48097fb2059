"""The merge rule itself: class-aware, by mask intersection over the smaller, never within a tile."""
from __future__ import annotations

import numpy as np
import pytest

from blendmask.tiling import Pieces, merge_pieces


def _pieces(specs):
    """``specs``: ``(label, tile, score, (x0, y0), crop)``."""
    pieces = Pieces()
    for label, tile, score, origin, crop in specs:
        pieces.boxes.append(np.array([origin[0], origin[1], origin[0] + crop.shape[1], origin[1] + crop.shape[0]], float))
        pieces.labels.append(label)
        pieces.tiles.append(tile)
        pieces.scores.append(score)
        pieces.origins.append(origin)
        pieces.crops.append(crop)
    return pieces


SQUARE = np.ones((10, 10), bool)


def test_same_masks_merge_only_within_one_label_and_across_tiles():
    assert len(merge_pieces(_pieces([(0, 0, 0.9, (5, 5), SQUARE), (0, 1, 0.8, (5, 5), SQUARE)]), threshold=0.3, cell=16)) == 1
    assert len(merge_pieces(_pieces([(0, 0, 0.9, (5, 5), SQUARE), (1, 1, 0.8, (5, 5), SQUARE)]), threshold=0.3, cell=16)) == 2
    assert len(merge_pieces(_pieces([(0, 0, 0.9, (5, 5), SQUARE), (0, 0, 0.8, (5, 5), SQUARE)]), threshold=0.3, cell=16)) == 2


def test_the_threshold_is_on_intersection_over_the_smaller_mask():
    small = np.ones((4, 4), bool)  # 16 px, 8 of them inside SQUARE
    merged = merge_pieces(_pieces([(0, 0, 0.9, (0, 0), SQUARE), (0, 1, 0.8, (8, 2), small)]), threshold=0.5, cell=16)
    assert len(merged) == 1 and merged[0].origin == (0, 0) and merged[0].crop.shape == (10, 12)
    assert np.count_nonzero(merged[0].crop) == 100 + 8 and merged[0].score == 0.9
    assert merged[0].box.tolist() == [0.0, 0.0, 12.0, 10.0]
    assert len(merge_pieces(_pieces([(0, 0, 0.9, (0, 0), SQUARE), (0, 1, 0.8, (8, 2), small)]), threshold=0.51, cell=16)) == 2


def test_bad_threshold_is_refused():
    with pytest.raises(ValueError, match=r"merge threshold.*\(0, 1\]"):
        merge_pieces(_pieces([]), threshold=0.0, cell=16)
