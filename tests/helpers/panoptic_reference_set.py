"""A small deterministic panoptic set (ground truth + predictions) for checking our PQ against panopticapi.

Imported by ``tests/evaluation/test_panoptic_eval_reference.py`` and by the recording harness
``tests/fixtures/panopticapi/record.py`` (which runs the COCO panoptic API on it). numpy only:
``numpy.random.RandomState`` (whose stream numpy keeps fixed) draws everything from ``seed``.

Every image has void pixels, stuff bands, thing segments (some crowd), and predictions that are shifted,
shrunk or grown copies of the ground truth, some with the wrong category, some dropped, plus spurious
segments: on void (ignored), on a crowd region (ignored for its own category, a FP for another), and in the
open (a FP). Category 5 (``"tri"``) and 7 (``"water"``) never occur, so they leave the averages.
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List

import numpy as np

CATEGORIES: List[Dict[str, Any]] = [
    {"id": 1, "name": "disc", "isthing": 1},
    {"id": 2, "name": "box", "isthing": 1},
    {"id": 3, "name": "sky", "isthing": 0},
    {"id": 4, "name": "ground", "isthing": 0},
    {"id": 5, "name": "tri", "isthing": 1},
    {"id": 6, "name": "grass", "isthing": 0},
    {"id": 7, "name": "water", "isthing": 0},
]
_THINGS = (1, 2)
_STUFF = (3, 4, 6)
HEIGHT, WIDTH = 48, 64


def _disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _rect(y0: int, x0: int, h: int, w: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[max(y0, 0):max(y0 + h, 0), max(x0, 0):max(x0 + w, 0)] = True
    return mask


def _thing_mask(rng: np.random.RandomState, category: int) -> np.ndarray:
    cy, cx = rng.randint(6, HEIGHT - 6), rng.randint(6, WIDTH - 6)
    size = rng.randint(4, 10)
    if category == 1:
        return _disc(cy, cx, size)
    return _rect(cy - size, cx - size, 2 * size, rng.randint(size, 3 * size))


def _perturb(rng: np.random.RandomState, mask: np.ndarray) -> np.ndarray:
    """A prediction of ``mask``: shifted by up to 2 px, possibly shrunk or grown by one pixel ring."""
    dy, dx = rng.randint(-2, 3), rng.randint(-2, 3)
    out = np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    kind = rng.randint(3)
    if kind:
        shifted = [np.roll(out, s, axis=a) for a in (0, 1) for s in (-1, 1)]
        out = np.logical_and.reduce([out, *shifted]) if kind == 1 else np.logical_or.reduce([out, *shifted])
    return out


def _paint(ids: np.ndarray, segments: List[Dict[str, Any]], mask: np.ndarray, segment: Dict[str, Any]) -> None:
    if mask.any():
        ids[mask] = segment["id"]
        segments.append(segment)


def _present(ids: np.ndarray, segments: List[Dict[str, Any]], with_area: bool) -> List[Dict[str, Any]]:
    """The segments still visible in ``ids`` (later paint covers earlier), with ``area`` if asked."""
    labels, counts = np.unique(ids, return_counts=True)
    area = dict(zip(labels.tolist(), counts.tolist()))
    out = []
    for seg in segments:
        if seg["id"] in area:
            out.append({**seg, "area": int(area[seg["id"]])} if with_area else dict(seg))
    return out


def _image(rng: np.random.RandomState, index: int) -> Dict[str, Any]:
    gt = np.zeros((HEIGHT, WIDTH), np.int64)
    pred = np.zeros((HEIGHT, WIDTH), np.int64)
    gt_segments: List[Dict[str, Any]] = []
    pred_segments: List[Dict[str, Any]] = []
    next_gt, next_pred = 1, 60000 + 40093 * index  # predicted ids use all three bytes of the RGB code

    def new_pred(category: int) -> Dict[str, Any]:
        nonlocal next_pred
        next_pred += 7 + rng.randint(50)
        return {"id": next_pred, "category_id": category}

    # stuff: horizontal bands with a ragged border, a void strip between two of them
    borders = sorted(rng.randint(8, HEIGHT - 8, size=2).tolist())
    bands = [(0, borders[0]), (borders[0] + 2, borders[1]), (borders[1], HEIGHT)]
    stuff = [int(c) for c in rng.permutation(_STUFF)]
    for (y0, y1), category in zip(bands, stuff):
        mask = _rect(y0, 0, y1 - y0, WIDTH)
        _paint(gt, gt_segments, mask, {"id": next_gt, "category_id": category, "iscrowd": 0})
        next_gt += 1
        roll = rng.randint(-4, 5)
        if rng.rand() < 0.85:  # a stuff prediction with a shifted border, sometimes the wrong stuff class
            wrong = rng.rand() < 0.15
            _paint(pred, pred_segments, np.roll(mask, roll, axis=0),
                   new_pred(int(rng.choice([c for c in _STUFF if c != category])) if wrong else category))
    gt[:, :2] = 0  # a void column on the left in every image

    # things: 3 to 6 segments, one of them crowd in half the images
    for t in range(rng.randint(3, 7)):
        category = int(rng.choice(_THINGS))
        mask = _thing_mask(rng, category)
        crowd = int(t == 0 and index % 2 == 0)
        _paint(gt, gt_segments, mask, {"id": next_gt, "category_id": category, "iscrowd": crowd})
        next_gt += 1
        if crowd:
            # a prediction lying on the crowd region: ignored for its category, a FP for the other
            own = category if rng.rand() < 0.5 else int([c for c in _THINGS if c != category][0])
            _paint(pred, pred_segments, _perturb(rng, mask) & mask, new_pred(own))
            continue
        draw = rng.rand()
        if draw < 0.15:
            continue  # missed: a FN
        wrong = draw > 0.9
        _paint(pred, pred_segments, _perturb(rng, mask),
               new_pred(int([c for c in _THINGS if c != category][0]) if wrong else category))

    # spurious predictions: one on the void column (ignored), one in the open (FP), sometimes a tiny one
    _paint(pred, pred_segments, _rect(rng.randint(0, HEIGHT - 10), 0, 10, 3), new_pred(int(rng.choice(_THINGS))))
    _paint(pred, pred_segments, _thing_mask(rng, 2), new_pred(int(rng.choice(_THINGS))))
    if rng.rand() < 0.5:
        _paint(pred, pred_segments, _rect(rng.randint(HEIGHT), rng.randint(WIDTH), 1, 2), new_pred(1))

    return {
        "image_id": 100 + index,
        "file_name": f"{100 + index:012d}.png",
        "height": HEIGHT,
        "width": WIDTH,
        "gt_ids": gt,
        "gt_segments": _present(gt, gt_segments, with_area=True),
        "pred_ids": pred,
        "pred_segments": _present(pred, pred_segments, with_area=False),
    }


def make_reference_set(seed: int = 0, num_images: int = 8) -> List[Dict[str, Any]]:
    """``num_images`` records ``{image_id, file_name, height, width, gt_ids (H, W) int64, gt_segments,
    pred_ids (H, W) int64, pred_segments}``; segments are ``{"id", "category_id"[, "iscrowd", "area"]}``."""
    rng = np.random.RandomState(seed)
    return [_image(rng, index) for index in range(num_images)]


def fingerprint(images: List[Dict[str, Any]]) -> str:
    """SHA-256 of the maps and segment lists: the recorded numbers belong to exactly this set."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(image["gt_ids"].astype("<i8").tobytes())
        digest.update(image["pred_ids"].astype("<i8").tobytes())
        digest.update(repr((image["gt_segments"], image["pred_segments"])).encode())
    return digest.hexdigest()
