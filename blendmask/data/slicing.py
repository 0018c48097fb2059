"""``blendmask slice-data``: a COCO data set of large images cut into tiles for training at native
resolution (as SAHI's ``slice_coco``).

Every image is cut by the windows of :func:`blendmask.tiling.tile_windows` (equal tiles,
``overlap`` shared). Each annotation is cut at the tile's borders and re-encoded as a compressed
RLE of the tile; a cut piece smaller than ``min_area_fraction`` of its whole mask (a sliver) is
dropped, and so is a piece of no pixels. Tiles without annotations are kept at ``empty_ratio``
times the number of tiles with annotations (chosen at random with ``seed``; 0 drops them all).
Tiles keep the image's own pixels and dtype (8-bit and 16-bit as PNG, anything else as TIFF), so
the intensity policy applies to them when they are read; ``"percentile"`` then scales each tile
by its own percentiles, and a fixed ``"window"`` keeps one scale for the whole image.

The output, ``OUT/annotations/instances_{split}.json`` and ``OUT/{split}/*``, is a data directory
for ``--data``. Every image record also names its source (``source_file``, ``source_image_id``)
and its window (``window``: ``[y0, x0, y1, x1]``), so results on the tiles map back. The command
writes only into a new or empty ``OUT`` and refuses anything else.

Each annotation is decoded to a mask of its whole image, one at a time.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ..models.mask_ops import encode_region_rle
from ..tiling.grid import tile_windows
from .coco import load_coco_json
from .coco_checks import segmentation_to_rle
from .images import ImageReading, decode_image

__all__ = ["slice_dataset"]


def _cut(mask: np.ndarray, window) -> Tuple[int, np.ndarray, Tuple[int, int]]:
    """``(area, crop, (x0, y0) in the tile)`` of ``mask`` inside ``window``."""
    y0, x0, y1, x1 = window
    part = mask[y0:y1, x0:x1]
    rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
    if rows.size == 0:
        return 0, part[:0, :0], (0, 0)
    crop = part[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return int(np.count_nonzero(crop)), crop, (int(cols[0]), int(rows[0]))


def _tile_annotations(coco, info: Dict[str, Any], windows, min_area_fraction: float) -> List[List[Dict[str, Any]]]:
    """The cut annotations of each window of one image (without ids)."""
    h, w = info["height"], info["width"]
    per_window: List[List[Dict[str, Any]]] = [[] for _ in windows]
    for ann in coco.imgToAnns.get(info["id"], []):
        rle = segmentation_to_rle(ann["segmentation"], h, w)
        mask = mask_utils.decode(rle).astype(bool)
        whole = int(np.count_nonzero(mask))
        for k, window in enumerate(windows):
            area, crop, (cx, cy) = _cut(mask, window)
            if area == 0 or area < min_area_fraction * whole:
                continue
            tile_h, tile_w = window[2] - window[0], window[3] - window[1]
            per_window[k].append({
                "category_id": ann["category_id"], "iscrowd": int(ann.get("iscrowd", 0)), "area": float(area),
                "bbox": [float(cx), float(cy), float(crop.shape[1]), float(crop.shape[0])],
                "segmentation": encode_region_rle(crop, cy, cx, tile_h, tile_w),
                "source_annotation_id": ann["id"]})
        del mask
    return per_window


def _write_tile(pixels: np.ndarray, path_stem: Path) -> str:
    """Write a tile in its own dtype; returns the file name."""
    from PIL import Image

    gray = pixels[:, :, 0] if pixels.shape[2] == 1 else None
    if pixels.dtype == np.uint8 or (pixels.dtype == np.uint16 and gray is not None):
        name = path_stem.name + ".png"
        Image.fromarray(gray if gray is not None else pixels).save(path_stem.with_suffix(".png"))
        return name
    import tifffile

    name = path_stem.name + ".tif"
    tifffile.imwrite(path_stem.with_suffix(".tif"), gray if gray is not None else pixels,
                     photometric="minisblack" if gray is not None else "rgb")
    return name


def slice_dataset(ann_file: str | os.PathLike, image_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  tile: int, overlap: float = 0.2, split: str = "train", min_area_fraction: float = 0.1,
                  empty_ratio: float = 0.0, seed: int = 0, reading: ImageReading = ImageReading(),
                  progress: bool = False) -> Path:
    """Cut a COCO data set into tiles (rules in the module docstring); returns ``out_dir``.

    Raises ``ValueError`` for bad options and ``FileExistsError`` for an ``out_dir`` that holds
    anything."""
    from ..tiling.grid import check_tile_options

    check_tile_options(tile, overlap, largest_stride=1)
    if not 0.0 <= min_area_fraction < 1.0:
        raise ValueError(f"min_area_fraction must be in [0, 1), got {min_area_fraction}")
    if not empty_ratio >= 0.0:
        raise ValueError(f"empty_ratio must be >= 0, got {empty_ratio}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory: slice-data writes only into a new "
                              "or empty directory")
    coco = load_coco_json(ann_file)
    plans = []  # (image record, windows, cut annotations per window)
    for info in tqdm(coco.dataset["images"], desc="slice-data: cutting annotations", disable=not progress):
        windows = tile_windows(info["height"], info["width"], tile=tile, overlap=overlap)
        plans.append((info, windows, _tile_annotations(coco, info, windows, min_area_fraction)))
    with_annotations = [(i, k) for i, (_, windows, cut) in enumerate(plans) for k in range(len(windows)) if cut[k]]
    empty = [(i, k) for i, (_, windows, cut) in enumerate(plans) for k in range(len(windows)) if not cut[k]]
    keep_empty = int(round(empty_ratio * len(with_annotations)))
    kept = set(with_annotations) | set(random.Random(seed).sample(empty, min(keep_empty, len(empty))))
    (out / "annotations").mkdir(parents=True)
    (out / split).mkdir()
    images, annotations = [], []
    for i, (info, windows, cut) in enumerate(tqdm(plans, desc="slice-data: writing tiles", disable=not progress)):
        chosen = [k for k in range(len(windows)) if (i, k) in kept]
        if not chosen:
            continue
        decoded = decode_image(os.path.join(os.fspath(image_dir), info["file_name"]), reading=reading,
                               expected_size=(info["width"], info["height"]))
        stem = Path(info["file_name"]).stem
        for k in chosen:
            y0, x0, y1, x1 = windows[k]
            image_id = len(images) + 1
            name = _write_tile(decoded.pixels[y0:y1, x0:x1], out / split / f"{stem}_{y0}_{x0}")
            images.append({"id": image_id, "file_name": name, "height": y1 - y0, "width": x1 - x0,
                           "source_file": info["file_name"], "source_image_id": info["id"], "window": [y0, x0, y1, x1]})
            for ann in cut[k]:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    categories = coco.dataset["categories"]
    (out / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return out
