"""Parsed COCO instance JSON -> validated :class:`~blendmask.data.coco_records.CocoRecords`, at numpy speed.

:func:`build_records` extracts every field into flat arrays in one pass over the records and checks
the rules of :mod:`blendmask.data.coco_checks` on those arrays (types with C-level ``map``/``set``,
numbers with numpy). When anything is wrong it runs :func:`~blendmask.data.coco_checks.check_coco`
on the same data, so a bad file fails with exactly that function's one-line error for the first bad
record. The two must agree: a file the fast checks refuse and ``check_coco`` accepts is a bug
(``RuntimeError``).
"""
from __future__ import annotations

import json
import logging
from itertools import chain
from typing import Any, Dict, List, Tuple

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from . import coco_checks
from .coco_checks import COORDINATE_LIMIT, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, check_coco, segmentation_area
from .coco_records import CocoRecords

__all__ = ["build_records"]

logger = logging.getLogger(__name__)

_MAX_ID = 1 << 63
_NUMBERS = {int, float}
_STAGES = ("images", "annotations", "polygons", "masks", "records")


class _Refused(Exception):
    """A fast check failed; :func:`check_coco` names the record."""


def _require(ok: Any) -> None:
    if not ok:
        raise _Refused


def _int64(values: List[Any]) -> np.ndarray:
    """``values`` (all of type int) as int64; out of range -> _Refused."""
    try:
        return np.fromiter(values, dtype=np.int64, count=len(values))
    except OverflowError:
        raise _Refused from None


def _ids(records: List[Dict[str, Any]], key: str, minimum: int) -> np.ndarray:
    values = [rec.get(key) for rec in records]
    _require(set(map(type, values)) <= {int})
    ids = _int64(values)
    _require(not ids.size or ids.min() >= minimum)
    return ids


def _unique(ids: np.ndarray) -> None:
    ordered = np.sort(ids)
    _require((ordered[1:] != ordered[:-1]).all())


def _numbers(values: List[Any]) -> np.ndarray:
    """JSON numbers (no bool, no string) as finite float64; anything else -> _Refused."""
    _require(set(map(type, values)) <= _NUMBERS)
    try:
        out = np.array(values, dtype=np.float64)
    except OverflowError:
        raise _Refused from None
    _require(np.isfinite(out).all())
    return out


def build_records(data: Any, source: str, *, progress: bool = False) -> CocoRecords:
    """The validated records of a parsed COCO instance file (rules in :mod:`blendmask.data.coco_checks`).

    ``data`` is not modified; a missing ``area`` becomes the mask's pixel area, a missing
    ``iscrowd`` 0. Raises ``check_coco``'s one-line ``ValueError`` naming ``source`` and the first
    bad record. ``progress`` shows a tqdm bar of the stages.
    """
    bar = tqdm(total=len(_STAGES), desc=f"checking {source}", unit="stage", disable=not progress, leave=False)
    try:
        return _build(data, bar)
    except _Refused:
        check_coco(data, source)  # raises the one-line error of the first bad record
        raise RuntimeError(f"{source}: the fast COCO checks refused a file that check_coco accepts") from None
    finally:
        bar.close()


def _build(data: Any, bar: tqdm) -> CocoRecords:
    _require(type(data) is dict)
    for key in ("images", "annotations", "categories"):
        _require(type(data.get(key)) is list)
        _require(set(map(type, data[key])) <= {dict})
    images, anns, categories = data["images"], data["annotations"], data["categories"]

    bar.set_postfix_str("images")
    image_ids = _ids(images, "id", 0)
    _unique(image_ids)
    names = [rec.get("file_name") for rec in images]
    _require(set(map(type, names)) <= {str} and all(names) and not any("\x00" in n for n in names))
    widths, heights = [rec.get("width") for rec in images], [rec.get("height") for rec in images]
    _require(set(map(type, widths)) <= {int} and set(map(type, heights)) <= {int})
    sizes = np.stack([_int64(heights), _int64(widths)], axis=1).reshape(-1, 2)
    _require(((sizes >= 1) & (sizes <= MAX_IMAGE_SIDE)).all())
    _require((sizes[:, 0] * sizes[:, 1] <= MAX_IMAGE_PIXELS).all())
    category_ids = _ids(categories, "id", 0)
    _unique(category_ids)
    _require(category_ids.size and set(type(rec.get("name")) for rec in categories) <= {str})
    bar.update()

    bar.set_postfix_str("annotations")
    n = len(anns)
    ann_ids = _ids(anns, "id", 1)
    _unique(ann_ids)
    ann_image_ids, ann_categories = _ids(anns, "image_id", 0), _ids(anns, "category_id", 0)
    order = np.argsort(image_ids, kind="stable")
    _require(image_ids.size or not n)
    positions = np.minimum(np.searchsorted(image_ids[order], ann_image_ids), max(image_ids.size - 1, 0))
    rows = order[positions] if image_ids.size else np.zeros(0, np.int64)
    _require((image_ids[rows] == ann_image_ids).all())
    _require(np.isin(ann_categories, category_ids).all())
    _require(all("segmentation" in a for a in anns))
    segs = [a["segmentation"] for a in anns]
    seg_types = np.fromiter((type(s) is dict for s in segs), dtype=bool, count=n)
    _require(set(map(type, segs)) <= {list, dict})
    boxes_list = [a.get("bbox") for a in anns]
    _require(set(map(type, boxes_list)) <= {list} and set(map(len, boxes_list)) <= {4})
    boxes = _numbers(list(chain.from_iterable(boxes_list))).reshape(n, 4)
    limits = (COORDINATE_LIMIT * sizes.max(axis=1))[rows].astype(np.float64) if n else np.zeros(0)
    _require((np.abs(boxes).max(axis=1, initial=0) <= limits).all() if n else True)
    _require((boxes[:, 2:] >= 0).all())
    areas, crowd, missing_area, missing_crowd = _areas_and_crowd(anns)
    bar.update()

    bar.set_postfix_str("polygons")
    polygons = [s if type(s) is list else () for s in segs]
    polygons_per_ann = np.fromiter(map(len, polygons), dtype=np.int64, count=n)
    _require((polygons_per_ann[~seg_types] > 0).all())
    flat_polygons = list(chain.from_iterable(polygons))
    _require(set(map(type, flat_polygons)) <= {list})
    polygon_lengths = np.fromiter(map(len, flat_polygons), dtype=np.int64, count=len(flat_polygons))
    _require(((polygon_lengths >= 6) & (polygon_lengths % 2 == 0)).all())
    coordinates = _numbers(list(chain.from_iterable(flat_polygons)))
    polygon_ends = np.cumsum(polygon_lengths)
    if coordinates.size:
        starts = polygon_ends - polygon_lengths
        polygon_max = np.maximum.reduceat(np.abs(coordinates), starts)
        polygon_rows = np.repeat(np.arange(n), polygons_per_ann)
        _require((polygon_max <= limits[polygon_rows]).all())
    bar.update()

    bar.set_postfix_str("masks")
    rles = _rle_counts(segs, seg_types, sizes, rows)
    for k in missing_area.tolist():
        h, w = sizes[rows[k]].tolist()
        areas[k] = segmentation_area(segs[k], h, w)
    if missing_area.size or missing_crowd:
        logger.info("filled 'area' of %d and 'iscrowd' of %d annotations", missing_area.size, missing_crowd)
    bar.update()

    bar.set_postfix_str("records")
    file_names, file_name_ends = _pack([name.encode("utf-8", "surrogatepass") for name in names])
    rle_counts, rle_ends = _pack(rles)
    records = CocoRecords({
        "image_ids": image_ids,
        "image_sizes": sizes,
        "file_names": file_names,
        "file_name_ends": file_name_ends,
        "ann_ids": ann_ids,
        "ann_images": rows.astype(np.int64),
        "ann_categories": ann_categories,
        "ann_boxes": boxes,
        "ann_areas": areas,
        "ann_crowd": crowd,
        "ann_is_rle": seg_types.astype(np.uint8),
        "ann_polygon_ends": np.cumsum(polygons_per_ann),
        "polygon_ends": polygon_ends,
        "coordinates": coordinates,
        "rle_counts": rle_counts,
        "rle_ends": rle_ends,
        "categories_json": np.frombuffer(json.dumps(categories, ensure_ascii=True).encode("ascii"),
                                         dtype=np.uint8).copy(),
    })
    bar.update()
    return records


def _areas_and_crowd(anns: List[Dict[str, Any]]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(areas, iscrowd, rows whose area is missing, number of missing iscrowd)``; areas of the
    missing rows are NaN until filled."""
    n = len(anns)
    area_values = [a.get("area") for a in anns]
    present = np.fromiter(("area" in a for a in anns), dtype=bool, count=n)
    given = [v for v, p in zip(area_values, present.tolist()) if p]
    areas = np.full(n, np.nan)
    areas[present] = _numbers(given)
    _require((areas[present] >= 0).all())
    crowd_values = [a["iscrowd"] for a in anns if "iscrowd" in a]
    _require(set(map(type, crowd_values)) <= {int} and set(crowd_values) <= {0, 1})
    crowd = np.fromiter((a.get("iscrowd", 0) for a in anns), dtype=np.uint8, count=n)
    return areas, crowd, np.flatnonzero(~present), n - len(crowd_values)


def _rle_counts(segs: List[Any], is_rle: np.ndarray, sizes: np.ndarray, rows: np.ndarray) -> List[bytes]:
    """Each annotation's compressed RLE counts (b"" for polygons), every RLE checked in full."""
    out = [b""] * len(segs)
    for k in np.flatnonzero(is_rle).tolist():
        seg = segs[k]
        h, w = sizes[rows[k]].tolist()
        try:
            coco_checks._check_segmentation(seg, h, w)
        except coco_checks._Invalid:
            raise _Refused from None
        counts = seg["counts"]
        if type(counts) is list:
            counts = mask_utils.frPyObjects(seg, h, w)["counts"]
        out[k] = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    return out


def _pack(items: List[bytes]) -> Tuple[np.ndarray, np.ndarray]:
    """``(buffer uint8, ends int64)`` of byte strings laid back to back."""
    ends = np.cumsum(np.fromiter(map(len, items), dtype=np.int64, count=len(items)))
    return np.frombuffer(b"".join(items), dtype=np.uint8).copy(), ends
