"""Reading a COCO detection results file (ours or another tool's) against its ground truth.

A results file is a JSON list of records ``{"image_id", "category_id", "score", "bbox"?,
"segmentation"?}`` (COCO's results format). Other fields (``id``, ``area``, a tool's own extras)
are ignored. :func:`read_results` checks every record against the ground truth and returns them
with their geometry normalised:

- ``bbox``: ``[x, y, w, h]``; when a record has only a ``segmentation``, its box is the mask's;
- ``segmentation``: a compressed RLE (uncompressed RLE and polygons are converted with the image's
  size); absent when the record has none. A file whose records have no segmentation at all can
  only be analysed for ``bbox``.

Every error is a one-line ``ValueError`` naming the file and the record (its index in the list).
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..data.coco import read_json_file

__all__ = ["read_results"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _segmentation_rle(seg: Any, height: int, width: int, where: str) -> Dict[str, Any]:
    if isinstance(seg, list):
        if not seg or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(_number(v) for v in p)
                              for p in seg):
            raise ValueError(f"{where}: a polygon segmentation must be lists of an even number >= 6 of finite numbers")
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise ValueError(f"{where}: segmentation must be polygons or an RLE {{'size', 'counts'}}")
    if list(seg["size"]) != [height, width]:
        raise ValueError(f"{where}: RLE size {seg['size']} differs from the image's [{height}, {width}]")
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
            raise ValueError(f"{where}: uncompressed RLE counts must be ints >= 0 adding up to {height * width}")
        return mask_utils.frPyObjects(seg, height, width)
    if not isinstance(counts, (str, bytes)):
        raise ValueError(f"{where}: RLE counts must be a string or a list, got {type(counts).__name__}")
    rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    try:
        area = int(mask_utils.area(rle))
    except Exception as e:  # pycocotools rejects malformed strings with assorted exception types
        raise ValueError(f"{where}: unreadable compressed RLE ({e})") from None
    if area > height * width:
        raise ValueError(f"{where}: compressed RLE does not fit a {height}x{width} image")
    return rle


def read_results(path: str | os.PathLike, coco_gt: COCO) -> List[Dict[str, Any]]:
    """The validated records of the results file ``path`` for the ground truth ``coco_gt``
    (module doc). Records keep their order; each gets ``bbox`` and, when it had one, ``segmentation``."""
    path = os.fspath(path)
    data = read_json_file(path, what="results file")
    if not isinstance(data, list):
        raise ValueError(f"{path}: a COCO results file is a JSON list of detections, got {type(data).__name__}")
    out = []
    for index, record in enumerate(data):
        where = f"{path}: detection {index}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
        missing = [k for k in ("image_id", "category_id", "score") if k not in record]
        if missing:
            raise ValueError(f"{where}: lacks {missing}")
        image = coco_gt.imgs.get(record["image_id"])
        if image is None:
            raise ValueError(f"{where}: image_id {record['image_id']!r} is not in the ground truth")
        if record["category_id"] not in coco_gt.cats:
            raise ValueError(f"{where}: category_id {record['category_id']!r} is not in the ground truth")
        if not _number(record["score"]):
            raise ValueError(f"{where}: score must be a finite number, got {record['score']!r}")
        if "bbox" not in record and "segmentation" not in record:
            raise ValueError(f"{where}: has neither a bbox nor a segmentation")
        clean = {"image_id": record["image_id"], "category_id": record["category_id"], "score": float(record["score"])}
        if "segmentation" in record:
            clean["segmentation"] = _segmentation_rle(record["segmentation"], image["height"], image["width"], where)
        if "bbox" in record:
            box = record["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box) and box[2] >= 0 and box[3] >= 0):
                raise ValueError(f"{where}: bbox must be [x, y, w, h] finite numbers with w, h >= 0, got {box!r}")
            clean["bbox"] = [float(v) for v in box]
        else:
            clean["bbox"] = [float(v) for v in mask_utils.toBbox(clean["segmentation"])]
        out.append(clean)
    return out
