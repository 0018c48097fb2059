"""Helpers for the data / evaluation / visualisation tests: tiny hand-written COCO files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def write_png(path: Path, height: int, width: int, *, seed: int = 0, mode: str = "RGB") -> np.ndarray:
    """Write a random image; return its pixels as written ((H, W, 3) or (H, W) uint8)."""
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)
    return pixels


def rle_of(mask: np.ndarray, *, compressed: bool = True) -> Dict[str, Any]:
    """COCO RLE of an (H, W) binary mask: compressed (string counts) or uncompressed (list counts)."""
    h, w = mask.shape
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).flatten(order="F")  # column-major, runs start with zeros
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": [h, w], "counts": counts}


def box_of(mask: np.ndarray) -> List[float]:
    """Tight COCO [x, y, w, h] box of a binary mask (pixel edges)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def write_coco(
    root: Path,
    images: Sequence[Dict[str, Any]],
    annotations: Sequence[Dict[str, Any]],
    categories: Optional[Sequence[Dict[str, Any]]] = None,
    *,
    name: str = "ann.json",
    write_images: bool = True,
) -> Path:
    """Write ``root/name`` and (unless told not to) a random PNG per image record into ``root/images``."""
    if categories is None:
        categories = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    if write_images:
        for i, rec in enumerate(images):
            write_png(root / "images" / rec["file_name"], rec["height"], rec["width"], seed=i)
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text(json.dumps({"images": list(images), "annotations": list(annotations), "categories": list(categories)}))
    return path
