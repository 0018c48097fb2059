"""Merging the pieces of the tiles into instances of the whole image.

Greedy non-maximum merging (SAHI's NMM), class-aware, matched on the **masks**' intersection over
the smaller one (IoS), never on boxes alone: pieces are taken by decreasing score; each unmerged
piece starts an instance, which then absorbs every unmerged piece of the same label, from a tile
the instance has no piece of yet, whose mask overlaps the instance's mask (the union of its
pieces so far) by ``IoS >= threshold``, until none is left. So an object cut by seams comes out
once, as the union of its pieces; an object wholly inside an overlap, seen whole by two to four
tiles, comes out once; two touching objects of different labels, or two of one label whose masks
barely touch, stay apart; and two detections of one tile are never merged (the model's own NMS
has judged them).

Candidate pairs come from a grid hash of the crops' extents, so the cost grows with the number of
pieces that meet, not with its square.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Set, Tuple

import numpy as np

from .pieces import Pieces

__all__ = ["MergedInstance", "merge_pieces"]


@dataclass
class MergedInstance:
    """One instance of the whole image: ``box`` xyxy (the union of its pieces' boxes), ``score``
    (the highest), ``label``, ``origin (x0, y0)`` and ``crop`` (the union of the pieces' masks),
    ``pieces`` (their indices)."""

    box: np.ndarray
    score: float
    label: int
    origin: Tuple[int, int]
    crop: np.ndarray
    pieces: List[int]


def _neighbours(extents: np.ndarray, labels: np.ndarray, tiles: np.ndarray, cell: int) -> List[Set[int]]:
    """For every piece, the pieces of the same label from other tiles whose extents intersect it."""
    buckets: Dict[Tuple[int, int], List[int]] = defaultdict(list)
    for i, (x0, y0, x1, y1) in enumerate(extents.tolist()):
        for cy in range(y0 // cell, (y1 - 1) // cell + 1):
            for cx in range(x0 // cell, (x1 - 1) // cell + 1):
                buckets[(cy, cx)].append(i)
    neighbours: List[Set[int]] = [set() for _ in range(len(extents))]
    for members in buckets.values():
        if len(members) < 2:
            continue
        m = np.asarray(members)
        e, lab, til = extents[m], labels[m], tiles[m]
        meets = ((e[:, None, 0] < e[None, :, 2]) & (e[None, :, 0] < e[:, None, 2])
                 & (e[:, None, 1] < e[None, :, 3]) & (e[None, :, 1] < e[:, None, 3])
                 & (lab[:, None] == lab[None, :]) & (til[:, None] != til[None, :]))
        for a, b in zip(*np.nonzero(np.triu(meets, 1))):
            neighbours[m[a]].add(int(m[b]))
            neighbours[m[b]].add(int(m[a]))
    return neighbours


def _intersection(origin_a, crop_a, origin_b, crop_b) -> int:
    """Pixels set in both crops."""
    x0, y0 = max(origin_a[0], origin_b[0]), max(origin_a[1], origin_b[1])
    x1 = min(origin_a[0] + crop_a.shape[1], origin_b[0] + crop_b.shape[1])
    y1 = min(origin_a[1] + crop_a.shape[0], origin_b[1] + crop_b.shape[0])
    if x1 <= x0 or y1 <= y0:
        return 0
    a = crop_a[y0 - origin_a[1]:y1 - origin_a[1], x0 - origin_a[0]:x1 - origin_a[0]]
    b = crop_b[y0 - origin_b[1]:y1 - origin_b[1], x0 - origin_b[0]:x1 - origin_b[0]]
    return int(np.count_nonzero(a & b))


def _union(origin_a, crop_a, origin_b, crop_b) -> Tuple[Tuple[int, int], np.ndarray]:
    x0, y0 = min(origin_a[0], origin_b[0]), min(origin_a[1], origin_b[1])
    x1 = max(origin_a[0] + crop_a.shape[1], origin_b[0] + crop_b.shape[1])
    y1 = max(origin_a[1] + crop_a.shape[0], origin_b[1] + crop_b.shape[0])
    out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for (ox, oy), crop in ((origin_a, crop_a), (origin_b, crop_b)):
        out[oy - y0:oy - y0 + crop.shape[0], ox - x0:ox - x0 + crop.shape[1]] |= crop
    return (x0, y0), out


def merge_pieces(pieces: Pieces, *, threshold: float, cell: int) -> List[MergedInstance]:
    """The instances of the whole image, by decreasing score (rules in the module docstring).

    Args:
        pieces: the detections of all tiles.
        threshold: the mask IoS at which a piece joins an instance, in ``(0, 1]``.
        cell: side of the grid hash's cells (the tile size is a good one).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"merge threshold (mask intersection over smaller) must be in (0, 1], got {threshold}")
    n = len(pieces)
    scores = np.asarray(pieces.scores, dtype=np.float64)
    labels = np.asarray(pieces.labels, dtype=np.int64)
    tiles = np.asarray(pieces.tiles, dtype=np.int64)
    areas = [int(np.count_nonzero(c)) for c in pieces.crops]
    neighbours = _neighbours(pieces.extents(), labels, tiles, max(1, cell))
    taken = np.zeros(n, dtype=bool)
    instances: List[MergedInstance] = []
    for seed in np.argsort(-scores, kind="stable").tolist():
        if taken[seed]:
            continue
        taken[seed] = True
        members, member_tiles = [seed], {int(tiles[seed])}
        origin, crop, area = pieces.origins[seed], pieces.crops[seed], areas[seed]
        grown = True
        while grown:
            grown = False
            candidates = {c for m in members for c in neighbours[m] if not taken[c] and int(tiles[c]) not in member_tiles}
            for c in sorted(candidates, key=lambda j: (-scores[j], j)):
                if int(tiles[c]) in member_tiles:
                    continue
                shared = _intersection(pieces.origins[c], pieces.crops[c], origin, crop)
                if shared and shared >= threshold * min(areas[c], area):
                    taken[c] = True
                    members.append(c)
                    member_tiles.add(int(tiles[c]))
                    origin, crop = _union(origin, crop, pieces.origins[c], pieces.crops[c])
                    area = int(np.count_nonzero(crop))
                    grown = True
        boxes = np.stack([pieces.boxes[m] for m in members])
        box = np.concatenate([boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)])
        instances.append(MergedInstance(box=box, score=float(scores[seed]), label=int(labels[seed]),
                                        origin=origin, crop=crop, pieces=members))
    return instances
