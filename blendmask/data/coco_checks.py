"""Validation of a parsed COCO instance-segmentation file, before pycocotools sees any of it.

pycocotools trusts its input: a NaN or a coordinate of 1e9 in a polygon overflows an ``int``
inside its C rasteriser (the process then eats memory until it is killed, or segfaults), and a
malformed compressed RLE string is read past its end. :func:`check_coco` therefore checks every
record, number, polygon, box and RLE first and raises a one-line ``ValueError``
``"<file>: <record>: <what is wrong>"`` naming the annotation id and its image.

Rules (documented limits):

- The top level is an object with the lists ``images``, ``annotations`` and ``categories`` of
  objects. Numbers are JSON numbers: booleans and strings are not numbers.
- **Ids** are integers in ``[0, 2**63)``, unique per list. **Annotation ids are >= 1**: COCOeval
  stores matched ground-truth ids in an array where 0 means "unmatched", so an annotation with id 0
  would silently count its true positives as false positives.
- **Images** have a non-empty string ``file_name`` and integer ``width`` and ``height`` in
  ``[1, MAX_IMAGE_SIDE]`` with ``width * height <= MAX_IMAGE_PIXELS``.
- **Categories** have a string ``name``; there is at least one.
- **Annotations** point to a known image and category, and have a ``segmentation`` and a ``bbox``:

  - every number is finite and within ``COORDINATE_LIMIT * max(width, height)`` of the origin
    (pycocotools' rasteriser scales coordinates by 5 into a C ``int``; this bound keeps it far from
    overflow while allowing polygons that stick out of the image, which it clips);
  - ``bbox`` is 4 numbers ``[x, y, w, h]`` with ``w, h >= 0``;
  - a polygon segmentation is a non-empty list of flat lists of an even number >= 6 of numbers;
  - an RLE is ``{"size": [height, width], "counts": ...}`` with the image's size; uncompressed
    ``counts`` are non-negative integers, compressed ``counts`` a string in COCO's 6-bit
    encoding; either way the runs must add up to ``height * width`` exactly;
  - ``area``, if present, is a finite number >= 0; ``iscrowd``, if present, is 0 or 1.

:func:`fill_coco_defaults` then fills what COCOeval needs and many files omit, as COCO's own
ground truth has it: a missing ``area`` is the pixel area of the segmentation mask, a missing
``iscrowd`` is 0.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "check_coco",
    "fill_coco_defaults",
    "segmentation_to_rle",
    "segmentation_area",
    "rle_string_counts",
    "MAX_IMAGE_SIDE",
    "MAX_IMAGE_PIXELS",
    "COORDINATE_LIMIT",
]

MAX_IMAGE_SIDE = 1 << 16
MAX_IMAGE_PIXELS = 1 << 28
COORDINATE_LIMIT = 4
_MAX_ID = 1 << 63
_MAX_RLE_CHARS_PER_COUNT = 6  # 30 bits: pycocotools' decoder shifts a C int by 5 per character


class _Invalid(ValueError):
    """A check failed; the message names the problem (the caller adds file and record)."""


_NUMBER_TYPES = {int, float}  # JSON numbers; bool is not one


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float  # JSON numbers; bool is not one


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # very deep nesting
        return f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def check_coco(data: Any, source: str) -> None:
    """Validate a parsed COCO dict (rules in the module doc); raise ``ValueError`` naming ``source``
    and the record on the first problem. ``data`` is not modified."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{source}: missing or non-list top-level key {key!r}")
        for index, rec in enumerate(data[key]):
            if not isinstance(rec, dict):
                raise ValueError(f"{source}: {key}[{index}] must be an object, got {_short(rec)}")
            if "id" not in rec:
                raise ValueError(f"{source}: {key[:-1]} record {_short(rec, 120)} lacks ['id']")
    images = _check_images(data["images"], source)
    categories = _check_categories(data["categories"], source)
    _check_annotations(data["annotations"], images, categories, source)


def _check_id(rec: Dict[str, Any], key: str, what: str, source: str, minimum: int = 0) -> int:
    value = rec.get(key)
    if type(value) is not int or not minimum <= value < _MAX_ID:
        raise ValueError(f"{source}: {what} {_short(rec, 120)}: {key!r} must be an integer in "
                         f"[{minimum}, 2**63), got {_short(value)}")
    return value


def _check_images(records: Sequence[Dict[str, Any]], source: str) -> Dict[int, Dict[str, Any]]:
    images: Dict[int, Dict[str, Any]] = {}
    for rec in records:
        iid = _check_id(rec, "id", "image record", source)
        if iid in images:
            raise ValueError(f"{source}: duplicate image id {iid}")
        name = rec.get("file_name")
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError(f"{source}: image id {iid}: 'file_name' must be a non-empty string, got {_short(name)}")
        for key in ("width", "height"):
            value = rec.get(key)
            if type(value) is not int or not 1 <= value <= MAX_IMAGE_SIDE:
                raise ValueError(f"{source}: image id {iid} ({name!r}): {key!r} must be an integer in "
                                 f"[1, {MAX_IMAGE_SIDE}], got {_short(value)}")
        if rec["width"] * rec["height"] > MAX_IMAGE_PIXELS:
            raise ValueError(f"{source}: image id {iid} ({name!r}): {rec['width']}x{rec['height']} is more "
                             f"than {MAX_IMAGE_PIXELS} pixels")
        images[iid] = rec
    return images


def _check_categories(records: Sequence[Dict[str, Any]], source: str) -> Dict[int, Dict[str, Any]]:
    categories: Dict[int, Dict[str, Any]] = {}
    for rec in records:
        cid = _check_id(rec, "id", "category record", source)
        if cid in categories:
            raise ValueError(f"{source}: duplicate category id {cid}")
        if not isinstance(rec.get("name"), str):
            raise ValueError(f"{source}: category id {cid}: 'name' must be a string, got {_short(rec.get('name'))}")
        categories[cid] = rec
    if not categories:
        raise ValueError(f"{source}: 'categories' is empty")
    return categories


def _check_annotations(records: Sequence[Dict[str, Any]], images: Dict[int, Dict[str, Any]],
                       categories: Dict[int, Dict[str, Any]], source: str) -> None:
    seen = set()
    for rec in records:
        aid = _check_id(rec, "id", "annotation record", source, minimum=1)
        if aid in seen:
            raise ValueError(f"{source}: duplicate annotation id {aid}")
        seen.add(aid)
        iid, cid = rec.get("image_id"), rec.get("category_id")
        if type(iid) is not int or iid not in images:
            raise ValueError(f"{source}: annotation id {aid}: image_id {_short(iid)} is not in 'images'")
        if type(cid) is not int or cid not in categories:
            raise ValueError(f"{source}: annotation id {aid}: category_id {_short(cid)} is not in 'categories' "
                             f"(known ids: {_short(sorted(categories))})")
        info = images[iid]
        try:
            _check_annotation_fields(rec, info["height"], info["width"])
        except _Invalid as e:
            raise ValueError(f"{source}: annotation id {aid} (image id {iid}, {info['file_name']!r}): {e}") from None


def _check_annotation_fields(rec: Dict[str, Any], h: int, w: int) -> None:
    limit = COORDINATE_LIMIT * max(h, w)
    if "segmentation" not in rec:
        raise _Invalid("no 'segmentation'")
    _check_segmentation(rec["segmentation"], h, w)
    bbox = rec.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise _Invalid(f"'bbox' must be 4 numbers [x, y, w, h], got {_short(bbox)}")
    _check_coordinates(bbox, limit, "bbox")
    if bbox[2] < 0 or bbox[3] < 0:
        raise _Invalid(f"bbox {bbox} must have non-negative width and height")
    if "area" in rec:
        area = rec["area"]
        if not _is_number(area) or not math.isfinite(area) or area < 0:
            raise _Invalid(f"'area' must be a finite number >= 0, got {_short(area)}")
    if "iscrowd" in rec and not (type(rec["iscrowd"]) is int and rec["iscrowd"] in (0, 1)):
        raise _Invalid(f"'iscrowd' must be 0 or 1, got {_short(rec['iscrowd'])}")


def _check_coordinates(values: Sequence[Any], limit: float, what: str) -> None:
    """``values`` (all JSON numbers) must be finite and within ``[-limit, limit]``."""
    try:
        finite = all(map(math.isfinite, values))
    except OverflowError:  # an int too large for a float
        raise _Invalid(f"{what} has a number too large for a float") from None
    if not finite:
        raise _Invalid(f"{what} has a NaN or infinite number")
    biggest = max(values, key=abs) if values else 0
    if abs(biggest) > limit:
        raise _Invalid(f"{what} has a coordinate {float(biggest):g} outside [-{limit}, {limit}] "
                       f"({COORDINATE_LIMIT} x the image's longer side)")


def _check_segmentation(seg: Any, h: int, w: int) -> None:
    """Validate one COCO ``segmentation`` of an ``h x w`` image; raise ``_Invalid``."""
    if isinstance(seg, list):
        if not seg:
            raise _Invalid("empty polygon list in 'segmentation'")
        for poly in seg:
            if not isinstance(poly, list) or not set(map(type, poly)) <= _NUMBER_TYPES:
                raise _Invalid(f"polygon must be a flat list of numbers, got {_short(poly)}")
            if len(poly) % 2 != 0:
                raise _Invalid(f"polygon has an odd number of coordinates ({len(poly)})")
            if len(poly) < 6:
                raise _Invalid(f"polygon has {len(poly) // 2} points; at least 3 are needed")
            _check_coordinates(poly, COORDINATE_LIMIT * max(h, w), "polygon")
    elif isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size)):
            raise _Invalid(f"RLE needs 'size' = [height, width], got {_short(size)}")
        if size != [h, w]:
            raise _Invalid(f"RLE size {size} differs from the image size [{h}, {w}]")
        if isinstance(counts, list):
            if not all(type(c) is int and c >= 0 for c in counts):
                raise _Invalid("uncompressed RLE counts must be non-negative integers")
            runs = counts
        elif isinstance(counts, str):
            runs = rle_string_counts(counts, h * w)
        else:
            raise _Invalid(f"RLE 'counts' must be a string or a list, got {type(counts).__name__}")
        if sum(runs) != h * w:
            raise _Invalid(f"RLE runs add up to {sum(runs)} pixels, not height*width = {h * w}")
    else:
        raise _Invalid(f"'segmentation' must be a polygon list or an RLE dict, got {_short(seg)}")


def rle_string_counts(counts: str, max_count: int) -> List[int]:
    """Decode a compressed COCO RLE ``counts`` string into its run lengths (vectorised).

    The format (pycocotools' ``rleToString``): each run is a signed number written 5 bits per
    character (character code - 48, bit 5 = "more characters follow", bit 4 of the last one =
    sign), and from the third run on the number is the difference to the run two places back.
    Raises ``ValueError`` for a character outside ``'0'..'o'``, a number cut off by the end of the
    string, more than 6 characters for one run, or a run outside ``[0, max_count]``.
    """
    if not counts:
        return []
    if not counts.isascii():
        bad = next(i for i, ch in enumerate(counts) if not ch.isascii())
        raise _Invalid(f"compressed RLE has character {counts[bad]!r} at {bad}, outside '0'..'o' (corrupt)")
    codes = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    bad = np.flatnonzero((codes < 0) | (codes >= 64))
    if bad.size:
        raise _Invalid(f"compressed RLE has character {counts[bad[0]]!r} at {bad[0]}, outside '0'..'o' (corrupt)")
    last = (codes & 0x20) == 0  # the last character of each run
    if not last[-1]:
        raise _Invalid("compressed RLE string ends inside a run (corrupt or truncated)")
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > _MAX_RLE_CHARS_PER_COUNT:
        where = int(starts[np.argmax(lengths > _MAX_RLE_CHARS_PER_COUNT)])
        raise _Invalid(f"compressed RLE run at character {where} is longer than "
                       f"{_MAX_RLE_CHARS_PER_COUNT} characters (corrupt)")
    digit = np.arange(codes.size) - np.repeat(starts, lengths)  # position of each character in its run
    values = np.add.reduceat((codes & 0x1F) << (5 * digit), starts)
    values -= np.where(codes[ends] & 0x10, np.int64(1) << (5 * lengths), 0)  # sign-extend
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # from the third run on: a difference to the run two back
    runs[2::2] = np.cumsum(values[2::2])
    bad = np.flatnonzero((runs < 0) | (runs > max_count))
    if bad.size:
        raise _Invalid(f"compressed RLE run {bad[0]} is {runs[bad[0]]}, outside [0, {max_count}] (corrupt)")
    return runs.tolist()


def segmentation_to_rle(seg: Any, h: int, w: int) -> Dict[str, Any]:
    """A validated COCO segmentation (polygons, uncompressed or compressed RLE) as compressed RLE."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, h, w)
    return seg


def segmentation_area(seg: Any, h: int, w: int) -> float:
    """The pixel area of a validated COCO segmentation of an ``h x w`` image (COCO's ``area``)."""
    return float(mask_utils.area(segmentation_to_rle(seg, h, w)))


def fill_coco_defaults(data: Dict[str, Any]) -> Optional[str]:
    """Fill a missing ``area`` (mask pixel area) and ``iscrowd`` (0) in every annotation of a
    :func:`check_coco`-validated dict, in place. Returns a summary of what was filled, or None."""
    sizes = {rec["id"]: (rec["height"], rec["width"]) for rec in data["images"]}
    filled_area = filled_crowd = 0
    for ann in data["annotations"]:
        if "iscrowd" not in ann:
            ann["iscrowd"] = 0
            filled_crowd += 1
        if "area" not in ann:
            h, w = sizes[ann["image_id"]]
            ann["area"] = segmentation_area(ann["segmentation"], h, w)
            filled_area += 1
    if not (filled_area or filled_crowd):
        return None
    return f"filled 'area' of {filled_area} and 'iscrowd' of {filled_crowd} annotations"
