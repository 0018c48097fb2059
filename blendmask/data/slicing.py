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

Each annotation is made a mask over its own box only (polygons rasterised in the box's
coordinates, RLEs decoded from their runs over their extent) and cut by the windows that meet the
box, so memory and time per annotation follow its size, not the image's.
"""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ..models.mask_ops import decode_rle_region, encode_region_rle, rle_column_runs
from ..tiling.grid import tile_windows
from .coco import load_coco_json
from .images import ImageReading, decode_image

__all__ = ["slice_dataset"]


#: Pixels added around a polygon's vertices' extent before it is rasterised in its own box
#: (pycocotools sets the pixels whose centres lie inside; 1 would do).
_POLYGON_MARGIN = 2


def _annotation_region(seg: Any, height: int, width: int) -> Tuple[int, int, np.ndarray]:
    """``(y0, x0, mask (h, w) bool)``: the mask of a validated COCO segmentation of a
    ``height x width`` image over a box at ``(x0, y0)`` that holds all of it, made without the
    image-sized mask: polygons rasterised by pycocotools in the box's own coordinates (vertices
    shifted by whole pixels), an RLE decoded from its runs over its extent."""
    if isinstance(seg, list):
        xy = np.concatenate([np.asarray(polygon, dtype=np.float64).reshape(-1, 2) for polygon in seg])
        x0, y0 = (int(np.clip(math.floor(v) - _POLYGON_MARGIN, 0, size)) for v, size in zip(xy.min(axis=0), (width, height)))
        x1, y1 = (int(np.clip(math.ceil(v) + _POLYGON_MARGIN, 0, size)) for v, size in zip(xy.max(axis=0), (width, height)))
        if x1 <= x0 or y1 <= y0:
            return 0, 0, np.zeros((0, 0), dtype=bool)
        shifted = [(np.asarray(polygon, dtype=np.float64).reshape(-1, 2) - (x0, y0)).ravel().tolist() for polygon in seg]
        return y0, x0, mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(shifted, y1 - y0, x1 - x0))).astype(bool)
    columns, row_starts, row_ends = rle_column_runs(seg)
    if columns.size == 0:
        return 0, 0, np.zeros((0, 0), dtype=bool)
    y0, y1, x0, x1 = int(row_starts.min()), int(row_ends.max()), int(columns.min()), int(columns.max()) + 1
    return y0, x0, decode_rle_region(seg, y0, x0, y1, x1)


def _extent(part: np.ndarray) -> Tuple[int, np.ndarray, Tuple[int, int]]:
    """``(area, crop, (x0, y0) in part)``: ``part`` (bool) cropped to its pixels."""
    rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
    if rows.size == 0:
        return 0, part[:0, :0], (0, 0)
    crop = part[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return int(np.count_nonzero(crop)), crop, (int(cols[0]), int(rows[0]))


def _tile_annotations(coco, info: Dict[str, Any], windows, min_area_fraction: float) -> List[List[Dict[str, Any]]]:
    """The cut annotations of each window of one image (without ids). Each annotation is made a
    mask over its own box (:func:`_annotation_region`) and cut by the windows that meet the box."""
    h, w = info["height"], info["width"]
    per_window: List[List[Dict[str, Any]]] = [[] for _ in windows]
    bounds = np.asarray(windows, dtype=np.int64).reshape(-1, 4)  # (W, 4) y0, x0, y1, x1
    for ann in coco.imgToAnns.get(info["id"], []):
        ry0, rx0, region = _annotation_region(ann["segmentation"], h, w)
        whole = int(np.count_nonzero(region))
        if whole == 0:
            continue
        ry1, rx1 = ry0 + region.shape[0], rx0 + region.shape[1]
        meets = (bounds[:, 0] < ry1) & (bounds[:, 2] > ry0) & (bounds[:, 1] < rx1) & (bounds[:, 3] > rx0)
        for k in np.flatnonzero(meets):
            wy0, wx0, wy1, wx1 = windows[k]
            top, left = max(wy0, ry0), max(wx0, rx0)
            area, crop, (cx, cy) = _extent(region[top - ry0:min(wy1, ry1) - ry0, left - rx0:min(wx1, rx1) - rx0])
            if area == 0 or area < min_area_fraction * whole:
                continue
            cx, cy = cx + left - wx0, cy + top - wy0  # in the tile
            per_window[k].append({
                "category_id": ann["category_id"], "iscrowd": int(ann.get("iscrowd", 0)), "area": float(area),
                "bbox": [float(cx), float(cy), float(crop.shape[1]), float(crop.shape[0])],
                "segmentation": encode_region_rle(crop, cy, cx, wy1 - wy0, wx1 - wx0),
                "source_annotation_id": ann["id"]})
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
